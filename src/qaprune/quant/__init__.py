"""Quantization: weight fake-quant parametrizations and activation quantizer modules."""

from qaprune.quant.activations import QuantInput, QuantReLU
from qaprune.quant.bits import SUPPORTED_BITS, check_bits
from qaprune.quant.fake_quant import FakeQuant, LearnedFakeQuant, weight_bits, weight_quantizer
from qaprune.quant.mixed import bit_widths

__all__ = [
    "FakeQuant",
    "LearnedFakeQuant",
    "QuantInput",
    "QuantReLU",
    "SUPPORTED_BITS",
    "bit_widths",
    "check_bits",
    "weight_bits",
    "weight_quantizer",
]
