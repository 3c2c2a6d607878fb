"""Tests of the structured patterns in qaprune.prune.structures (channels, blocks, nm, mpd,
periodic): achieved sparsity, the pattern, and errors that name the layer through prune_to."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from qaprune.errors import RecipeError
from qaprune.param import add_mask, get_mask
from qaprune.prune.pruner import prune_to
from qaprune.prune.structures import STRUCTURES, mpd_permutations

INF = float("inf")
CONV = (8, 4, 3, 3)  # (out, in, kh, kw): the (out, in) view is (8, 36)
ARGS: dict[str, dict] = {
    "blocks": {"block": [2, 3]},
    "nm": {"n": 2, "m": 4},
    "mpd": {"k": 4, "seed": 1},
    "periodic": {"period": 3, "keep": 3},
    "channels": {"reduce": "sum"},
}
# the achieved sparsity on CONV scores for a requested sparsity s > 0
EXPECTED: dict[str, Callable[[float], float]] = {
    "unstructured": lambda s: round(s * 288) / 288,
    "channels": lambda s: s,  # s·8 whole channels
    "blocks": lambda s: s,  # s·48 whole 2×3 tiles
    "nm": lambda s: 0.5,  # 2:4 whatever s asks
    "mpd": lambda s: 0.75,  # 1 − 1/k
    "periodic": lambda s: 6 / 9,  # 1 − keep/(kh·kw)
}


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _sparsity(mask: torch.Tensor) -> float:
    return float((mask == 0).sum()) / mask.numel()


@pytest.mark.parametrize("name", STRUCTURES.names())
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
def test_every_structure_on_a_conv_weight(name: str, sparsity: float) -> None:
    scores = _rand(*CONV)
    mask = STRUCTURES.get(name)(scores, sparsity, **ARGS.get(name, {}))
    assert mask.shape == scores.shape and mask.dtype == scores.dtype
    assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}
    if name in EXPECTED:
        assert _sparsity(mask) == pytest.approx(EXPECTED[name](sparsity), abs=1e-12)
    assert torch.equal(STRUCTURES.get(name)(scores, 0.0, **ARGS.get(name, {})), torch.ones(CONV))


@pytest.mark.parametrize("name", sorted(ARGS))
def test_masks_are_deterministic(name: str) -> None:
    scores = _rand(*CONV, seed=4)
    fn = STRUCTURES.get(name)
    assert torch.equal(fn(scores, 0.5, **ARGS[name]), fn(scores.clone(), 0.5, **ARGS[name]))


# --- channels ----------------------------------------------------------------------------------
@pytest.mark.parametrize("reduce,kept_rows", [("sum", [1, 2]), ("mean", [1, 2]), ("max", [1, 3])])
def test_channels_keeps_highest_reduced_rows(reduce: str, kept_rows: list[int]) -> None:
    scores = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 5.0], [2.0, 2.0, 2.0], [4.0, 0.0, 0.0]])
    mask = STRUCTURES.get("channels")(scores, 0.5, reduce=reduce)  # sums 3, 5, 6, 4; max 1, 5, 2, 4
    assert [i for i in range(4) if mask[i].sum() == 3] == kept_rows
    assert mask.sum() == 6


def test_channels_random_conv_keeps_top_sums() -> None:
    scores = _rand(16, 3, 3, 3, seed=5)
    mask = STRUCTURES.get("channels")(scores, 0.7)  # keep round(0.3·16) = 5
    sums, kept = scores.flatten(1).sum(1), mask.flatten(1)[:, 0] == 1
    assert int(kept.sum()) == 5
    assert torch.all(mask.flatten(1) == mask.flatten(1)[:, :1])  # whole filters
    assert float(sums[kept].min()) > float(sums[~kept].max())


def test_channels_earlier_pruned_entries_count_as_zero() -> None:
    scores = torch.tensor([[-INF, 9.0], [1.0, 1.0], [-INF, -INF]])
    mask = STRUCTURES.get("channels")(scores, 0.34)  # keep round(0.66·3) = 2
    assert mask[:, 0].tolist() == [1.0, 1.0, 0.0]
    assert STRUCTURES.get("channels")(scores, 0.6)[:, 0].tolist() == [1.0, 0.0, 0.0]


def test_channels_keeps_at_least_one() -> None:
    channels = STRUCTURES.get("channels")
    assert channels(_rand(4, 100), 0.9).sum() == 100  # 4 - round(3.6) = 0 channels -> one kept
    assert channels(_rand(4, 2), 0.99).sum() == 2  # a layer never loses every channel
    assert channels(_rand(5, 1), 0.5).sum() == 3  # 5 - round(2.5) = 3, as unstructured counts
    with pytest.raises(ValueError, match="reduce='median'; allowed: sum, mean, max"):
        channels(_rand(4, 2), 0.5, reduce="median")


# --- N:M ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 3)])
def test_nm_keeps_top_n_of_every_m(n: int, m: int) -> None:
    scores = torch.randn(6, 24, generator=torch.Generator().manual_seed(6))
    mask = STRUCTURES.get("nm")(scores, 0.5, n=n, m=m)
    groups, sgroups = mask.view(6, -1, m), scores.view(6, -1, m)
    assert torch.all(groups.sum(-1) == n)
    top = torch.topk(sgroups, n, dim=-1).values.sort(-1).values
    kept = sgroups[groups == 1].view(6, -1, n).sort(-1).values
    assert torch.equal(top, kept)
    assert _sparsity(mask) == 1 - n / m


def test_nm_groups_run_along_flattened_kernel() -> None:
    scores = torch.arange(16.0).view(1, 4, 2, 2)  # in·kh·kw = 16 -> 4 groups of 4
    mask = STRUCTURES.get("nm")(scores, 0.5)
    assert mask.flatten().tolist() == [0.0, 0.0, 1.0, 1.0] * 4


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9])
def test_nm_sparsity_is_the_pattern(sparsity: float) -> None:
    assert _sparsity(STRUCTURES.get("nm")(_rand(4, 8), sparsity)) == 0.5


def test_nm_errors_name_the_dimension() -> None:
    nm = STRUCTURES.get("nm")
    with pytest.raises(ValueError, match=r"weight \(8, 30\) has 30 inputs \(dim 1\), not divisible by m=4"):
        nm(_rand(8, 30), 0.5)
    with pytest.raises(ValueError, match="n=5 > m=4"):
        nm(_rand(8, 8), 0.5, n=5)
    with pytest.raises(ValueError, match="m=0: need a positive integer"):
        nm(_rand(8, 8), 0.5, m=0)


# --- blocks ------------------------------------------------------------------------------------
def test_blocks_prunes_lowest_tile_sums() -> None:
    tile_sums = torch.tensor([[5.0, 1.0, 7.0], [2.0, 9.0, 3.0]])  # tiles of 2×2 over (4, 6)
    scores = tile_sums.repeat_interleave(2, 0).repeat_interleave(2, 1) / 4
    scores[0, 0] += 0.5  # tile (0, 0) now sums 5.5
    mask = STRUCTURES.get("blocks")(scores, 0.5, block=[2, 2])
    tiles = mask.view(2, 2, 3, 2).permute(0, 2, 1, 3).reshape(2, 3, 4)
    assert torch.all(tiles == tiles[..., :1])  # whole tiles
    assert tiles[..., 0].tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]  # 1, 2, 3 go


def test_blocks_random_conv_whole_tiles_ordered() -> None:
    scores = _rand(8, 2, 2, 3, seed=7)  # (8, 12) view, 2×4 tiles: 4×3 grid
    mask = STRUCTURES.get("blocks")(scores, 0.4, block=[2, 4])
    t_mask = mask.view(4, 2, 3, 4).permute(0, 2, 1, 3).reshape(12, 8)
    t_sum = scores.reshape(4, 2, 3, 4).permute(0, 2, 1, 3).reshape(12, 8).sum(1)
    assert torch.all(t_mask == t_mask[:, :1])
    pruned = t_mask[:, 0] == 0
    assert int(pruned.sum()) == 5  # round(0.4·96) = 38 entries: 5 tiles of 8 = 40 is closest
    assert float(t_sum[pruned].max()) < float(t_sum[~pruned].min())


def test_blocks_ragged_edges_are_partial_tiles() -> None:
    blocks = STRUCTURES.get("blocks")
    scores = torch.ones(5, 7)  # 2×3 tiles: rows 2, 2, 1 × cols 3, 3, 1; edge tiles hold 1, 2, 2, 3, 3
    mask = blocks(scores, 11 / 35, block=[2, 3])  # 11 entries: exactly the edge tiles
    assert mask[4].tolist() == [0.0] * 7 and mask[:, 6].tolist() == [0.0] * 5
    assert int(mask.sum()) == 24
    mask = blocks(scores, 0.2, block=[2, 3])  # 7 entries: 1 + 2 + 2 + 3 = 8 is the closest count
    assert int((mask == 0).sum()) == 8
    assert mask[:, 6].tolist() == [0.0] * 5 and mask[4].tolist() == [0.0] * 3 + [1.0] * 3 + [0.0]


def test_blocks_refuses_bad_blocks() -> None:
    blocks = STRUCTURES.get("blocks")
    with pytest.raises(ValueError, match=r"block \[8, 2\] is larger than weight \(4, 6\): 8 > 4 outputs \(dim 0\)"):
        blocks(_rand(4, 6), 0.5, block=[8, 2])
    with pytest.raises(ValueError, match=r"block \[2, 7\] is larger than weight \(4, 6\): 7 > 6 inputs \(dim 1\)"):
        blocks(_rand(4, 6), 0.5, block=[2, 7])
    with pytest.raises(ValueError, match=r"block=4: need \[rows, cols\]"):
        blocks(_rand(4, 6), 0.5, block=4)


# --- mpd ---------------------------------------------------------------------------------------
def _block_diagonal(rows: int, cols: int, k: int) -> torch.Tensor:
    r_ids = torch.cat([torch.full((len(c),), i) for i, c in enumerate(torch.arange(rows).tensor_split(k))])
    c_ids = torch.cat([torch.full((len(c),), i) for i, c in enumerate(torch.arange(cols).tensor_split(k))])
    return (r_ids[:, None] == c_ids[None, :]).float()


@pytest.mark.parametrize("shape,k,kept", [((8, 12), 4, 24), ((10, 7), 3, 24), ((6, 2, 3, 3), 3, 36)])
def test_mpd_permuted_back_is_block_diagonal(shape: tuple[int, ...], k: int, kept: int) -> None:
    mask = STRUCTURES.get("mpd")(_rand(*shape), 0.5, k=k, seed=3)
    rows, cols = mpd_permutations(shape, k, seed=3)
    back = mask.reshape(shape[0], -1)[rows][:, cols]
    assert torch.equal(back, _block_diagonal(*back.shape, k))
    assert int(mask.sum()) == kept  # (10, 7), k=3: 4·3 + 3·2 + 3·2
    assert not torch.equal(mask.reshape(back.shape), back)  # it really is permuted


def test_mpd_one_block_per_row_and_column_group() -> None:
    k, mask = 4, STRUCTURES.get("mpd")(torch.zeros(8, 12), 0.9, k=4, seed=0)
    rows, cols = mpd_permutations((8, 12), k, seed=0)
    grid = mask[rows][:, cols].view(k, 2, k, 3).sum((1, 3))  # kept entries per (row, col) group
    assert torch.equal(grid, 6 * torch.eye(k))
    assert _sparsity(mask) == 0.75


def test_mpd_seeded_and_data_independent() -> None:
    mpd = STRUCTURES.get("mpd")
    a = mpd(_rand(16, 16, seed=1), 0.5, k=4, seed=7)
    assert torch.equal(a, mpd(_rand(16, 16, seed=2), 0.5, k=4, seed=7))
    assert not torch.equal(a, mpd(_rand(16, 16, seed=1), 0.5, k=4, seed=8))
    r1, c1 = mpd_permutations((16, 16), 4, seed=7)
    r2, c2 = mpd_permutations(torch.Size([16, 16]), 4, seed=7)
    assert torch.equal(r1, r2) and torch.equal(c1, c2)
    assert sorted(r1.tolist()) == list(range(16))


def test_mpd_refuses_too_many_blocks() -> None:
    with pytest.raises(ValueError, match=r"k=5 blocks need at least 5 outputs \(dim 0\); weight \(4, 9\) has 4"):
        STRUCTURES.get("mpd")(_rand(4, 9), 0.5, k=5)


# --- periodic ----------------------------------------------------------------------------------
def test_periodic_repeats_with_the_period() -> None:
    mask = STRUCTURES.get("periodic")(_rand(6, 6, 3, 3), 0.5, period=3, keep=3)
    assert torch.equal(mask[:, :3], mask[:, 3:]) and torch.equal(mask[:3], mask[3:])
    assert torch.equal(mask[1:, :-1], mask[:-1, 1:])  # pattern (o + c) mod period
    kernels = mask.flatten(2)
    assert torch.all(kernels.sum(-1) == 3)
    assert len({tuple(kernels[0, c].tolist()) for c in range(6)}) == 3
    assert kernels[0, 1].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert _sparsity(mask) == 6 / 9


def test_periodic_wraps_and_any_kernel_rank() -> None:
    mask = STRUCTURES.get("periodic")(_rand(2, 5, 4), 0.5, period=5, keep=3)  # Conv1d, K = 4
    assert mask[0, 1].tolist() == [1.0, 1.0, 0.0, 1.0]  # positions 3, 4, 5 mod 4
    assert torch.equal(mask[0, 1:], mask[1, :-1])
    assert _sparsity(mask) == 0.25


def test_periodic_refuses_linear_and_bad_keep() -> None:
    periodic = STRUCTURES.get("periodic")
    with pytest.raises(ValueError, match=r"weight \(4, 6\) has no kernel dims.*for Linear layers use nm or blocks"):
        periodic(_rand(4, 6), 0.5)
    with pytest.raises(ValueError, match=r"keep=10 > 9 kernel positions"):
        periodic(_rand(2, 2, 3, 3), 0.5, keep=10)


# --- through prune_to --------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(30, 16), nn.Linear(16, 4)
        for lin in (self.fc1, self.fc2):
            add_mask(lin)


@pytest.mark.parametrize(
    "structure,args,match",
    [
        (
            "nm",
            {"n": 2, "m": 4},
            r"^prune\.structure nm: layer 'fc1': weight \(16, 30\) has 30 inputs \(dim 1\), not divisible by m=4$",
        ),
        (
            "blocks",
            {"block": [8, 8]},
            r"^prune\.structure blocks: layer 'fc2': block \[8, 8\] is larger than weight \(4, 16\): 8 > 4 outputs",
        ),
        ("periodic", {}, r"^prune\.structure periodic: layer 'fc1': weight \(16, 30\) has no kernel dims"),
        ("channels", {"bogus": 1}, r"^prune\.structure channels: layer 'fc1': .*unexpected keyword argument 'bogus'"),
    ],
)
def test_prune_to_names_the_layer(structure: str, args: dict, match: str) -> None:
    model = _Net()
    with pytest.raises(RecipeError, match=match):
        prune_to(model, 0.5, structure=structure, structure_args=args, allocation="uniform")
    for lin in (model.fc1, model.fc2):  # nothing pruned when any layer is refused
        assert torch.all(get_mask(lin).mask == 1)


@pytest.mark.parametrize("name", STRUCTURES.names())
@pytest.mark.parametrize("kind", ["signed", "ties"])
def test_every_structure_takes_any_scores(name: str, kind: str) -> None:
    scores = torch.randn(CONV, generator=torch.Generator().manual_seed(8)) if kind == "signed" else torch.ones(CONV)
    mask = STRUCTURES.get(name)(scores, 0.5, **ARGS.get(name, {}))
    assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}
    if name in EXPECTED:
        assert _sparsity(mask) == pytest.approx(EXPECTED[name](0.5), abs=1e-12)


@pytest.mark.parametrize("name", ["unstructured", "channels", "blocks"])
def test_score_driven_structures_prune_earlier_pruned_first(name: str) -> None:
    scores = _rand(*CONV, seed=9)
    scores[:4] = -INF  # half of the channels (and of the 2×3 tiles) were pruned before
    mask = STRUCTURES.get(name)(scores, 0.5, **ARGS.get(name, {}))
    assert mask[:4].sum() == 0 and torch.all(mask[4:] == 1)


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3))
    for conv in model:
        add_mask(conv)
    return model


PATTERN = {"unstructured": 0.5, "channels": 0.5, "blocks": 0.5, "nm": 0.5, "mpd": 0.75, "periodic": 6 / 9}
GRAIN = {"unstructured": (1, 1), "channels": (36, 72), "blocks": (6, 6)}  # entries per unit


@pytest.mark.parametrize("name", STRUCTURES.names())
@pytest.mark.parametrize("criterion", ["magnitude", "l2", "random", "lamp"])
def test_prune_to_every_structure_on_a_cnn(name: str, criterion: str) -> None:
    model = _cnn()
    achieved = prune_to(
        model,
        0.5,
        criterion=criterion,
        structure=name,
        allocation="uniform",
        structure_args=ARGS.get(name, {}),
        generator=torch.Generator().manual_seed(0),
    )
    if name in PATTERN:
        assert achieved == {"0": pytest.approx(PATTERN[name]), "1": pytest.approx(PATTERN[name])}
    assert model(torch.randn(2, 4, 7, 7)).shape == (2, 8, 3, 3)


@pytest.mark.parametrize("name", sorted(GRAIN))
@pytest.mark.parametrize("allocation", ["global", "lamp"])
def test_prune_to_across_layers_with_score_driven_structures(name: str, allocation: str) -> None:
    model = _cnn()  # 288 + 576 weights
    achieved = prune_to(model, 0.5, structure=name, allocation=allocation, structure_args=ARGS.get(name, {}))
    pruned = achieved["0"] * 288 + achieved["1"] * 576
    assert abs(pruned - 432) <= sum(GRAIN[name]) / 2 + 1e-9  # each layer rounds to its units
    for conv, s in zip(model, achieved.values()):
        assert _sparsity(get_mask(conv).mask) == s
