"""Peer baseline for bench/qap_letter.py: the paper's own stack, *not* part of qaprune.

Reproduces the training/pruning loop of "Ps and Qs: Quantization-Aware Pruning" (Hawks et al.
2021) with the tools the paper used: Brevitas ``QuantLinear`` + ``QuantReLU`` (+ a signed
``QuantHardTanh`` input quantizer) with batch norm, and ``torch.nn.utils.prune`` global L1
magnitude pruning. Schedule: train to convergence (early stopping on validation loss, best
weights restored), then for each cumulative sparsity target prune globally and either fine-tune
the survivors (``rewind="ft"``) or rewind them and every other parameter/buffer to their values
right after initialization (lottery ticket, ``rewind="lt"``) and retrain. ``bits == 32`` builds
a plain float ``nn.Linear``/``nn.ReLU`` reference with no Brevitas at all.

Per step the history records test accuracy, actual sparsity, epochs, training seconds/epoch and
per-layer BOPs via ``qaprune.metrics.bops.layer_bops`` so the numbers line up with qaprune's.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from qaprune.metrics.bops import layer_bops

FLOAT_BITS = 32
INPUT_RANGE = 4.0  # initial |max| of the (standardized) input quantizer; its scale is learned
State = dict[str, torch.Tensor]


def _act(bits: int, act_max: float) -> nn.Module:
    if bits == FLOAT_BITS:
        return nn.ReLU()
    from brevitas.nn import QuantReLU
    from brevitas.quant import Uint8ActPerTensorFloatMaxInit

    return QuantReLU(act_quant=Uint8ActPerTensorFloatMaxInit, bit_width=bits, max_val=act_max)


def _linear(n: int, m: int, bits: int) -> nn.Linear:
    if bits == FLOAT_BITS:
        return nn.Linear(n, m)
    from brevitas.nn import QuantLinear
    from brevitas.quant import Int8WeightPerTensorFloat  # per-tensor, narrow-range symmetric

    return QuantLinear(n, m, bias=True, weight_quant=Int8WeightPerTensorFloat, weight_bit_width=bits)


def _input_quant(bits: int, input_bits: int) -> nn.Module:
    if bits == FLOAT_BITS:
        return nn.Identity()
    from brevitas.nn import QuantHardTanh
    from brevitas.quant import Int8ActPerTensorFloatMinMaxInit

    return QuantHardTanh(
        act_quant=Int8ActPerTensorFloatMinMaxInit, bit_width=input_bits, min_val=-INPUT_RANGE, max_val=INPUT_RANGE
    )


def build_model(
    n_in: int, num_classes: int, hidden: tuple[int, ...], bits: int, input_bits: int, act_max: float
) -> nn.Sequential:
    """Input quantizer → [Linear → BN → ReLU] × len(hidden) → Linear logits."""
    layers: list[nn.Module] = [_input_quant(bits, input_bits)]
    width = n_in
    for h in hidden:
        layers += [_linear(width, h, bits), nn.BatchNorm1d(h), _act(bits, act_max)]
        width = h
    layers.append(_linear(width, num_classes, bits))
    return nn.Sequential(*layers)


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]  # QuantLinear included


def _snapshot(model: nn.Module) -> State:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def _restore(model: nn.Module, saved: State) -> None:
    """Copy ``saved`` into the live tensors in place (no Brevitas re-init, optimizer refs kept).

    Keys saved before pruning (``x.weight``) are mapped onto ``x.weight_orig``; masks stay.
    """
    for key, live in model.state_dict(keep_vars=True).items():
        if key.endswith("_mask") and key not in saved:
            continue
        src = saved.get(key, saved.get(key.removesuffix("_orig")))
        if src is None:
            raise KeyError(f"no saved value for {key}")
        live.data.copy_(src)


def _zeros(model: nn.Module) -> tuple[int, int]:
    ws = [m.weight for m in _linears(model)]
    return sum(int((w == 0).sum()) for w in ws), sum(w.numel() for w in ws)


def prune_to(model: nn.Module, target: float) -> None:
    """Global L1 unstructured pruning until a fraction ``target`` of all Linear weights is zero.

    ``amount`` of a repeated ``global_unstructured`` call counts the *remaining* weights, so the
    absolute number of extra weights to remove is passed as an int.
    """
    zeros, total = _zeros(model)
    extra = int(round(target * total)) - zeros
    if extra <= 0:
        return
    params = [(m, "weight") for m in _linears(model)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=extra)


@torch.no_grad()
def check_masks(model: nn.Module) -> None:
    """Pruned entries are zero in the float weights and in Brevitas' quant_weight()."""
    for m in _linears(model):
        mask = getattr(m, "weight_mask", None)
        if mask is None:
            continue
        w = mask * m.weight_orig  # what the prune hook computes; m.weight may be stale
        assert not m.weight[mask == 0].any(), "pruned float weights are not zero"
        if hasattr(m, "quant_weight"):
            qw = m.weight_quant(w).value
            assert not qw[mask == 0].any(), "pruned quantized weights are not zero"


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, l1: float) -> torch.Tensor:
    loss = F.cross_entropy(model(x), y)
    if l1 > 0:
        loss = loss + l1 * sum(m.weight.abs().sum() for m in _linears(model))
    return loss


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def _train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    l1: float,
    gen: torch.Generator,
) -> float:
    """One shuffled epoch; returns its wall time (training only)."""
    start = time.perf_counter()
    model.train()
    order = torch.randperm(x.shape[0], generator=gen)
    for i in range(0, x.shape[0], batch_size):
        idx = order[i : i + batch_size]
        opt.zero_grad(set_to_none=True)
        _loss(model, x[idx], y[idx], l1).backward()
        opt.step()
    return time.perf_counter() - start


