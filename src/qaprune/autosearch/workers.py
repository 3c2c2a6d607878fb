"""Workers: processes that take trials from one shared study until it holds ``trials`` finished
(complete or pruned) ones.

Any number of workers, on one machine (``--workers K``) or many (the same command against one
PostgreSQL URL), cooperate through the storage only. A worker that dies leaves its trial
RUNNING: on this machine its dead process id gives it away at once, elsewhere its heartbeat
stops; either way the trial is marked failed and queued again with the same parameters, and
the retry resumes its run directory from the last finished pruning round. A worker stopped by
Ctrl-C or SIGTERM queues its trial itself. At most ``workers - 1`` trials beyond ``trials``
may finish, when several workers start the last ones at once.

``--workers K`` forks its workers from a fork server that has already imported torch and the
rest of a trial's modules, so a worker starts in about a second instead of ten.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qaprune.autosearch.objectives import Context, SearchError, TrialObjective
from qaprune.autosearch.space import spec_of
from qaprune.autosearch.study import (
    DEFAULT_HEARTBEAT,
    MAX_RETRY,
    make_pruner,
    make_sampler,
    open_storage,
    open_study,
    worker_seed,
)
from qaprune.errors import QapruneError
from qaprune.recipe import Recipe

# Modules a trial imports on first use; the fork server imports them once for every worker.
PRELOAD = (
    "torch",
    "torch._dynamo",
    "sklearn.datasets",
    "sklearn.metrics",
    "scipy.stats",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "safetensors.torch",
    "optuna",
    "qaprune.runner",
    "qaprune.storage",
    "qaprune.report",
    "qaprune.models",
    "qaprune.data",
    "qaprune.metrics.efficiency",
    "qaprune.metrics.classification",
    "qaprune.autosearch.workers",
)
# Errors that fail one trial (a bad combination of choices, a diverged run) but not the worker.
CATCH = (QapruneError, RuntimeError, ValueError, FloatingPointError)


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker process needs (picklable plain data)."""

    recipe: dict
    out: str
    storage: str
    study_name: str
    trials: int
    data_dir: str | None = None
    heartbeat: int = DEFAULT_HEARTBEAT
    worker: int = 0
    quiet: bool = False
    max_failures: int = 3  # trials in a row that may fail before the worker gives up
    threads: int | None = None  # torch threads of this worker (None: torch's default)
    layers: tuple[str, ...] = ()  # the model's weight layers (for per_layer parameters)


def work(cfg: WorkerConfig, *, log: Callable[[str], None] = print) -> int:
    """Run trials of the study until it holds ``cfg.trials`` finished ones; -> trials run here."""
    import optuna

    recipe = Recipe.parse(cfg.recipe)
    spec = spec_of(recipe)
    study = open_study(open_storage(cfg.storage, heartbeat=cfg.heartbeat), cfg.study_name, recipe)
    attrs = study.user_attrs
    ctx = Context(
        recipe,
        spec,
        Path(cfg.out),
        cfg.data_dir,
        dense=attrs.get("dense_metrics"),
        bound=attrs.get("sparsity_bound"),
        log=log,
        layers=cfg.layers,
    )
    n = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(spec, seed=worker_seed(spec.seed, n, cfg.worker), constraints=ctx.constraints)
    study.pruner = make_pruner(spec)
    objective = TrialObjective(ctx)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return _loop(study, objective, cfg, log)
    except KeyboardInterrupt:
        requeue(study, objective.last, log=log)
        raise


