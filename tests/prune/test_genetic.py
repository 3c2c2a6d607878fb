"""Genetic channel selection with knowledge distillation (Hu et al.)."""

from __future__ import annotations

import copy

import pytest
import torch

from qaprune.compress import attach
from qaprune.data import load_dataset
from qaprune.export import shrink
from qaprune.methods import genetic_prune_and_distill
from qaprune.models import build_model
from qaprune.param import get_mask
from qaprune.prune.genetic import fitness_value, free_groups, genetic_channels
from qaprune.recipe import Recipe, TrainSpec
from qaprune.train import fit

FAST = {"population": 8, "generations": 4, "fitness_samples": 256}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def trained(digits):
    """A small MLP trained on digits, with Masks attached; (model, dataset)."""
    torch.manual_seed(0)
    m = build_model("mlp", input_shape=digits.input_shape, num_classes=10)
    attach(m, Recipe(prune={"sparsity": 0.5}))
    fit(
        m,
        digits.x_train,
        digits.y_train,
        digits.x_val,
        digits.y_val,
        spec=TrainSpec(epochs=15, batch_size=64, lr=3e-3, patience=None),
    )
    return m.eval(), digits


def _clone(m):
    """A deep copy whose parametrized modules get classes of their own: copy.deepcopy shares the
    generated Parametrized* class, so masking a bias in the copy would break the original."""
    out = copy.deepcopy(m)
    for mod in out.modules():
        if getattr(mod, "parametrizations", None):
            cls = mod.__class__
            mod.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    return out


def _acc(m, x, y) -> float:
    with torch.no_grad():
        return float((m.eval()(x).argmax(1) == y).float().mean())


def _vgg(ds):
    torch.manual_seed(0)
    m = build_model("vgg_small", input_shape=(1, 8, 8), num_classes=10, widths=(8, 16), hidden=16)
    attach(m, Recipe(prune={"sparsity": 0.5}))
    m.train()
    with torch.no_grad():
        m(ds.x_train[:256])  # batch-norm statistics that are not trivial
    return m.eval()


@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_every_group_keeps_exactly_its_budget(trained, sparsity):
    m0, ds = trained
    m = _clone(m0)
    groups = free_groups(m, ds.x_train[:2])
    r = genetic_channels(m, ds.x_train, ds.y_train, sparsity=sparsity, example_input=ds.x_train[:2], **FAST)
    assert sorted(r.keeps) == sorted(g.root for g in groups) == ["fc1", "fc2", "fc3"]
    for g in groups:
        expected = max(1, g.size - round(sparsity * g.size))
        assert int(r.keeps[g.root].sum()) == expected, g.root
        rows = (get_mask(m.get_submodule(g.root)).mask != 0).any(1)
        assert torch.equal(rows, r.keeps[g.root])  # the applied masks are the selection


def test_elitism_keeps_the_best_and_history_is_monotone(trained):
    m0, ds = trained
    r = genetic_channels(
        _clone(m0),
        ds.x_train,
        ds.y_train,
        sparsity=0.75,
        example_input=ds.x_train[:2],
        population=10,
        generations=6,
        fitness_samples=256,
    )
    assert len(r.fitness_history) == 7
    assert all(b >= a for a, b in zip(r.fitness_history, r.fitness_history[1:]))
    assert r.best_fitness == r.fitness_history[-1] >= r.initial_fitness
    assert r.best_fitness > r.initial_fitness  # the search improves on magnitude at 75%


def test_same_seed_same_result(trained):
    m0, ds = trained

    def run(seed):
        return genetic_channels(
            _clone(m0), ds.x_train, ds.y_train, sparsity=0.5, example_input=ds.x_train[:2], seed=seed, **FAST
        )

    a, b, c = run(3), run(3), run(4)
    assert a.fitness_history == b.fitness_history
    assert all(torch.equal(a.keeps[k], b.keeps[k]) for k in a.keeps)
    assert a.fitness_history != c.fitness_history or any(not torch.equal(a.keeps[k], c.keeps[k]) for k in a.keeps)


