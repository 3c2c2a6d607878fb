"""Genetic channel selection with knowledge distillation (Hu et al., "A novel channel pruning
method for deep neural network compression").

An individual is one bool keep-vector per free channel group (``channel_groups``), each keeping
exactly ``size - round(sparsity * size)`` channels (at least one): a uniform per-group budget.
The population starts from the group-magnitude solution plus perturbed and random ones, and
evolves by tournament selection, uniform crossover inside each group, count-preserving bit-swap
mutation, a repair step that restores the exact counts, and elitism. Fitness is cheap: a few
hundred training samples through one working copy of the model, where forward hooks multiply
the producers' (and batch norms') outputs by the 0/1 channel vector instead of rewriting masks.
For float weights this equals ``mask_channels`` exactly; with fake-quantized weights whose scale
follows the weights it is a close approximation. Fitness is −CE (``"ce"``), accuracy
(``"accuracy"``) or, against a teacher's logits, −(CE + T²·KL(teacher_T ‖ student_T)) (``"kd"``:
the pruned net's distillation error against the dense one, as in Hu et al.).

The best individual is applied with ``mask_channels`` (so ``shrink`` removes it exactly); then
fine-tune with the dense model as teacher, either through ``qaprune.methods.genetic_prune_and_distill`` or
``fit(model, ..., spec=TrainSpec(..., distill={"weight": 0.5}), teacher=dense)``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qaprune.param import prunable_layers
from qaprune.prune.channels import group_scores, keep_count, mask_columns, top_channels
from qaprune.prune.groups import ChannelGroup, channel_groups, mask_channels

FITNESSES = ("ce", "accuracy", "kd")
Individual = list[Tensor]  # one bool keep-vector (group.size,) per free group, in group order


@dataclass
class GeneticResult:
    """``keeps``: group root -> bool (size,), the applied selection. ``fitness_history``: the
    population's best fitness after each generation (index 0: the initial population).
    ``initial_fitness``: the group-magnitude solution's; ``best_fitness``: the applied one's."""

    keeps: dict[str, Tensor]
    fitness_history: list[float] = field(default_factory=list)
    initial_fitness: float = 0.0
    best_fitness: float = 0.0
    fitness: str = "ce"


def genetic_channels(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    sparsity: float,
    example_input: Tensor,
    population: int = 16,
    generations: int = 10,
    mutation: float = 0.05,
    crossover: float = 0.5,
    elite: int = 2,
    fitness_samples: int = 512,
    seed: int = 0,
    teacher: nn.Module | None = None,
    fitness: str | None = None,
    temperature: float = 4.0,
    tournament: int = 3,
) -> GeneticResult:
    """Evolve per-group keep-vectors of ``model`` at ``sparsity`` and mask the best in place.
    x (N, ...) float, y (N,) int64: training data on the model's device (``fitness_samples`` of
    them, drawn with ``seed``, score individuals). example_input (n, ...): a batch to trace.
    ``fitness``: "kd" (default with a ``teacher``), "ce" (default without) or "accuracy".
    Groups are free when prunable and, if any layer carries a ``Mask``, all producers do.

    Example:
        >>> from qaprune.models import build_model
        >>> m = build_model("mlp", input_shape=(16,), num_classes=5).eval()
        >>> x, y = torch.randn(64, 16), torch.randint(0, 5, (64,))
        >>> r = genetic_channels(m, x, y, sparsity=0.5, example_input=x[:2], generations=2)
        >>> {k: int(v.sum()) for k, v in r.keeps.items()}
        {'fc3': 16, 'fc2': 16, 'fc1': 32}
        >>> r.best_fitness >= r.initial_fitness
        True
    """
    fitness = fitness or ("kd" if teacher is not None else "ce")
    _check(sparsity, population, generations, mutation, crossover, elite, fitness, teacher, tournament)
    groups = free_groups(model, example_input)
    gen = torch.Generator().manual_seed(seed)
    xs, ys = _samples(x, y, fitness_samples, gen)
    target = _teacher_logits(teacher, xs) if fitness == "kd" else None
    counts = [keep_count(torch.empty(g.size), sparsity) or 1 for g in groups]
    score = _Scorer(model, groups, xs, ys, target, fitness, temperature)
    try:
        start = _magnitude(model, groups, counts)
        pop = [start] + [_initial(start, counts, gen, perturb=i % 2 == 1) for i in range(1, population)]
        fits = [score(ind) for ind in pop]
        initial, history = fits[0], [max(fits)]
        for _ in range(generations):
            pop, fits = _next_generation(
                pop,
                fits,
                counts,
                gen,
                score,
                mutation=mutation,
                crossover=crossover,
                elite=elite,
                tournament=tournament,
            )
            history.append(max(fits))
    finally:
        score.close()
    best = pop[max(range(len(pop)), key=fits.__getitem__)]
    apply_keeps(model, groups, best)
    return GeneticResult({g.root: k.clone() for g, k in zip(groups, best)}, history, initial, max(fits), fitness)


def free_groups(model: nn.Module, example_input: Tensor) -> list[ChannelGroup]:
    """The groups ``genetic_channels`` selects in: prunable, with Linear/Conv producers that all
    carry a ``Mask`` (any producer when no layer has one: masks are then added)."""
    layers = prunable_layers(model)
    return [
        g
        for g in channel_groups(model, example_input)
        if g.prunable and g.producers and (not layers or all(p in layers for p in g.producers))
    ]


@torch.no_grad()
def apply_keeps(model: nn.Module, groups: list[ChannelGroup], keeps: Individual) -> None:
    """Mask every group's dropped channels in place (rows, biases, batch norms through
    ``mask_channels``; consumers' columns where they carry a ``Mask``, as ``prune_channels``)."""
    for g, keep in zip(groups, keeps):
        mask_channels(model, g, keep)
        mask_columns(model, g, keep)