def fit(
    model: nn.Module,
    data: tuple[torch.Tensor, ...],
    *,
    max_epochs: int,
    patience: int,
    batch_size: int,
    lr: float,
    l1: float,
    gen: torch.Generator,
) -> list[float]:
    """Adam + early stopping on val loss, best weights restored; returns per-epoch seconds."""
    x_tr, y_tr, x_val, y_val = data
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best, best_state, wait, times = math.inf, _snapshot(model), 0, []
    for _ in range(max_epochs):
        times.append(_train_epoch(model, opt, x_tr, y_tr, batch_size, l1, gen))
        val_loss, _ = _evaluate(model, x_val, y_val)
        if val_loss < best:
            best, best_state, wait = val_loss, _snapshot(model), 0
        else:
            wait += 1
            if wait >= patience:
                break
    _restore(model, best_state)
    return times


def layer_records(model: nn.Module, bits: int, input_bits: int) -> list[dict]:
    out = []
    for i, m in enumerate(_linears(model)):
        act = FLOAT_BITS if bits == FLOAT_BITS else (input_bits if i == 0 else bits)
        sp = float((m.weight == 0).float().mean())
        out.append(
            {
                "n": m.in_features,
                "m": m.out_features,
                "sparsity": sp,
                "weight_bits": bits,
                "act_bits": act,
                "bops": layer_bops(m.out_features, m.in_features, sparsity=sp, act_bits=act, weight_bits=bits),
            }
        )
    return out


@torch.no_grad()
def _quant_sparsity(model: nn.Module) -> float:
    """Fraction of weights that are zero after Brevitas weight quantization (info only)."""
    zeros = total = 0
    for m in _linears(model):
        w = m.quant_weight().value if hasattr(m, "quant_weight") else m.weight
        zeros, total = zeros + int((w == 0).sum()), total + w.numel()
    return zeros / total