def _loop(study: Any, objective: TrialObjective, cfg: WorkerConfig, log: Callable[[str], None]) -> int:
    import optuna

    ran = failures = 0
    poll = max(0.2, min(5.0, cfg.heartbeat / 4))
    while True:
        reap_dead_workers(study, log=log)
        done, running = counts(study)
        if done >= cfg.trials:
            return ran
        if done + running >= cfg.trials:  # the last trials run elsewhere: wait for them (or their death)
            time.sleep(poll)
            _fail_stale(study)
            continue
        study.optimize(objective, n_trials=1, catch=CATCH)
        ran += 1
        last = find_trial(study, objective.last)
        failed = last is not None and last.state == optuna.trial.TrialState.FAIL
        failures = failures + 1 if failed else 0
        if failures >= cfg.max_failures:
            reason = last.system_attrs.get("fail_reason", "see the log above") if last else "unknown"
            raise SearchError(f"{failures} trials in a row failed; the last one: {reason}")


def counts(study: Any) -> tuple[int, int]:
    """(finished: complete or pruned, running) trials of the study."""
    import optuna

    states = [t.state for t in study.get_trials(deepcopy=False)]
    S = optuna.trial.TrialState
    return sum(s in (S.COMPLETE, S.PRUNED) for s in states), sum(s == S.RUNNING for s in states)


def find_trial(study: Any, number: int | None) -> Any:
    if number is None:
        return None
    return next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)


def _fail_stale(study: Any) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _retry(study: Any, frozen: Any) -> None:
    import optuna

    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        cls(max_retry=MAX_RETRY, inherit_intermediate_values=True)(study, frozen)


def reap_dead_workers(study: Any, *, log: Callable[[str], None] = print) -> list[int]:
    """Fail and queue again the RUNNING trials of dead worker processes on this machine.
    (Uses the storage directly, as optuna's own ``fail_stale_trials`` does: the state change is
    atomic, so of two workers reaping the same trial only one queues it again.)"""
    import optuna

    host, reaped = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        w = t.user_attrs.get("worker") or {}
        if w.get("host") != host or w.get("trial") != t.number or alive(w.get("pid")):
            continue
        try:
            changed = study._storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            changed = False
        if changed:
            _retry(study, t)
            reaped.append(t.number)
            log(f"trial {t.number}: its worker (pid {w.get('pid')}) is gone; queued again")
    return reaped


def requeue(study: Any, number: int | None, *, log: Callable[[str], None] = print) -> None:
    """Queue an interrupted (failed) trial again, so that a resumed search continues it."""
    import optuna

    frozen = find_trial(study, number)
    if frozen is not None and frozen.state == optuna.trial.TrialState.FAIL:
        _retry(study, frozen)
        log(f"trial {number}: interrupted; queued again (run the same command to resume)")


def alive(pid: Any) -> bool:
    """Whether process ``pid`` runs on this machine (a zombie does not; unknown: assume it does)."""
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def worker_main(cfg: WorkerConfig) -> None:
    """Entry point of a worker process: exit code 0 done, 2 a qaprune error, 130 interrupted."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # terminated: queue the trial again, then stop
    signal.signal(signal.SIGINT, signal.default_int_handler)
    prefix = f"[worker {cfg.worker}]"

    def log(msg: str) -> None:
        if not cfg.quiet:
            print(f"{prefix} {msg}", file=sys.stderr, flush=True)

    if cfg.threads:  # K workers share the cores instead of each taking all of them
        import torch

        torch.set_num_threads(cfg.threads)
    try:
        work(cfg, log=log)
    except QapruneError as exc:
        print(f"{prefix} error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def start_workers(cfgs: list[WorkerConfig]) -> list[Any]:
    """Start one process per config (forked from a preloaded fork server where there is one)."""
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(list(PRELOAD))
    else:
        ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker_main, args=(c,), name=f"qaprune-search-{c.worker}") for c in cfgs]
    for p in procs:
        p.start()
    return procs


def threads_per_worker(workers: int) -> int:
    """This process's usable cores shared out among ``workers`` (at least one each)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // workers)


def run_workers(cfgs: list[WorkerConfig]) -> list[int]:
    """Start the workers and wait for all of them; -> their exit codes."""
    procs = start_workers(cfgs)
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:  # the workers got the same Ctrl-C: let them queue their trials
        for p in procs:
            p.join(timeout=60)
        raise
    return [p.exitcode for p in procs]
