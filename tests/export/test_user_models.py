"""Your model, your data: every export format round-trips models written as a user writes them
(plain ``nn.Module`` subclasses with a forward: residual sums, concatenations, unsqueeze,
pooling, flatten), with the input quantizer on and channels pruned; a node no lowering covers is
named with its module path and only the formats that really take the model; ``qaprune shrink``
verifies the file it writes."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qaprune.compress import attach
from qaprune.errors import QapruneError
from qaprune.export.api import export
from qaprune.export.formats import EXPORTERS
from qaprune.export.verify import taps_of, torch_outputs
from qaprune.prune import prune_to
from qaprune.quant.activations import QuantInput
from qaprune.recipe import Recipe

RECIPE = Recipe(quant={"weight_bits": 6, "act_bits": 6, "input_bits": 8}, prune={"sparsity": 0.5})


class ResidualMLP(nn.Module):
    """A residual block on a hidden layer, and a side branch on the raw features concatenated
    before the classifier."""

    def __init__(self, features: int = 12, hidden: int = 24, classes: int = 3) -> None:
        super().__init__()
        self.inp, self.act0 = nn.Linear(features, hidden), nn.ReLU()
        self.fc1, self.bn1, self.act1 = nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU()
        self.side, self.act_side, self.drop = nn.Linear(features, 8), nn.ReLU(), nn.Dropout(0.1)
        self.head = nn.Linear(hidden + 8, classes)

    def forward(self, x):
        h = self.act0(self.inp(x))
        h = h + self.act1(self.bn1(self.fc1(h)))
        s = self.drop(self.act_side(self.side(x)))
        return self.head(torch.cat([h, s], dim=1))


class FeatureCNN(nn.Module):
    """A 1-D CNN over a feature vector: (N, F) -> (N, 1, F), Conv1d, pooling, flatten, Linear."""

    def __init__(self, features: int = 12, classes: int = 3) -> None:
        super().__init__()
        self.conv1, self.act1, self.pool = nn.Conv1d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2)
        self.conv2, self.act2 = nn.Conv1d(8, 8, 3, padding=1), nn.ReLU()
        self.gap = nn.AdaptiveAvgPool1d(3)
        self.fc = nn.Linear(8 * 3, classes)

    def forward(self, x):
        x = x.unsqueeze(1)
        x = self.pool(self.act1(self.conv1(x)))
        x = self.gap(self.act2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


class ResidualCNN(nn.Module):
    """A small 2-D CNN with a residual add after a conv + batch norm."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem, self.bn0, self.act0 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.conv, self.bn, self.act = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x):
        h = self.act0(self.bn0(self.stem(x)))
        h = self.act(h + self.bn(self.conv(h)))
        return self.fc(self.pool(h).flatten(1))


def _data(shape: tuple[int, ...], n: int = 1600, classes: int = 3):
    """Inputs in [0, 1) and a linear rule for the labels (learnable, with margins)."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, *shape, generator=g)
    w = torch.randn(x[0].numel(), classes, generator=g)
    return x, ((x.flatten(1) - 0.5) @ w).argmax(1)


def _trained(model: nn.Module, shape: tuple[int, ...], *, steps: int = 60):
    """attach (input quantizer on), train, prune half the channels once, train again; on one
    thread (the same model on any machine). -> (model in eval mode, 1000 held-out inputs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        x, y = _data(shape)
        attach(model, RECIPE, sample=x[:600])
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        model.train()
        for step in range(2 * steps):
            if step == steps:
                prune_to(model, 0.5, structure="channels", example_input=x[:64])
            i = torch.randint(0, 600, (64,))
            loss = F.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), x[600:]


MODELS = {
    "residual_mlp": (ResidualMLP, (12,), {"Concat", "Add", "Gemm"}),
    "feature_cnn": (FeatureCNN, (12,), {"Reshape", "Conv", "MaxPool", "AveragePool", "Flatten"}),
    "residual_cnn": (ResidualCNN, (1, 8, 8), {"Conv", "Add", "AveragePool", "Flatten"}),
}


@pytest.fixture(scope="module", params=list(MODELS))
def user_model(request):
    cls, shape, ops = MODELS[request.param]
    model, x = _trained(cls(), shape)
    return request.param, model, x, ops


@pytest.mark.parametrize("fmt", EXPORTERS.names())
def test_every_format_round_trips_user_models(user_model, fmt, tmp_path):
    name, model, x, ops = user_model
    assert not model._forward_pre_hooks and isinstance(model.input_quant, QuantInput)  # a module, no hook
    before = torch_outputs(model, x)
    assert before.std(0).max() > 0.1  # trained: the outputs depend on the input
    r = export(model, format=fmt, out=tmp_path / f"m.{fmt}", x=x)
    v = r.verification
    assert v.passed and v.samples == len(x) == 1000 and v.top1_agreement >= 0.995
    assert r.path.is_file() and not list(tmp_path.glob(".*.tmp"))
    assert json.loads((tmp_path / f"m.{fmt}.verify.json").read_text())["verification"]["passed"]
    assert np.array_equal(torch_outputs(model, x), before)  # the model is untouched
    if fmt == "qap":
        assert v.max_abs_diff == 0.0
        return
    assert r.how.startswith("qaprune lowering")  # every node lowered, no torch.onnx fallback
    assert sum(r.removed.values()) > 0  # pruned channels physically gone, through cat and unsqueeze
    graph = onnx.load(str(r.path)).graph
    assert ops <= {n.op_type for n in graph.node}
    assert "input_quant" in taps_of(r.path)  # the input quantizer is in the file
    if fmt in ("onnx", "qonnx"):  # the same function in float arithmetic, checked quantizer by quantizer
        a = v.activations
        assert a["within"] == 1.0 and a["unexplained"] == 0 and a["quantizers"] >= 3
        first = {"qonnx": {"Quant"}, "onnx": {"Clip", "Div"}}[fmt]  # fixed step: Clip; learned: x / s first
        assert graph.node[0].op_type in first  # the input quantizer comes first
    if fmt == "qdq":
        assert sum(n for k, n in v.kernels.items() if k in ("QGemm", "QLinearConv")) >= 1


