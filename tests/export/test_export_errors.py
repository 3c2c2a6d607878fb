"""export: layers a format cannot express are named with a format that can; a corrupted export
fails its verification loudly and leaves no file behind."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import qaprune.export.onnx_export as onnx_export
import qaprune.export.qdq as qdq
import qaprune.export.qonnx_export as qonnx_export
from qaprune.compress import attach
from qaprune.errors import QapruneError
from qaprune.export.api import export
from qaprune.export.verify import VerificationError, compare
from qaprune.models import build_model
from qaprune.recipe import Recipe


def _mlp(weight_bits: int = 4, act_bits: int = 4):
    torch.manual_seed(0)
    x = torch.rand(200, 16)
    m = build_model("mlp", input_shape=(16,), num_classes=5, hidden=(32, 16))
    attach(m, Recipe(quant={"weight_bits": weight_bits, "act_bits": act_bits}, prune={"sparsity": 0.5}), sample=x)
    m.train()
    m(x)  # batch-norm statistics
    return m.eval(), x


def _nothing_left(tmp_path) -> bool:
    return not any(tmp_path.iterdir())


def test_wide_weights_name_the_layer_and_suggest_qonnx(tmp_path):
    model, x = _mlp(weight_bits=12, act_bits=8)
    with pytest.raises(QapruneError, match=r"qdq: layer 'fc1': 12-bit weights .*--format qonnx"):
        export(model, format="qdq", out=tmp_path / "m.onnx", x=x)
    assert _nothing_left(tmp_path)
    assert export(model, format="qonnx", out=tmp_path / "m.qonnx", x=x).verification.passed


def test_wide_activations_are_refused_by_qdq(tmp_path):
    model, x = _mlp(weight_bits=8, act_bits=12)
    with pytest.raises(QapruneError, match=r"layer 'input_quant': 12-bit activations"):
        export(model, format="qdq", out=tmp_path / "m.onnx", x=x)


def test_unknown_module_names_the_layer(tmp_path):
    model, x = _mlp()
    model.act2 = nn.GELU()  # torch.nn's own module, without a lowering here
    for fmt in ("qdq", "qonnx"):
        with pytest.raises(QapruneError, match=rf"{fmt}: layer 'act2': GELU has no ONNX lowering.*--format onnx"):
            export(model, format=fmt, out=tmp_path / "m.onnx", x=x)
    assert _nothing_left(tmp_path)
    r = export(model, format="onnx", out=tmp_path / "m.onnx", x=x)  # torch.onnx.export takes over
    assert r.how.startswith("torch.onnx.export: dynamo") and r.verification.passed


def _corrupt(proto: onnx.ModelProto, suffix: str) -> onnx.ModelProto:
    """Flip the sign of the first initializer whose name ends with ``suffix``."""
    init = next(i for i in proto.graph.initializer if i.name.endswith(suffix))
    init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    return proto


@pytest.mark.parametrize(
    "fmt,module,fn,suffix",
    [
        ("onnx", onnx_export, "float_onnx", "fc2.weight"),
        ("qdq", qdq, "qdq_onnx", "fc2.weight_codes"),
        ("qonnx", qonnx_export, "qonnx_model", "fc2.weight"),
    ],
)
def test_corrupted_export_fails_and_leaves_no_file(tmp_path, monkeypatch, fmt, module, fn, suffix):
    model, x = _mlp()
    good = export(model, format=fmt, out=tmp_path / "old", x=x)  # a previous, good export
    before = good.path.read_bytes()
    real = getattr(module, fn)
    monkeypatch.setattr(module, fn, lambda *a, **k: (lambda p, n: (_corrupt(p, suffix), n))(*real(*a, **k)))
    failed = rf"{fmt}: the exported file does not compute .*FAILED.*nothing was written"
    with pytest.raises(VerificationError, match=failed):
        export(model, format=fmt, out=tmp_path / "new", x=x)
    with pytest.raises(VerificationError):
        export(model, format=fmt, out=tmp_path / "old", x=x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old", "old.verify.json"]
    assert good.path.read_bytes() == before  # the good file is kept


def test_corrupted_qap_fails(tmp_path, monkeypatch):
    import qaprune.storage as storage

    model, x = _mlp()
    real = storage.save_qap

    def bad_save(m, path, **kw):
        state = {k: v.clone() for k, v in m.state_dict().items()}
        state["fc1.parametrizations.weight.original"].mul_(1.5)
        twin = _mlp()[0]
        twin.load_state_dict(state)
        return real(twin, path, **kw)

    monkeypatch.setattr(storage, "save_qap", bad_save)
    with pytest.raises(VerificationError, match="qap"):
        export(model, format="qap", out=tmp_path / "m.qap", x=x)
    assert _nothing_left(tmp_path)


def test_compare_criteria():
    ref = np.random.default_rng(0).standard_normal((400, 5)).astype(np.float32)
    out = ref.copy()
    out[0, 0] += 0.3  # one sample: a flipped activation
    assert compare(ref, out, fmt="onnx", runtime="t", criterion="float", quantized_acts=True).passed
    assert not compare(ref, out, fmt="onnx", runtime="t", criterion="float").passed
    shifted = ref + 1e-3  # every sample off
    v = compare(ref, shifted, fmt="onnx", runtime="t", criterion="float", quantized_acts=True)
    assert not v.passed and v.within_tolerance == 0.0 and v.top1_agreement == 1.0
    assert compare(ref, shifted, fmt="qdq", runtime="t", criterion="int8").passed
    nan = ref.copy()
    nan[3, 2] = np.nan
    assert not compare(ref, nan, fmt="qdq", runtime="t", criterion="int8").passed
    with pytest.raises(VerificationError, match="shape"):
        compare(ref, ref[:, :4], fmt="onnx", runtime="t", criterion="float")


def test_weights_off_their_grid_are_refused(tmp_path):
    from qaprune.export.lower import lower

    model, x = _mlp()
    low = lower(model, x)
    with torch.no_grad():  # a change after baking that the quantizer did not see
        low.model.fc1.weight[0, 0] += 1e-3
    with pytest.raises(QapruneError, match="fc1.*not on the grid"):
        qdq.qdq_onnx(low)


def test_needs_inputs_and_output_for_a_model(tmp_path):
    model, x = _mlp()
    with pytest.raises(QapruneError, match="x="):
        export(model, format="onnx", out=tmp_path / "m.onnx")
    with pytest.raises(QapruneError, match="out="):
        export(model, format="onnx", x=x)
    with pytest.raises(QapruneError, match="known: onnx, qap, qdq, qonnx"):
        export(model, format="tflite", out=tmp_path / "m", x=x)


def test_teacher_forced_check_tells_ties_from_wrong_codes():
    from qaprune.export.verify import forced_check
    from qaprune.quant.activations import QuantReLU

    model = nn.Sequential(nn.Identity(), QuantReLU(4, max_value=1.5), nn.Linear(3, 2)).eval()
    step = 0.1
    x = torch.tensor([[0.25, 0.73, 1.01], [0.4, 0.05, 0.9]])  # 0.25 = 2.5 steps: a tie

    def run(flip_at):
        def go(xb):
            acts = model[1](xb).clone()
            acts[flip_at] += step  # the file rounded up there
            return model[2](acts).numpy(), {"act": acts.numpy()}

        return go

    ok = forced_check(model, x, run((0, 0)), {"1": "act"}, {})
    assert ok["ties"] == 1 and ok["unexplained"] == 0 and ok["within"] == 1.0 and ok["codes"] == 6
    bad = forced_check(model, x, run((1, 2)), {"1": "act"}, {})  # 0.9 = 9 steps: no tie
    assert bad["unexplained"] == 1
    wrong_tail = forced_check(
        model, x, lambda xb: (model(xb).numpy() + 1e-3, {"act": model[1](xb).numpy()}), {"1": "act"}, {}
    )
    assert wrong_tail["within"] == 0.0 and wrong_tail["unexplained"] == 0