def run_peer(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    num_classes: int,
    hidden: tuple[int, ...] = (64, 32, 32),
    bits: int,
    sparsities: list[float],
    rewind: str = "ft",
    max_epochs: int = 100,
    patience: int = 10,
    batch_size: int = 1024,
    lr: float = 1e-3,
    l1: float = 0.0,
    seed: int = 0,
    act_max: float = 6.0,
    input_bits: int | None = None,
) -> dict:
    """Dense training then one prune + FT/LT retrain step per cumulative sparsity target."""
    if rewind not in ("ft", "lt"):
        raise ValueError(f"rewind must be 'ft' or 'lt', got {rewind!r}")
    in_bits = bits if input_bits is None else input_bits
    torch.manual_seed(seed)
    model = build_model(x_train.shape[1], num_classes, tuple(hidden), bits, in_bits, act_max)
    init_state = _snapshot(model)
    gen = torch.Generator().manual_seed(seed)
    data = (x_train, y_train, x_val, y_val)
    hist, all_times = [], []
    for step, target in enumerate([0.0, *sparsities]):
        if step > 0:
            prune_to(model, target)
            if rewind == "lt":
                _restore(model, init_state)
        times = fit(model, data, max_epochs=max_epochs, patience=patience, batch_size=batch_size, lr=lr, l1=l1, gen=gen)
        _, acc = _evaluate(model, x_test, y_test)  # forward refreshes the masked weights
        check_masks(model)
        zeros, total = _zeros(model)
        layers = layer_records(model, bits, in_bits)
        all_times += times
        hist.append(
            {
                "step": step,
                "target_sparsity": target,
                "sparsity": zeros / total,
                "quant_sparsity": _quant_sparsity(model),
                "accuracy": acc,
                "epochs": len(times),
                "seconds_per_epoch": sum(times) / len(times),
                "bops": sum(r["bops"] for r in layers),
                "layers": layers,
            }
        )
    return {"history": hist, "seconds_per_epoch": sum(all_times) / len(all_times), "bits": bits, "rewind": rewind}


def _self_check() -> None:
    """Tiny synthetic FT and LT runs: masks hold, quantized pruned weights are exactly zero."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(600, 16, generator=g), torch.randint(0, 5, (600,), generator=g)
    for rewind in ("ft", "lt"):
        r = run_peer(
            x[:400],
            y[:400],
            x[400:500],
            y[400:500],
            x[500:],
            y[500:],
            num_classes=5,
            hidden=(16, 8),
            bits=4,
            sparsities=[0.5, 0.9],
            rewind=rewind,
            max_epochs=3,
            batch_size=64,
        )
        for rec, target in zip(r["history"], [0.0, 0.5, 0.9]):
            assert abs(rec["sparsity"] - target) < 1e-2, (rec["sparsity"], target)
            assert rec["quant_sparsity"] >= rec["sparsity"]


def load_letter(path: str = "/work/shared/datasets/uci/letter.npz", seed: int = 0):
    """Seed-permuted 14000/2000/4000 split, standardized with train statistics."""
    import numpy as np

    d = np.load(path)
    perm = np.random.default_rng(seed).permutation(len(d["y"]))
    x, y = torch.from_numpy(d["x"][perm]).float(), torch.from_numpy(d["y"][perm]).long()
    mu, sd = x[:14000].mean(0), x[:14000].std(0)
    x = (x - mu) / sd
    return x[:14000], y[:14000], x[14000:16000], y[14000:16000], x[16000:], y[16000:]


def _print_history(res: dict) -> None:
    print(f"bits={res['bits']} rewind={res['rewind']} s/epoch={res['seconds_per_epoch']:.4f}")
    print(
        f"{'step':>4} {'target':>7} {'sparsity':>8} {'q_spars':>7} {'acc':>6} {'epochs':>6} {'s/epoch':>8} {'BOPs':>12}"
    )
    for h in res["history"]:
        print(
            f"{h['step']:>4} {h['target_sparsity']:>7.3f} {h['sparsity']:>8.4f} "
            f"{h['quant_sparsity']:>7.4f} {h['accuracy']:>6.4f} {h['epochs']:>6} "
            f"{h['seconds_per_epoch']:>8.4f} {h['bops']:>12.0f}"
        )


if __name__ == "__main__":
    _self_check()
    splits = load_letter()
    _print_history(run_peer(*splits, num_classes=26, bits=6, sparsities=[0.5, 0.8], max_epochs=20))
