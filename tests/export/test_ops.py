"""The lowerings between layers (``export.ops``): each one, in each ONNX format, computes what
PyTorch computes, written by qaprune's lowering (no torch.onnx fallback), inputs quantized."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qaprune.compress import attach
from qaprune.export.api import export
from qaprune.export.ops import LOWERINGS, module_lowering
from qaprune.recipe import Recipe


class Slices(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(6, 5), nn.Linear(6, 5), nn.Linear(12, 3)

    def forward(self, x):
        parts = [torch.relu(self.a(x[:, :6])), self.b(x[:, 6:]), x[..., -2:]]
        return self.head(torch.cat(parts, dim=-1))


class Layouts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv1d(4, 4, 1), nn.Linear(12, 3)

    def forward(self, x):
        h = x.view(x.size(0), 3, 4).permute(0, 2, 1)  # (N, 4, 3)
        h = self.conv(h).transpose(1, 2).contiguous()  # (N, 3, 4)
        h = torch.unsqueeze(h, 1).squeeze(1).reshape(-1, 12)
        return self.fc(h[:, None, :].flatten(1))


class Pools1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv1d(1, 4, 3, padding=1), nn.Linear(4 * 3 + 4 * 2 + 4 + 4, 3)

    def forward(self, x):
        h = F.relu(self.conv(x.unsqueeze(1)))  # (N, 4, 12)
        a = F.max_pool1d(h, 2, stride=2)  # (N, 4, 6)
        b = F.avg_pool1d(a, kernel_size=2)  # (N, 4, 3)
        c = F.adaptive_max_pool1d(a, 2)
        d = torch.mean(h, dim=-1)
        e = F.adaptive_avg_pool1d(h, 1).squeeze(-1)
        return self.fc(torch.cat([b.flatten(1), c.flatten(1), d, e], 1))


class Pools2d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.pool = nn.Conv2d(1, 4, 3, padding=1), nn.AdaptiveMaxPool2d(2)
        self.fc = nn.Linear(4 * 4 + 4 + 4, 3)

    def forward(self, x):
        h = F.max_pool2d(torch.relu(self.conv(x)), 2)  # (N, 4, 4, 4)
        g = F.adaptive_avg_pool2d(h, (1, 1)).flatten(1)
        m = h.mean(dim=(2, 3))
        return self.fc(torch.cat([self.pool(h).flatten(1), g, m], 1))


class Activations(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 12), nn.Linear(12 * 4, 3)
        self.acts = nn.ModuleList([nn.Sigmoid(), nn.Tanh(), nn.SiLU(), nn.LeakyReLU(0.1)])
        self.elu, self.clip, self.out = nn.ELU(0.5), nn.Hardtanh(-0.5, 0.5), nn.LogSoftmax(dim=1)

    def forward(self, x):
        h = self.fc1(x)
        hs = [act(h) for act in self.acts]
        hs[0] = F.relu6(hs[0] * 8) + self.clip(self.elu(h)) + F.leaky_relu(h, 0.2) + F.silu(h)
        return self.out(self.fc2(torch.cat(hs, 1)) + torch.sigmoid(x[:, :3]) + F.softmax(x[:, 3:6], dim=1))


class Arithmetic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(12, 6), nn.Linear(12, 6)
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 6))
        self.drop, self.skip, self.head = nn.Dropout(0.3), nn.Identity(), nn.Linear(6, 3)

    def forward(self, x):
        a, b = self.a(x), F.dropout(self.b(x), 0.2, self.training)
        h = 0.5 * (a + b) - a / 2.0 + self.gain * self.drop(b)
        h = torch.add(h, 1.0).sub(1.0).mul(torch.tanh(a)).div(2.0)
        h = self.skip(h) + x[:, 6:] * x[:, :6] - (-x[:, :6]).abs()
        return self.head(torch.relu(h))


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class Scale(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.linspace(0.5, 2.0, n))

    def forward(self, x):
        return x * self.s


class UserModules(nn.Module):
    """The user's own parameter-free and parameter-only modules: traced through, op by op."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.swish, self.scale, self.head = nn.Linear(12, 8), Swish(), Scale(8), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.scale(self.swish(self.fc(x))))


CASES = {
    "slices": (Slices, (12,)),
    "layouts": (Layouts, (12,)),
    "pools1d": (Pools1d, (12,)),
    "pools2d": (Pools2d, (1, 8, 8)),
    "activations": (Activations, (12,)),
    "arithmetic": (Arithmetic, (12,)),
    "user_modules": (UserModules, (12,)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("fmt", ["onnx", "qdq", "qonnx"])
def test_lowered_operations_compute_what_torch_computes(case, fmt, tmp_path):
    cls, shape = CASES[case]
    torch.manual_seed(0)
    x = torch.rand(256, *shape)
    model = attach(cls(), Recipe(quant={"input_bits": 8, "act_bits": 8, "weight_bits": 8}), sample=x).eval()
    r = export(model, format=fmt, out=tmp_path / "m.onnx", x=x, shrink=False)
    assert r.how.startswith("qaprune lowering") and r.verification.passed
    if fmt != "qdq":  # the same function in float arithmetic
        assert r.verification.max_abs_diff < 1e-4


def test_lowerings_are_looked_up_by_target():
    assert LOWERINGS.functions[torch.cat] is LOWERINGS.functions[torch.concat]
    assert "unsqueeze" in LOWERINGS.methods and "permute" in LOWERINGS.methods
    assert module_lowering(nn.ReLU6()) is module_lowering(nn.Hardtanh())  # same forward

    class MyReLU(nn.ReLU):  # its own forward: not a ReLU any more
        def forward(self, x):
            return x.abs()

    assert module_lowering(MyReLU()) is None and module_lowering(nn.ReLU()) is not None