@pytest.mark.parametrize("model", ["mlp", "vgg_small", "plain"])
def test_hooked_fitness_equals_the_masked_model_which_shrinks_exactly(trained, model):
    m0, ds = trained
    m = {
        "mlp": lambda: _clone(m0),
        "vgg_small": lambda: _vgg(ds),
        "plain": lambda: build_model("mlp", input_shape=(1, 8, 8), num_classes=10).eval(),
    }[model]()
    x, y = ds.x_train[:200], ds.y_train[:200]
    r = genetic_channels(
        m, x, y, sparsity=0.5, example_input=x[:2], population=6, generations=2, fitness_samples=len(x)
    )
    with torch.no_grad():
        logits = m(x)
    assert fitness_value(logits, y, "ce") == pytest.approx(r.best_fitness, abs=1e-5)
    s = shrink(m, ds.x_test[:64], sparse="never")
    with torch.no_grad():
        assert torch.allclose(s.model(ds.x_test[:64]), m(ds.x_test[:64]), atol=1e-5)
    for root, keep in r.keeps.items():
        assert s.removed[root] == int((~keep).sum())


def test_teacher_selects_the_kd_fitness(trained):
    m0, ds = trained
    m, teacher, x, y = _clone(m0), _clone(m0), ds.x_train[:256], ds.y_train[:256]
    r = genetic_channels(
        m,
        x,
        y,
        sparsity=0.5,
        example_input=x[:2],
        teacher=teacher,
        population=6,
        generations=2,
        fitness_samples=len(x),
        temperature=2.0,
    )
    assert r.fitness == "kd"
    with torch.no_grad():
        logits, target = m(x), teacher(x)
    kd = fitness_value(logits, y, "kd", target=target, temperature=2.0)
    assert kd == pytest.approx(r.best_fitness, abs=1e-5)
    assert kd < fitness_value(logits, y, "ce")  # the KL term is there
    with pytest.raises(ValueError, match="fitness: 'kd' needs a teacher"):
        genetic_channels(m, x, y, sparsity=0.5, example_input=x[:2], fitness="kd")


@pytest.mark.parametrize(
    "field,value", [("sparsity", 1.0), ("population", 1), ("elite", 8), ("mutation", 1.5), ("fitness", "mse")]
)
def test_bad_options_name_the_field(trained, field, value):
    m0, ds = trained
    args = {"sparsity": 0.5, "population": 8, **{field: value}}
    with pytest.raises(ValueError, match=f"genetic_channels: {field}"):
        genetic_channels(_clone(m0), ds.x_train, ds.y_train, example_input=ds.x_train[:2], **args)


def test_distillation_fine_tune_recovers_accuracy(trained):
    m0, ds = trained
    dense, m = _clone(m0), _clone(m0)
    genetic_channels(m, ds.x_train, ds.y_train, sparsity=0.85, example_input=ds.x_train[:2], teacher=dense, **FAST)
    before = _acc(m, ds.x_test, ds.y_test)
    spec = TrainSpec(epochs=8, batch_size=64, lr=3e-3, patience=None, distill={"weight": 0.5})
    fit(m, ds.x_train, ds.y_train, ds.x_val, ds.y_val, spec=spec, teacher=dense)
    after = _acc(m, ds.x_test, ds.y_test)
    assert after > before + 0.05, (before, after)
    assert int((get_mask(m.fc1).mask != 0).any(1).sum()) == 10  # fine-tuning kept the selection


def test_helper_runs_selection_then_distillation(trained):
    m0, ds = trained
    m = _clone(m0)
    g, f = genetic_prune_and_distill(
        m,
        ds.x_train,
        ds.y_train,
        ds.x_val,
        ds.y_val,
        sparsity=0.5,
        example_input=ds.x_train[:2],
        spec=TrainSpec(epochs=2, patience=None),
        population=4,
        generations=1,
        fitness_samples=128,
    )
    assert g.fitness == "kd" and f.epochs == 2
    assert int((get_mask(m.fc2).mask != 0).any(1).sum()) == 16
