"""Dependency-aware channel pruning: whole groups, any criterion, exact removal by shrink."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qaprune.compress import attach
from qaprune.errors import RecipeError
from qaprune.export import shrink
from qaprune.models import build_model
from qaprune.param import get_mask, prunable_layers
from qaprune.prune import CRITERIA, prune_to
from qaprune.prune.channels import group_scores, prune_channels
from qaprune.prune.groups import channel_groups
from qaprune.prune.stats import MomentumTracker, collect_stats
from qaprune.recipe import Recipe

CASES = [("mlp", (16,)), ("vgg_small", (1, 16, 16)), ("resnet8", (1, 16, 16))]


CH = {"of": "channels"}  # sparsity as a fraction of channels: these tests count channels


def _model(name, shape, *, bits=32, layers=None):
    torch.manual_seed(0)
    m = build_model(name, input_shape=shape, num_classes=5)
    x = torch.randn(16, *shape)
    attach(
        m, Recipe(quant={"weight_bits": bits, "act_bits": bits}, prune={"sparsity": 0.5}, layers=layers or {}), sample=x
    )
    m.train()
    m(x)  # batch-norm statistics that are not trivial
    return m.eval(), x


def _out_channels(mod: nn.Module) -> torch.Tensor:
    """bool (out,): rows of the effective weight that are not all zero."""
    return (mod.weight.flatten(1) != 0).any(1)


@pytest.mark.parametrize("name,shape", CASES)
@pytest.mark.parametrize("bits", [32, 4])
def test_pruned_groups_shrink_exactly(name, shape, bits):
    m, x = _model(name, shape, bits=bits)
    prune_to(m, 0.5, structure="channels", allocation="uniform", example_input=x[:2], structure_args=CH)
    r = shrink(m, x, sparse="never")
    with torch.no_grad():
        assert torch.allclose(r.model(x), m(x), atol=1e-5)
    out_layer = [n for n, mod in m.named_modules() if isinstance(mod, nn.Linear)][-1]
    assert out_layer not in r.removed and "model output" in r.not_shrunk[out_layer]
    for g in (g for g in channel_groups(m, x[:2]) if g.prunable):
        assert r.removed[g.root] == g.size // 2, g.root  # exactly half of every free group


def test_mlp_layers_lose_rows_and_the_consumers_columns():
    m, x = _model("mlp", (16,))
    achieved = prune_to(m, 0.5, structure="channels", allocation="uniform", example_input=x[:2], structure_args=CH)
    assert achieved == pytest.approx({"fc1": 0.5, "fc2": 0.75, "fc3": 0.75, "fc4": 0.5})
    assert int(_out_channels(m.fc1).sum()) == 32 and int(_out_channels(m.fc4).sum()) == 5
    dropped = ~_out_channels(m.fc1)
    assert (m.fc1.bias[dropped] == 0).all() and (m.bn1.weight[dropped] == 0).all()
    assert (m.bn1.bias[dropped] == 0).all()
    assert (m.fc2.weight[:, dropped] == 0).all()


def test_residual_partners_lose_the_same_channels():
    m, x = _model("resnet8", (1, 16, 16))
    prune_to(m, 0.5, structure="channels", allocation="uniform", example_input=x[:2], structure_args=CH)
    for g in (g for g in channel_groups(m, x[:2]) if g.prunable and len(g.producers) > 1):
        rows = [_out_channels(m.get_submodule(p)) for p in g.producers]
        assert all(torch.equal(rows[0], r) for r in rows[1:]), g.producers
        return
    pytest.fail("resnet8 has no residual group")


def _stats(m, x, name):
    needs = set(getattr(CRITERIA.get(name), "needs", frozenset()))
    if not needs:
        return None
    y = torch.randint(0, 5, (len(x),))
    tracker = None
    if "momentum" in needs:
        tracker = MomentumTracker(m)
        tracker(m)
    return collect_stats(m, x, y, needs=needs, momentum=tracker, batch_size=8, batches=2)


@pytest.mark.parametrize("criterion", CRITERIA.names())
def test_every_criterion_prunes_whole_groups(criterion):
    m, x = _model("vgg_small", (1, 16, 16))
    prune_to(
        m,
        0.5,
        criterion=criterion,
        structure="channels",
        allocation="global",
        example_input=x[:2],
        structure_args=CH,
        stats=_stats(m, x, criterion),
        generator=torch.Generator().manual_seed(0),
    )
    free = [g for g in channel_groups(m, x[:2]) if g.prunable]
    kept = sum(int(_out_channels(m.get_submodule(g.root)).sum()) for g in free)
    half = sum(g.size for g in free) // 2
    assert half <= kept <= half + len(free)  # a group allotted nothing keeps one channel
    r = shrink(m, x, sparse="never")
    with torch.no_grad():
        assert torch.allclose(r.model(x), m(x), atol=1e-5)


def test_round_to_keeps_multiples():
    m, x = _model("vgg_small", (1, 16, 16))
    prune_to(
        m, 0.4, structure="channels", allocation="uniform", structure_args={**CH, "round_to": 8}, example_input=x[:2]
    )
    for g in (g for g in channel_groups(m, x[:2]) if g.prunable):
        kept = int(_out_channels(m.get_submodule(g.root)).sum())
        assert kept % 8 == 0 and kept >= 8, (g.root, kept)


def test_fixed_and_per_layer_args_and_excluded_layers():
    m, x = _model("mlp", (16,), layers={"fc2": {"prune": False}})
    assert get_mask(m.fc2) is None
    prune_channels(
        m, 0.5, example_input=x[:2], fixed={"fc1": 0.25}, layer_args={"fc3": {"round_to": 5}}, structure_args=CH
    )
    assert int(_out_channels(m.fc1).sum()) == 48
    assert int(_out_channels(m.fc2).sum()) == 32  # excluded: no Mask, untouched
    assert int(_out_channels(m.fc3).sum()) == 15  # 16 rounded to the nearest multiple of 5


def test_group_scores_read_the_consumers_columns():
    m, x = _model("mlp", (16,))
    with torch.no_grad():
        w = m.fc3.parametrizations.weight.original
        w.copy_(torch.ones_like(w))  # every fc3 row alike
        c = m.fc4.parametrizations.weight.original
        c.copy_(torch.ones_like(c))
        c[:, 7] = 10.0  # fc4 reads channel 7 strongly
    g = next(g for g in channel_groups(m, x[:2]) if g.root == "fc3")
    scores = group_scores(m, g, "magnitude", {})
    assert int(scores.argmax()) == 7
    alone = group_scores(m, g, "magnitude", {}, coupled=False)
    assert torch.allclose(alone, alone[0].expand_as(alone))


def test_pruned_channels_stay_pruned():
    m, x = _model("mlp", (16,))
    prune_to(m, 0.25, structure="channels", allocation="global", example_input=x[:2], structure_args=CH)
    before = _out_channels(m.fc1).clone()
    prune_to(m, 0.5, structure="channels", allocation="global", example_input=x[:2], structure_args=CH)
    assert not (_out_channels(m.fc1) & ~before).any()


@pytest.mark.parametrize(
    "args,match",
    [({"round_to": 0}, "round_to"), ({"reduce": "median"}, "reduce"), ({"block": 4}, "unknown structure_args")],
)
def test_bad_structure_args_name_the_layer(args, match):
    m, x = _model("mlp", (16,))
    with pytest.raises(RecipeError, match=match) as err:
        prune_to(m, 0.5, structure="channels", structure_args=args, example_input=x[:2])
    assert "layer 'fc" in str(err.value)


@pytest.mark.parametrize(("name", "shape"), [("mlp", (16,)), ("vgg_small", (1, 16, 16)), ("resnet8", (3, 16, 16))])
@pytest.mark.parametrize("allocation", ["uniform", "global", "lamp"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_channels_meet_the_weight_sparsity_within_one_channel_per_layer(name, shape, allocation, sparsity):
    m, x = _model(name, shape)
    achieved = prune_to(m, sparsity, structure="channels", allocation=allocation, example_input=x[:2])
    layers = prunable_layers(m)
    sizes = {n: mod.weight.numel() for n, mod in layers.items()}
    total = sum(sizes.values())
    overall = sum(achieved[n] * sizes[n] for n in layers) / total
    # one channel of a layer: a row of it (its outputs) and a column of its consumer (its inputs)
    slack = sum(mod.weight[0].numel() + mod.weight.shape[0] for mod in layers.values()) / total
    assert abs(overall - sparsity) <= slack, (overall, sparsity, slack)
    r = shrink(m, x, sparse="never")  # still whole groups, exactly removable
    with torch.no_grad():
        assert torch.allclose(r.model(x), m(x), atol=1e-5)


def test_channels_of_must_be_weights_or_channels():
    m, x = _model("mlp", (16,))
    with pytest.raises(RecipeError, match=r"prune.structure_args.of: 'neurons'; allowed: weights, channels"):
        prune_to(m, 0.5, structure="channels", example_input=x[:2], structure_args={"of": "neurons"})