def test_the_input_quantizer_is_a_module_call_fx_sees(user_model):
    from qaprune.export.lower import lower

    name, model, x, _ = user_model
    low = lower(model, x)
    calls = [n.target for n in low.graph.graph.nodes if n.op == "call_module"]
    assert calls[0] == "input_quant"
    assert "input_quant.scale" in model.state_dict()


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 12)

    def forward(self, x):
        return torch.cumsum(self.fc(x), dim=1)  # no qaprune lowering; torch.onnx exports it


class WithCumsum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block, self.act, self.head = Block(), nn.ReLU(), nn.Linear(12, 3)

    def forward(self, x):
        return self.head(self.act(self.block(x)))


def test_a_node_without_lowering_names_its_module_and_the_formats_that_take_it(tmp_path):
    model, x = _trained(WithCumsum(), (12,), steps=10)
    for fmt, other in (("qdq", "qonnx"), ("qonnx", "qdq")):
        with pytest.raises(QapruneError) as err:
            export(model, format=fmt, out=tmp_path / "m", x=x)
        msg = str(err.value)
        assert f"export --format {fmt}: fx node 'cumsum' (torch.cumsum in the forward of 'block')" in msg
        takers = msg.split("formats that take this model: ")[1]
        assert "--format onnx" in takers and "--format qap" in takers and f"--format {other}" not in takers
    assert not any(tmp_path.iterdir())
    r = export(model, format="onnx", out=tmp_path / "m.onnx", x=x)  # the suggestion holds
    assert r.how.startswith("torch.onnx.export") and "cumsum" in r.how and r.verification.passed


def test_wide_weights_suggest_only_formats_that_take_them(tmp_path):
    torch.manual_seed(0)
    model = ResidualMLP()
    x, _ = _data((12,), n=200)
    attach(model, Recipe(quant={"weight_bits": 12, "act_bits": 8}), sample=x)
    with pytest.raises(QapruneError, match=r"qdq: layer '\w+': 12-bit weights") as err:
        export(model.eval(), format="qdq", out=tmp_path / "m", x=x)
    takers = str(err.value).split("formats that take this model: ")[1]
    assert all(f"--format {f}" in takers for f in ("onnx", "qonnx", "qap"))


def test_adaptive_pooling_that_does_not_divide_is_named(tmp_path):
    model = nn.Sequential(nn.Unflatten(1, (1, 12)), nn.Conv1d(1, 4, 3), nn.AdaptiveAvgPool1d(4), nn.Flatten())
    x = torch.rand(64, 12)
    with pytest.raises(QapruneError, match=r"layer '2': adaptive pooling \(10,\) -> \(4,\)"):
        export(model.eval(), format="qonnx", out=tmp_path / "m", x=x)


USER_MODULE = """
    import torch
    from torch import nn

    class SideNet(nn.Module):
        def __init__(self, in_features, num_classes):
            super().__init__()
            self.fc1, self.act1 = nn.Linear(in_features, 32), nn.ReLU()
            self.fc2, self.act2 = nn.Linear(32, 32), nn.ReLU()
            self.side, self.act_side = nn.Linear(in_features, 8), nn.ReLU()
            self.head = nn.Linear(32 + 8, num_classes)

        def forward(self, x):
            x = x.flatten(1)                                # digits: (N, 1, 8, 8)
            h = self.act1(self.fc1(x))
            h = h + self.act2(self.fc2(h))
            return self.head(torch.cat([h, self.act_side(self.side(x))], dim=1))
"""


def test_shrink_of_a_user_model_run_verifies_its_file(tmp_path):
    from qaprune import runner
    from qaprune.export.run_shrink import shrink_run

    (tmp_path / "qap_side_models.py").write_text(textwrap.dedent(USER_MODULE))
    (tmp_path / "r.yaml").write_text(
        textwrap.dedent(
            """
            name: side
            data: {name: digits}
            model: {name: 'qap_side_models:SideNet'}
            quant: {weight_bits: 6, act_bits: 6, input_bits: 8}
            prune: {sparsity: 0.5, rate: 0.25, structure: channels}
            train: {epochs: 2, batch_size: 128, patience: null}
            """
        )
    )
    run_dir = tmp_path / "run"
    runner.run(tmp_path / "r.yaml", out=run_dir, log=lambda *_: None)
    s = shrink_run(run_dir, latency=False)
    v = s["verification"]
    assert v["passed"] and v["format"] == "onnx" and v["samples"] == min(1024, v["samples"]) > 100
    assert "teacher-forced" in v["criterion"] and v["activations"]["unexplained"] == 0
    assert s["onnx_export"].startswith("qaprune lowering") and sum(s["removed"].values()) > 0
    assert (run_dir / "model.shrunk.onnx").stat().st_size == s["onnx_bytes"]
    assert json.loads((run_dir / "shrink.json").read_text())["verification"] == v
    assert not list(run_dir.glob(".*.tmp"))