def _check(
    sparsity: float,
    population: int,
    generations: int,
    mutation: float,
    crossover: float,
    elite: int,
    fitness: str,
    teacher: nn.Module | None,
    tournament: int,
) -> None:
    problems = [
        (not 0.0 <= sparsity < 1.0, f"sparsity: {sparsity} is not in [0, 1)"),
        (population < 2, f"population: {population} is not >= 2"),
        (generations < 0, f"generations: {generations} is not >= 0"),
        (not 0.0 <= mutation <= 1.0, f"mutation: {mutation} is not in [0, 1]"),
        (not 0.0 <= crossover <= 1.0, f"crossover: {crossover} is not in [0, 1]"),
        (not 0 <= elite < population, f"elite: {elite} is not in [0, population={population})"),
        (tournament < 1, f"tournament: {tournament} is not >= 1"),
        (fitness not in FITNESSES, f"fitness: {fitness!r}; allowed: {', '.join(FITNESSES)}"),
        (fitness == "kd" and teacher is None, "fitness: 'kd' needs a teacher"),
    ]
    for bad, msg in problems:
        if bad:
            raise ValueError(f"genetic_channels: {msg}")


def _samples(x: Tensor, y: Tensor, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    idx = torch.randperm(len(x), generator=gen)[:n].to(x.device)
    return x[idx], y[idx]


@torch.no_grad()
def _teacher_logits(teacher: nn.Module, x: Tensor) -> Tensor:
    was = teacher.training
    teacher.eval()
    out = teacher(x)
    teacher.train(was)
    return out


def _magnitude(model: nn.Module, groups: list[ChannelGroup], counts: list[int]) -> Individual:
    """The group-magnitude solution (``prune_channels``' choice under "uniform")."""
    return [top_channels(group_scores(model, g, "magnitude", {}), k) for g, k in zip(groups, counts)]


def _initial(start: Individual, counts: list[int], gen: torch.Generator, *, perturb: bool) -> Individual:
    """A perturbed copy of ``start`` (a quarter of each group's kept channels swapped) or a
    uniformly random individual."""
    if perturb:
        return _mutate(start, 0.25, gen)
    return [_repair(torch.zeros(k.numel(), dtype=torch.bool), c, gen) for k, c in zip(start, counts)]


def _repair(keep: Tensor, count: int, gen: torch.Generator) -> Tensor:
    """Turn random bits on or off until exactly ``count`` are set. keep bool (size,)."""
    keep = keep.clone()
    on, off = keep.nonzero().flatten(), (~keep).nonzero().flatten()
    if len(on) > count:
        keep[on[torch.randperm(len(on), generator=gen)[: len(on) - count]]] = False
    elif len(on) < count:
        keep[off[torch.randperm(len(off), generator=gen)[: count - len(on)]]] = True
    return keep


def _crossover(a: Individual, b: Individual, counts: list[int], gen: torch.Generator) -> Individual:
    """Uniform crossover inside each group: every bit from either parent, then repaired."""
    child = []
    for ka, kb, c in zip(a, b, counts):
        pick = torch.rand(ka.numel(), generator=gen) < 0.5
        child.append(_repair(torch.where(pick, ka, kb), c, gen))
    return child


def _mutate(ind: Individual, rate: float, gen: torch.Generator) -> Individual:
    """Each kept channel swaps with a random dropped one with probability ``rate`` (counts kept)."""
    out = []
    for keep in ind:
        keep = keep.clone()
        on, off = keep.nonzero().flatten(), (~keep).nonzero().flatten()
        n = min(int((torch.rand(len(on), generator=gen) < rate).sum()), len(off))
        if n:
            keep[on[torch.randperm(len(on), generator=gen)[:n]]] = False
            keep[off[torch.randperm(len(off), generator=gen)[:n]]] = True
        out.append(keep)
    return out


def _select(fits: list[float], size: int, gen: torch.Generator) -> int:
    """Tournament selection: the fittest of ``size`` random individuals."""
    picks = torch.randint(len(fits), (size,), generator=gen).tolist()
    return max(picks, key=fits.__getitem__)


def _next_generation(
    pop: list[Individual],
    fits: list[float],
    counts: list[int],
    gen: torch.Generator,
    score,
    *,
    mutation: float,
    crossover: float,
    elite: int,
    tournament: int,
) -> tuple[list[Individual], list[float]]:
    order = sorted(range(len(pop)), key=lambda i: -fits[i])
    new_pop, new_fits = [pop[i] for i in order[:elite]], [fits[i] for i in order[:elite]]
    while len(new_pop) < len(pop):
        a = pop[_select(fits, tournament, gen)]
        if float(torch.rand((), generator=gen)) < crossover:
            a = _crossover(a, pop[_select(fits, tournament, gen)], counts, gen)
        child = _mutate(a, mutation, gen)
        new_pop.append(child)
        new_fits.append(score(child))
    return new_pop, new_fits


class _Scorer:
    """Fitness of individuals on fixed samples, through hooks on a working copy (eval mode);
    memoized, since elites and unchanged children recur."""

    def __init__(
        self,
        model: nn.Module,
        groups: list[ChannelGroup],
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        fitness: str,
        temperature: float,
    ) -> None:
        self.net, self.groups = copy.deepcopy(model).eval(), groups
        self.x, self.y, self.target, self.fitness, self.t = x, y, target, fitness, temperature
        self.vectors: dict[tuple[str, int], Tensor] = {}
        self.handles, self.cache = [], {}
        for gi, g in enumerate(groups):
            for c in (c for c in g.members if c.role == "out" and c.kind in ("linear", "conv", "bn")):
                mod = self.net.get_submodule(c.name)
                self.handles.append(mod.register_forward_hook(self._hook(c.name, gi, c.kind)))

    def _hook(self, name: str, gi: int, kind: str):
        def hook(_mod: nn.Module, _inp, out: Tensor) -> Tensor:
            v = self.vectors[(name, gi)].to(out.dtype)
            return out * (v if kind == "linear" else v.reshape(1, -1, *([1] * (out.dim() - 2))))

        return hook

    @torch.no_grad()
    def __call__(self, ind: Individual) -> float:
        key = b"".join(k.numpy().tobytes() for k in ind)
        if key not in self.cache:
            self._set(ind)
            self.cache[key] = self._fitness(self.net(self.x))
        return self.cache[key]

    def _set(self, ind: Individual) -> None:
        for gi, (g, keep) in enumerate(zip(self.groups, ind)):
            for c in (c for c in g.members if c.role == "out" and c.kind in ("linear", "conv", "bn")):
                mod = self.net.get_submodule(c.name)
                width = mod.num_features if c.kind == "bn" else mod.weight.shape[0]
                v = torch.ones(width)
                v[torch.tensor(c.idxs)] = keep[torch.tensor(c.root_idxs)].float()
                self.vectors[(c.name, gi)] = v.to(self.x.device)

    def _fitness(self, logits: Tensor) -> float:
        return fitness_value(logits, self.y, self.fitness, target=self.target, temperature=self.t)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def fitness_value(
    logits: Tensor, y: Tensor, fitness: str, *, target: Tensor | None = None, temperature: float = 4.0
) -> float:
    """Higher is better. logits, target (N, C); y (N,). "accuracy": the fraction right; "ce":
    −CE; "kd": −(CE + T²·KL(softmax(target/T) ‖ softmax(logits/T)))."""
    if fitness == "accuracy":
        return float((logits.argmax(1) == y).float().mean())
    loss = F.cross_entropy(logits, y)
    if fitness == "kd":
        t = temperature
        loss = loss + t * t * F.kl_div(
            F.log_softmax(logits / t, 1), F.log_softmax(target / t, 1), reduction="batchmean", log_target=True
        )
    return -float(loss)
