"""``search(recipe, trials=N)``: the whole search, as ``qaprune search`` runs it.

Prepare (check the space, open or create the study, dense baseline, sparsity bound), run the
workers until the study holds ``trials`` finished trials, then write the report and export the
Pareto-optimal recipes. Running it again with the same recipe resumes: finished trials are kept,
interrupted ones continue from their last checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qaprune.autosearch.bound import BOUND_ATTR, DENSE_ATTR, bound_rows, dense_baseline, sparsity_bound
from qaprune.autosearch.objectives import Context, SearchError, constraint_bounds
from qaprune.autosearch.report import export_recipes, pareto_rows, trial_rows, write_search_report
from qaprune.autosearch.space import check_space, model_layers, spec_of
from qaprune.autosearch.study import DEFAULT_HEARTBEAT, RECIPE_ATTR, open_storage, open_study, shown, storage_url
from qaprune.autosearch.workers import WorkerConfig, counts, run_workers, threads_per_worker, work
from qaprune.recipe import Recipe


@dataclass
class SearchResult:
    """Where the search lives and what it found (rows as in ``trials.json``)."""

    out: Path
    study_name: str
    storage: str
    trials: list[dict]
    pareto: list[dict]
    report: Path
    exported: list[Path] = field(default_factory=list)
    sparsity_bound: float | None = None
    dense: dict | None = None

    def load_study(self) -> Any:
        """The optuna study (e.g. for optuna.visualization)."""
        import optuna

        return optuna.load_study(study_name=self.study_name, storage=self.storage)


def search(
    recipe: Recipe | str | Path | dict,
    *,
    trials: int,
    workers: int = 1,
    storage: str | None = None,
    out: str | Path | None = None,
    data_dir: str | None = None,
    overrides: list[str] | None = None,
    study_name: str | None = None,
    export_best: str | Path | None = None,
    heartbeat: int = DEFAULT_HEARTBEAT,
    log: Callable[[str], None] | None = print,
) -> SearchResult:
    """Search the recipe's ``search.space`` until the study holds ``trials`` finished trials.

    ``workers`` processes on this machine share the study (more machines: the same call with
    one PostgreSQL ``storage``); ``out`` (default ``runs/<name>-search``) holds ``study.db``
    (default storage), ``trials/<n>/`` run directories and the report; ``export_best`` gets the
    Pareto-optimal recipes. ``log=None``: quiet. With ``workers > 1`` in a script, call it
    under ``if __name__ == "__main__":``, as any multiprocessing code (the workers import the
    main module).

    Example (a few seconds per trial on a CPU):
        >>> recipe = {"data": {"name": "digits"}, "train": {"epochs": 2},
        ...           "search": {"space": {"prune.sparsity": {"low": 0.5, "high": 0.9},
        ...                                "quant.weight_bits": {"choices": [4, 8]}}}}
        >>> r = search(recipe, trials=4, out="/tmp/qap-search", log=None)  # doctest: +SKIP
        >>> [row["params"] for row in r.pareto]                            # doctest: +SKIP
    """
    from qaprune.rundir import resolve_recipe

    recipe = resolve_recipe(recipe, overrides)
    quiet, log = log is None, log or (lambda _: None)
    if trials < 0 or workers < 1 or heartbeat < 1:
        raise SearchError(f"trials={trials} must be >= 0, workers={workers} >= 1, heartbeat={heartbeat} >= 1")
    out = Path(out) if out is not None else Path("runs") / f"{recipe.name}-search"
    name, url = study_name or recipe.name, storage_url(storage, out)
    study, st, ctx = prepare(recipe, out=out, url=url, name=name, data_dir=data_dir, heartbeat=heartbeat, log=log)
    cfg = dict(
        recipe=recipe.to_dict(),
        out=str(out),
        storage=url,
        study_name=name,
        trials=trials,
        data_dir=data_dir,
        heartbeat=heartbeat,
        layers=ctx.layers,
    )
    if counts(study)[0] < trials:
        log(f"search {name!r}: {trials} trials, {workers} worker(s), storage {shown(url)}")
        if workers == 1:
            work(WorkerConfig(**cfg), log=log)
        else:
            cfgs = [
                WorkerConfig(
                    **cfg, worker=i, quiet=quiet, threads=None if recipe.train.threads else threads_per_worker(workers)
                )
                for i in range(workers)
            ]
            _run_processes(cfgs, study, trials)
    return finish(study, st, ctx, name=name, url=url, export_best=export_best)


def prepare(
    recipe: Recipe, *, out: Path, url: str, name: str, data_dir: str | None, heartbeat: int, log: Callable[[str], None]
) -> tuple[Any, Any, Context]:
    """Check the space, open (or create) the study, run the dense baseline and the sparsity
    bound when the recipe asks for them; -> (study, storage, trial context)."""
    import optuna

    spec, layers = spec_of(recipe), model_layers(recipe, data_dir)
    check_space(recipe, layers)
    st = open_storage(url, heartbeat=heartbeat)
    if name not in optuna.study.get_all_study_names(storage=st) and any((out / "trials").glob("*")):
        raise SearchError(
            f"{out / 'trials'} holds runs of another search, but storage {shown(url)} has no study "
            f"{name!r}; choose another --out, or the storage that search used"
        )
    study = open_study(st, name, recipe)
    ctx = Context(recipe, spec, out, data_dir, log=log, layers=tuple(layers))
    ctx.dense = dense_baseline(study, ctx)
    ctx.bound = sparsity_bound(study, st, ctx, name)
    return study, st, ctx


def report_search(
    out: str | Path,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    export_best: str | Path | None = None,
    log: Callable[[str], None] | None = print,
) -> SearchResult:
    """Rewrite the report of the search directory ``out`` from its study, running no trial
    (``qaprune report SEARCH_DIR``): while workers still run, or after they stopped.
    ``storage`` defaults to ``OUT/study.db``; ``study_name`` may be left out when the storage
    holds one study."""
    import optuna

    out = Path(out)
    url = storage_url(storage, out)
    if storage is None and not (out / "study.db").is_file():
        raise SearchError(f"{out}: no study.db here; give the search directory, or --storage with the URL it used")
    st = open_storage(url, heartbeat=None)
    names = optuna.study.get_all_study_names(storage=st)
    if study_name is None and len(names) != 1:
        raise SearchError(
            f"storage {shown(url)} holds {len(names)} studies ({', '.join(names) or 'none'}); "
            "name one with --study-name"
        )
    name = study_name or names[0]
    if name not in names:
        raise SearchError(f"storage {shown(url)} has no study {name!r}; it holds: {', '.join(names) or 'none'}")
    study = optuna.load_study(study_name=name, storage=st)
    if RECIPE_ATTR not in study.user_attrs:
        raise SearchError(f"study {name!r} was not made by qaprune search (it has no recipe)")
    recipe = Recipe.model_validate(study.user_attrs[RECIPE_ATTR])
    keys = {k for t in study.get_trials(deepcopy=False) for k in t.params if k.startswith("layers.")}
    layers = sorted({k[len("layers.") :].rsplit(".", 1)[0] for k in keys})  # per_layer entries, as sampled
    ctx = Context(recipe, spec_of(recipe), out, log=log or (lambda _: None), layers=tuple(layers))
    return finish(study, st, ctx, name=name, url=url, export_best=export_best)


def _run_processes(cfgs: list[WorkerConfig], study: Any, trials: int) -> None:
    codes = run_workers(cfgs)
    bad = {c.worker: code for c, code in zip(cfgs, codes) if code != 0}
    if bad and counts(study)[0] < trials:
        raise SearchError(
            f"worker(s) {', '.join(f'{w} (exit code {c})' for w, c in bad.items())} stopped before "
            f"the study held {trials} finished trials (see their messages above); the study is "
            "intact: run the same command again to resume"
        )


def finish(
    study: Any, storage: Any, ctx: Context, *, name: str, url: str, export_best: str | Path | None = None
) -> SearchResult:
    """Write the report (and the exported recipes); -> the SearchResult."""
    attrs = study.user_attrs
    bounds = constraint_bounds(ctx.spec, attrs.get(DENSE_ATTR))
    rows = trial_rows(study, ctx.spec, bounds, ctx.space)
    pareto = pareto_rows(rows, ctx.spec)
    exported = export_recipes(pareto, ctx.base, export_best) if export_best is not None else []
    numbers = {r["number"]: p for r, p in zip(pareto, exported)}
    report = write_search_report(
        ctx.out,
        study,
        ctx.spec,
        bounds,
        dense=attrs.get(DENSE_ATTR),
        bound=attrs.get(BOUND_ATTR),
        bound_runs=bound_rows(storage, name),
        exported=numbers,
        space=ctx.space,
    )
    ctx.log(
        f"search {name!r}: {sum(r['state'] == 'COMPLETE' for r in rows)} complete trials, "
        f"{len(pareto)} Pareto-optimal; report {report}"
    )
    return SearchResult(
        ctx.out, name, url, rows, pareto, report, exported, attrs.get(BOUND_ATTR), attrs.get(DENSE_ATTR)
    )
