"""Storage, studies, samplers and pruners.

Storage is any Optuna RDB URL: SQLite by default (``OUT/study.db``, one file), PostgreSQL or
MySQL for workers on many machines. Heartbeats mark the trials of dead workers failed and
queue them again. A study remembers the SHA-256 of its recipe and refuses any other recipe, so
a resumed search is the same search. Studies are plain Optuna studies (optuna-dashboard works).

Example:
    >>> from qaprune.recipe.search import SearchSpec
    >>> spec = SearchSpec(space={"quant.weight_bits": {"choices": [4, 8]}}, sampler="nsga2")
    >>> type(make_sampler(spec, seed=0, constraints=None)).__name__
    'NSGAIISampler'
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qaprune.autosearch.objectives import SearchError
from qaprune.autosearch.space import recipe_hash, spec_of
from qaprune.recipe import Recipe
from qaprune.recipe.search import SearchSpec

HASH_ATTR, RECIPE_ATTR = "qaprune_recipe_sha256", "qaprune_recipe"
DEFAULT_HEARTBEAT = 20  # seconds between heartbeats of a running trial
MAX_RETRY = 3  # a trial whose worker keeps dying is given up after this many retries
DRIVERS = {
    "postgresql": "psycopg2-binary (pip install psycopg2-binary)",
    "mysql": "PyMySQL (pip install pymysql) and write the URL as mysql+pymysql://...",
}


def storage_url(storage: str | None, out: Path) -> str:
    """``storage`` as given, or the SQLite file ``OUT/study.db``."""
    return storage or f"sqlite:///{(out / 'study.db').resolve()}"


def shown(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: nothing to hide
        return url


def open_storage(url: str, *, heartbeat: int | None = DEFAULT_HEARTBEAT) -> Any:
    """An ``optuna.storages.RDBStorage`` with heartbeats, or a SearchError saying why not."""
    import optuna
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise SearchError(
            f"--storage {url!r}: not a database URL; e.g. sqlite:///study.db or postgresql://user:password@host/db"
        ) from None
    kwargs = _engine_kwargs(parsed)
    for attempt in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, **_heartbeat_kwargs(heartbeat))
            except ImportError:
                hint = DRIVERS.get(parsed.get_backend_name(), "the SQLAlchemy driver of this database")
                raise SearchError(f"--storage {shown(url)}: the database driver is missing; install {hint}") from None
            except sqlalchemy.exc.SQLAlchemyError as exc:
                reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
                if "already exists" in reason and attempt < 2:  # another process created the tables first
                    time.sleep(1.0)
                    continue
                raise SearchError(f"--storage {shown(url)}: cannot open the database: {reason}") from None
    raise AssertionError("unreachable")


def _engine_kwargs(parsed: Any) -> dict[str, Any]:
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        return {"connect_args": {"timeout": 60}}  # wait for another worker's write, do not fail
    return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}


def _heartbeat_kwargs(heartbeat: int | None) -> dict[str, Any]:
    """Heartbeat options under this optuna's names (the stale-trial callback was renamed in 4.9)."""
    if not heartbeat:
        return {}
    import optuna

    retry = (
        getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    )
    params = inspect.signature(optuna.storages.RDBStorage).parameters
    name = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else "failed_trial_callback"
    return {
        "heartbeat_interval": heartbeat,
        "grace_period": 3 * heartbeat,
        name: retry(max_retry=MAX_RETRY, inherit_intermediate_values=True),
    }


def open_study(
    storage: Any,
    name: str,
    recipe: Recipe,
    *,
    directions: list[str] | None = None,
    metric_names: list[str] | None = None,
) -> Any:
    """Create or load study ``name`` (by default with the recipe's objectives); refuse it when
    it was made for another recipe."""
    import optuna

    spec = spec_of(recipe)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name, storage=storage, load_if_exists=True, directions=directions or spec.directions
    )
    digest, attrs = recipe_hash(recipe), study.user_attrs
    if HASH_ATTR not in attrs:
        if study.get_trials(deepcopy=False):
            raise SearchError(
                f"study {name!r} holds trials but was not made by qaprune search; "
                "choose another --study-name or storage"
            )
        study.set_user_attr(HASH_ATTR, digest)
        study.set_user_attr(RECIPE_ATTR, recipe.to_dict())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names or spec.metrics)
    elif attrs[HASH_ATTR] != digest:
        diff = differences(attrs.get(RECIPE_ATTR, {}), recipe.to_dict())
        raise SearchError(
            f"study {name!r} was made with a different recipe ({', '.join(diff) or 'sha256 differs'}); "
            "resume with the same recipe, or choose another --out / --study-name"
        )
    return study


def differences(a: Any, b: Any, prefix: str = "recipe") -> list[str]:
    """Paths where two plain-data recipes differ (at most 6)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            out += differences(a.get(key), b.get(key), f"{prefix}.{key}")
        return out[:6]
    return [] if a == b else [f"{prefix}: {a!r} -> {b!r}"]


def make_sampler(spec: SearchSpec, *, seed: int, constraints: Callable[[Any], Any] | None) -> Any:
    """TPE, Gaussian-process BO, NSGA-II or random, with the constraints where supported."""
    import optuna

    s = optuna.samplers
    startup = {} if spec.startup_trials is None else {"n_startup_trials": spec.startup_trials}
    old = not hasattr(optuna.trial.Trial, "set_constraint")  # optuna >= 5: trials set their own
    cons = {"constraints_func": constraints} if old and constraints is not None and spec.constraints else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if spec.sampler == "tpe":
            return s.TPESampler(seed=seed, **startup, **cons)
        if spec.sampler == "gp":
            return s.GPSampler(seed=seed, **startup, **cons)
        if spec.sampler == "nsga2":
            return s.NSGAIISampler(seed=seed, population_size=spec.population, **cons)
        return s.RandomSampler(seed=seed)


def make_pruner(spec: SearchSpec) -> Any:
    """The optuna pruner of ``search.pruner`` (threshold is applied by the trial itself)."""
    import optuna

    p = optuna.pruners
    if spec.pruner == "median":
        return p.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if spec.pruner == "hyperband":
        return p.HyperbandPruner(min_resource=1, reduction_factor=3)
    return p.NopPruner()


def worker_seed(seed: int, n_trials: int, worker: int) -> int:
    """A seed per (search seed, trials already in the study, worker): workers do not propose
    the same points, and a resumed search does not replay the first ones."""
    import numpy as np

    return int(np.random.SeedSequence([seed, n_trials, worker]).generate_state(1)[0])
