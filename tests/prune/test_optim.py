"""Tests of qaprune.prune.optim: the group prox and half-space / orthant steps against hand
values; HSPG and OBProx-SG recover planted (group-)sparse least-squares solutions with exact
zeros; λ = 0 is SGD step for step; state_dict round trips; groups_to_masks keeps zeros zero
through Adam training."""

from __future__ import annotations

import copy
import doctest

import pytest
import torch
from torch import Tensor, nn

import qaprune.prune.optim as optim_mod
from qaprune.errors import RecipeError
from qaprune.param import add_mask, get_mask, latent_weight
from qaprune.prune.optim import HSPG, OBProxSG, group_norms, group_soft_threshold, groups_to_masks

N, D_IN, D_OUT = 512, 12, 8
ZERO_ROWS = [1, 3, 4, 6]
ZERO_COLS = [0, 2, 5, 7, 8, 11]


def _problem(
    zero_rows: list[int] = (), zero_cols: list[int] = (), d_out: int = D_OUT, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Least squares Y = X Wᵀ + 0.1·noise with a planted sparse W (d_out, D_IN)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D_IN, generator=gen)
    w = torch.randn(d_out, D_IN, generator=gen)
    w[list(zero_rows)] = 0.0
    w[:, list(zero_cols)] = 0.0
    return x, x @ w.T + 0.1 * torch.randn(N, d_out, generator=gen), w


def _loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return 0.5 * (model(x) - y).square().sum(1).mean()


def _train(
    model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, steps: int, seed: int = 2, batch: int = 32
) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, N, (batch,), generator=gen)
        opt.zero_grad()
        _loss(model, x[idx], y[idx]).backward()
        opt.step()


def _linear(d_out: int = D_OUT, bias: bool = False) -> nn.Linear:
    torch.manual_seed(1)
    return nn.Linear(D_IN, d_out, bias=bias)


# -- the proximal operator and the two projection steps, by hand -----------------------------


def test_group_soft_threshold_hand_values() -> None:
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    # rows: norms 5 and 0.5; τ = 1 scales row 0 by 1 − 1/5 and zeroes row 1
    assert torch.allclose(group_soft_threshold(x, 1.0, "rows"), torch.tensor([[2.4, 3.2], [0.0, 0.0]]))
    # columns: norms √9.09 = 3.014963 and √16.16 = 4.019950
    cols = torch.tensor(
        [[3.0 * (1 - 1 / 3.014963), 4.0 * (1 - 1 / 4.019950)], [0.3 * (1 - 1 / 3.014963), 0.4 * (1 - 1 / 4.019950)]]
    )
    assert torch.allclose(group_soft_threshold(x, 1.0, "columns"), cols, atol=1e-6)
    # all: one group of norm √25.25 = 5.024938; τ above it zeroes everything
    assert torch.allclose(group_soft_threshold(x, 1.0, "all"), x * (1 - 1 / 5.024938), atol=1e-6)
    assert torch.equal(group_soft_threshold(x, 5.1, "all"), torch.zeros(2, 2))
    assert torch.equal(group_soft_threshold(x, 0.0, "rows"), x)


def test_group_norms_shapes_for_conv_weights() -> None:
    w = torch.ones(4, 3, 3, 3)
    assert group_norms(w, "rows").shape == (4, 1, 1, 1)
    assert group_norms(w, "columns").shape == (1, 3, 1, 1)
    assert group_norms(w, "all").shape == (1, 1, 1, 1)
    assert torch.allclose(group_norms(w, "rows").flatten(), torch.full((4,), 27**0.5))
    assert torch.allclose(group_norms(w, "columns").flatten(), torch.full((3,), 36**0.5))


def _one_step(opt_cls, x: list, grad: list, **kwargs) -> list:
    p = nn.Parameter(torch.tensor(x))
    p.grad = torch.tensor(grad)
    opt_cls([p], **kwargs).step()
    return p.tolist()


