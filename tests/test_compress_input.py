"""attach's input quantizer on models without an ``input_quant`` slot: a module the model's own
class calls (``quantize_input``), never a hook, so that torch.fx, torch.export and ONNX see it;
deepcopy, pickling, state_dict, bake and a second attach keep working."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from torch import fx, nn

from qaprune.compress import InputQuantized, attach, quantize_input
from qaprune.errors import RecipeError
from qaprune.param import bake
from qaprune.quant.activations import QuantInput
from qaprune.recipe import Recipe

X_RAW = torch.tensor([[0.4, 1.4, 2.6, 9.0]])
X_QUANT = torch.tensor([[0.0, 1.0, 3.0, 3.0]])  # 2 bits unsigned, max 3: round(clamp(x, 0, 3))
CALIB = torch.tensor([[0.0, 1.0, 3.0, 2.0]])


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.act, self.out = nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)

    def forward(self, x, scale: float = 1.0):
        return self.out(self.act(self.fc(x))) * scale


def _attached(bits: int = 2, **quant) -> Net:
    torch.manual_seed(0)
    return attach(Net(), Recipe(quant={"input_bits": bits, **quant}), sample=CALIB).eval()


def _plain(model: Net, x: torch.Tensor) -> torch.Tensor:
    return model.out(model.act(model.fc(x)))


def test_the_class_calls_the_quantizer_no_hook():
    model = _attached()
    assert isinstance(model, Net) and isinstance(model, InputQuantized) and type(model).__name__ == "Net"
    assert not model._forward_pre_hooks and isinstance(model.input_quant, QuantInput)
    assert sorted(k for k in model.state_dict() if k.startswith("input_quant")) == [
        "input_quant.scale",
        "input_quant.zero_point",
    ]
    assert torch.equal(model(X_RAW), _plain(model, X_QUANT))
    assert torch.equal(model(x=X_RAW), _plain(model, X_QUANT))  # the first input by keyword
    assert torch.equal(model(X_RAW, 2.0), 2 * _plain(model, X_QUANT))  # other arguments pass through


def test_tracers_see_the_quantizer():
    model = _attached()

    class Leaves(fx.Tracer):
        def is_leaf_module(self, m, name):
            return isinstance(m, QuantInput) or super().is_leaf_module(m, name)

    graph = Leaves().trace(model)
    assert [n.name for n in graph.nodes if n.op == "placeholder"] == ["x", "scale"]  # the user's signature
    assert next(n.target for n in graph.nodes if n.op == "call_module") == "input_quant"
    model(X_RAW)  # QuantInput caches its step as a float on the first call; torch.export cannot read it
    exported = torch.export.export(model, (X_RAW,))
    graph = str(exported.graph)  # the clamp of the (learned, by default) input step, in the exported program
    assert "clamp" in graph or "hardtanh" in graph


def test_deepcopy_pickle_and_bake_keep_the_quantizer():
    model = _attached()
    twin = copy.deepcopy(model)
    assert type(twin) is type(model) and twin.input_quant is not model.input_quant
    assert torch.equal(twin(X_RAW), model(X_RAW))
    baked = bake(copy.deepcopy(model))
    buf = io.BytesIO()
    torch.save(baked, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert isinstance(loaded, InputQuantized) and torch.equal(loaded(X_RAW), model(X_RAW))


def test_saved_state_loads_into_a_fresh_attached_model():
    model = _attached()
    with torch.no_grad():
        model.input_quant.scale.fill_(0.5)  # a different (learned or calibrated) range
    fresh = _attached()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(X_RAW), model(X_RAW))


def test_torch_onnx_export_keeps_the_quantizer(tmp_path):
    import onnxruntime as ort

    from qaprune.export.fold import fold_batchnorm
    from qaprune.metrics.latency import export_onnx

    torch.manual_seed(0)
    x = torch.rand(64, 4) * 3
    model = attach(Net(), Recipe(quant={"input_bits": 4, "weight_bits": 6}), sample=x).eval()
    plain, _ = fold_batchnorm(bake(copy.deepcopy(model)))  # a torch.fx GraphModule: hooks were lost here
    how = export_onnx(plain, (4,), str(tmp_path / "m.onnx"))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert how == "dynamo" and np.allclose(out, model(x).detach().numpy(), atol=1e-5)


def test_a_model_that_is_itself_a_weight_layer():
    torch.manual_seed(0)
    lin = nn.Linear(4, 2)
    attach(lin, Recipe(quant={"input_bits": 2, "weight_bits": 4}, prune={"sparsity": 0.5}), sample=CALIB)
    y = lin(X_RAW)
    assert torch.equal(y, nn.functional.linear(X_QUANT, lin.weight, lin.bias))
    baked = bake(copy.deepcopy(lin))  # parametrize's class comes off, the quantizing one stays
    assert isinstance(baked, InputQuantized) and not hasattr(baked, "parametrizations")
    assert torch.allclose(baked(X_RAW), y)


def test_a_second_attach_replaces_the_quantizer():
    model = _attached(bits=2)
    attach(model, Recipe(quant={"input_bits": 8}), sample=CALIB)
    assert model.input_quant.act_bits == 8 and quantize_input(model) is model
    assert torch.allclose(model(X_RAW), _plain(model, model.input_quant(X_RAW)))  # applied once


def test_a_foreign_input_quant_attribute_is_refused():
    model = Net()
    model.input_quant = nn.Linear(4, 4)
    with pytest.raises(RecipeError, match=r"Net.input_quant is a Linear"):
        attach(model, Recipe(quant={"input_bits": 4}), sample=CALIB)
