"""Quantization: weight fake-quant parametrizations and activation quantizer modules."""
from qaprune.quant.activations import QuantInput, QuantReLU
from qaprune.quant.fake_quant import SUPPORTED_BITS, FakeQuant, check_bits, weight_bits

__all__ = ["FakeQuant", "QuantInput", "QuantReLU", "SUPPORTED_BITS", "check_bits", "weight_bits"]