def test_half_space_step_hand_values() -> None:
    x, grad = [[1.0, 0.0], [0.1, 0.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]
    # row 0: 1 − 0.5·0.2 = 0.9; row 1: 0.1 − 0.5·1.2 = −0.5 leaves the half-space -> 0;
    # row 2 is zero and stays zero although its gradient is not
    out = _one_step(HSPG, x, grad, lr=0.5, lam=0.2, n_p=0)
    assert sum(out, []) == pytest.approx([0.9, 0.0, 0.0, 0.0, 0.0, 0.0])
    # ε = 0.95: x̂ᵀx = 0.9 < 0.95·‖x‖² also drops row 0
    assert _one_step(HSPG, x, grad, lr=0.5, lam=0.2, n_p=0, epsilon=0.95) == [[0.0, 0.0]] * 3
    # the Prox-SG phase does not freeze zero groups: row 2 becomes −0.5·(1, 1) shrunk by 0.1
    prox = _one_step(HSPG, x, grad, lr=0.5, lam=0.2, n_p=1)
    assert prox[2] == pytest.approx([-0.5 * (1 - 0.1 / 0.5**0.5)] * 2)


def test_orthant_step_hand_values() -> None:
    # 0.5 − 0.5·(0.1 + 0.1) = 0.4; −0.2 − 0.5·(−1 − 0.1) = 0.35 crossed zero -> 0; 0 stays 0
    out = _one_step(OBProxSG, [0.5, -0.2, 0.0], [0.1, -1.0, 5.0], lr=0.5, lam=0.1, n_p=0, n_o=None)
    assert out == pytest.approx([0.4, 0.0, 0.0])
    # the Prox-SG step soft-thresholds: 0.45 − 0.05, 0.3 − 0.05, −2.5 + 0.05
    prox = _one_step(OBProxSG, [0.5, -0.2, 0.0], [0.1, -1.0, 5.0], lr=0.5, lam=0.1, n_p=1)
    assert prox == pytest.approx([0.4, 0.25, -2.45])


# -- planted sparse problems ----------------------------------------------------------------


def test_hspg_recovers_planted_zero_rows() -> None:
    x, y, w_true = _problem(zero_rows=ZERO_ROWS)
    lin = _linear()
    opt = HSPG([{"params": [lin.weight], "groups": "rows"}], lr=0.05, lam=0.05, n_p=100)
    _train(lin, opt, x, y, 300)
    zero = opt.zero_groups()[0]
    assert zero.tolist() == [i in ZERO_ROWS for i in range(D_OUT)]
    w = lin.weight.detach()
    assert torch.equal(w[ZERO_ROWS], torch.zeros(len(ZERO_ROWS), D_IN))  # exact zeros
    assert (w[~zero] != 0).all()  # every row is all zero or has no zero at all
    assert torch.allclose(w[~zero], w_true[~zero], atol=0.1)  # shrunk by about λ
    # Prox-SG alone (no half-space phase) with the same λ leaves every row non-zero
    prox_only = _linear()
    opt = HSPG([prox_only.weight], lr=0.05, lam=0.05, n_p=300)
    _train(prox_only, opt, x, y, 300)
    assert not opt.zero_groups()[0].any()


def test_hspg_recovers_planted_zero_columns() -> None:
    x, y, _ = _problem(zero_cols=ZERO_COLS)
    lin = _linear()
    opt = HSPG([lin.weight], lr=0.05, lam=0.1, n_p=100, groups="columns")
    _train(lin, opt, x, y, 300)
    assert opt.zero_groups()[0].tolist() == [j in ZERO_COLS for j in range(D_IN)]
    w = lin.weight.detach()
    keep = [j for j in range(D_IN) if j not in ZERO_COLS]
    assert (w[:, ZERO_COLS] == 0).all() and (w[:, keep] != 0).all()


def test_obproxsg_recovers_planted_zeros() -> None:
    x, y, w_true = _problem(zero_cols=ZERO_COLS, d_out=1, seed=3)
    lin = _linear(1)
    opt = OBProxSG([lin.weight], lr=0.05, lam=0.05, n_p=50, n_o=None)
    _train(lin, opt, x, y, 300)
    zero = opt.zero_groups()[0]
    assert zero.shape == (1, D_IN)
    assert zero[0].tolist() == [j in ZERO_COLS for j in range(D_IN)]
    assert torch.allclose(lin.weight.detach(), w_true, atol=0.1)
    prox_only = _linear(1)
    opt = OBProxSG([prox_only.weight], lr=0.05, lam=0.05, n_p=300, n_o=0)
    _train(prox_only, opt, x, y, 300)
    assert int(opt.zero_groups()[0].sum()) < len(ZERO_COLS)


# -- λ = 0 is SGD; state_dict; options ------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: HSPG(ps, lr=0.05, lam=0.0, n_p=3),
        lambda ps: HSPG(ps, lr=0.05, lam=0.0, n_p=3, momentum=0.9, groups="all"),
        lambda ps: OBProxSG(ps, lr=0.05, lam=0.0, n_p=2, n_o=2),
    ],
    ids=["hspg", "hspg-momentum", "obproxsg"],
)
def test_lambda_zero_is_sgd_step_for_step(make) -> None:
    x, y, _ = _problem(zero_rows=ZERO_ROWS)
    ours, ref = _linear(bias=True), _linear(bias=True)
    opt = make(ours.parameters())
    sgd = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=opt.param_groups[0].get("momentum", 0))
    gen = torch.Generator().manual_seed(5)
    for _ in range(8):  # both phases
        idx = torch.randint(0, N, (16,), generator=gen)
        for model, o in ((ours, opt), (ref, sgd)):
            o.zero_grad()
            _loss(model, x[idx], y[idx]).backward()
            o.step()
        assert torch.equal(ours.weight, ref.weight) and torch.equal(ours.bias, ref.bias)


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: HSPG(ps, lr=0.05, lam=0.3, n_p=3, momentum=0.9),
        lambda ps: OBProxSG(ps, lr=0.05, lam=0.3, n_p=2, n_o=2),
    ],
    ids=["hspg", "obproxsg"],
)
def test_state_dict_round_trip(make) -> None:
    x, y, _ = _problem(zero_rows=ZERO_ROWS)
    model = _linear()
    opt = make(model.parameters())
    _train(model, opt, x, y, 2)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    assert saved_opt["param_groups"][0]["step"] == 2
    _train(model, opt, x, y, 5, seed=9)  # crosses into the second phase
    resumed = _linear()
    resumed.load_state_dict(saved_model)
    opt2 = make(resumed.parameters())
    opt2.load_state_dict(saved_opt)
    assert opt2.param_groups[0]["step"] == 2
    _train(resumed, opt2, x, y, 5, seed=9)
    assert torch.equal(resumed.weight, model.weight)


def test_zero_groups_keys_and_closure() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight[1] = 0.0
    named = HSPG(model.named_parameters(), lr=0.1, lam=0.1)
    assert set(named.zero_groups()) == {"0.weight", "0.bias"}
    assert named.zero_groups()["0.weight"].tolist() == [False, True]
    groups = [{"params": [model[0].bias], "lam": 0.0}, {"params": [model[0].weight]}]
    indexed = HSPG(groups, lr=0.1, lam=0.1)
    assert list(indexed.zero_groups()) == [1]  # unregularized (lam = 0) groups are left out
    loss = indexed.step(lambda: model(torch.ones(1, 3)).sum())
    assert loss is not None and model[0].weight.grad is None  # closure ran, did not backward


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda p: HSPG([p], lr=0.1, lam=0.1, groups="diag"), "groups"),
        (lambda p: HSPG([{"params": [nn.Parameter(p[0])], "groups": "columns"}], lr=0.1, lam=0.1), "columns"),
        (lambda p: HSPG([p], lr=0.1, lam=-1.0), "lam"),
        (lambda p: HSPG([p], lr=0.1, lam=0.1, epsilon=1.0), "epsilon"),
        (lambda p: HSPG([p], lr=0.1, lam=0.1, momentum=1.5), "momentum"),
        (lambda p: OBProxSG([p], lr=0.1, lam=0.1, n_o=-1), "n_o"),
        (lambda p: OBProxSG([{"params": [p], "groups": "rows"}], lr=0.1, lam=0.1), "groups"),
    ],
)
def test_bad_options_name_the_field(build, field: str) -> None:
    with pytest.raises(RecipeError, match=field):
        build(nn.Parameter(torch.ones(2, 2)))


# -- groups_to_masks ------------------------------------------------------------------------


def _adam(model: nn.Module, x: Tensor, y: Tensor, steps: int = 100) -> None:
    _train(model, torch.optim.Adam(model.parameters(), lr=0.05), x, y, steps, seed=7)


def test_groups_to_masks_keeps_zero_rows_through_adam() -> None:
    x, y, _ = _problem(zero_rows=ZERO_ROWS)
    model = nn.Sequential(_linear(bias=True))
    opt = HSPG([{"params": [model[0].weight]}, {"params": [model[0].bias], "lam": 0.0}], lr=0.05, lam=0.05, n_p=100)
    _train(model, opt, x, y, 300)
    dense_y = x @ torch.randn(D_OUT, D_IN, generator=torch.Generator().manual_seed(4)).T
    unmasked = copy.deepcopy(model)
    before = model[0].weight.detach().clone()
    masks = groups_to_masks(model, opt)
    assert list(masks) == ["0"] and masks["0"].shape == (D_OUT, D_IN)
    assert masks["0"].sum(1).tolist() == [0.0 if i in ZERO_ROWS else D_IN for i in range(D_OUT)]
    _adam(model, x, dense_y)
    _adam(unmasked, x, dense_y)
    w = model[0].weight.detach()
    assert torch.equal(w[ZERO_ROWS], torch.zeros(len(ZERO_ROWS), D_IN))
    assert torch.equal(latent_weight(model[0])[ZERO_ROWS].detach(), torch.zeros(len(ZERO_ROWS), D_IN))
    keep = [i for i in range(D_OUT) if i not in ZERO_ROWS]
    assert (w[keep] - before[keep]).abs().min() > 0  # the kept rows did train
    assert (unmasked[0].weight[ZERO_ROWS] != 0).all()  # without masks Adam revives them


def test_groups_to_masks_multiplies_into_existing_mask() -> None:
    lin = nn.Linear(4, 3)
    mask = add_mask(lin)
    mask.mask[0, 0] = 0.0
    with torch.no_grad():
        latent_weight(lin)[2] = 0.0
        latent_weight(lin)[:, 3] = 0.0
    named = dict(lin.named_parameters())
    assert "parametrizations.weight.original" in named
    rows = HSPG([named["parametrizations.weight.original"], named["bias"]], lr=0.1, lam=0.1)
    built = groups_to_masks(lin, rows)
    assert set(built) == {""} and get_mask(lin) is mask  # no second mask; bias skipped
    assert mask.mask.tolist() == [[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]]
    groups_to_masks(lin, HSPG([latent_weight(lin)], lr=0.1, lam=0.1, groups="columns"))
    assert mask.mask.tolist() == [[0, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]]


def test_groups_to_masks_errors() -> None:
    lin = nn.Linear(2, 2)
    with pytest.raises(RecipeError, match="not HSPG/OBProxSG"):
        groups_to_masks(lin, torch.optim.SGD(lin.parameters(), lr=0.1))
    with pytest.raises(RecipeError, match="not in the model"):
        groups_to_masks(lin, OBProxSG([nn.Parameter(torch.ones(2))], lr=0.1, lam=0.1))


def test_docstring_examples() -> None:
    result = doctest.testmod(optim_mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
