"""Worker processes: two on one SQLite file, two on a real PostgreSQL server (when installed),
and a killed or terminated worker whose trial is retried from its last checkpoint."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from glob import glob
from pathlib import Path

import optuna
import pytest
from conftest import make_recipe

from qaprune.autosearch import search
from qaprune.autosearch.api import prepare
from qaprune.autosearch.study import storage_url
from qaprune.autosearch.workers import WorkerConfig, alive, reap_dead_workers, start_workers
from qaprune.recipe import Recipe

WAIT = 180.0  # seconds: generous, the first worker waits for the fork server's imports


def _pg_tool(name: str) -> str | None:
    return shutil.which(name) or next(iter(sorted(glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on a free local port (skipped when none is installed)."""
    pytest.importorskip("psycopg2", reason="no PostgreSQL driver (pip install psycopg2-binary)")
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("no PostgreSQL server installed (initdb, pg_ctl)")
    user = None
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            user = pwd.getpwnam("postgres").pw_name
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
    data, port = Path(tempfile.mkdtemp(prefix="qaprune-pg-")), _free_port()
    if user:
        shutil.chown(data, user)

    def pg(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, user=user, cwd=data, timeout=120)

    pg(initdb, "-D", str(data / "db"), "-U", "qaprune", "--auth=trust", "-N")
    pg(
        pg_ctl,
        "-D",
        str(data / "db"),
        "-l",
        str(data / "log"),
        "-w",
        "-o",
        f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
        "start",
    )
    yield f"postgresql+psycopg2://qaprune@127.0.0.1:{port}/postgres"
    pg(pg_ctl, "-D", str(data / "db"), "-m", "immediate", "stop")
    shutil.rmtree(data, ignore_errors=True)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_worker_processes_share_one_study(tmp_path, request, backend):
    storage = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    res = search(make_recipe(), trials=4, workers=2, storage=storage, out=tmp_path, heartbeat=2, log=None)
    states = [r["state"] for r in res.trials]
    assert set(states) == {"COMPLETE"} and 4 <= len(states) <= 5  # at most workers - 1 extra
    pids = {t.user_attrs["worker"]["pid"] for t in res.load_study().trials}
    assert len(pids) == 2 and os.getpid() not in pids
    assert (tmp_path / "study.db").is_file() == (backend == "sqlite")
    assert all((tmp_path / r["run_dir"] / "results.json").is_file() for r in res.trials)


def _wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _start_and_stop(recipe: Recipe, out: Path, trials: int, number: int, sig: int) -> int:
    """Start one worker, send it ``sig`` once trial ``number`` has checkpointed its first
    round; -> the worker's exit code."""
    cfg = WorkerConfig(
        recipe=recipe.to_dict(),
        out=str(out),
        storage=storage_url(None, out),
        study_name="s",
        trials=trials,
        heartbeat=1,
        quiet=True,
    )
    [proc] = start_workers([cfg])
    _wait_for(
        lambda: (out / f"trials/{number}/checkpoints/state.json").is_file() or not proc.is_alive(),
        f"trial {number}'s first checkpoint",
    )
    os.kill(proc.pid, sig)
    proc.join(WAIT)
    return proc.exitcode


def test_killed_and_terminated_workers_are_resumed_from_their_checkpoints(tmp_path):
    recipe = Recipe.parse(make_recipe(space={"prune.sparsity": {"low": 0.6, "high": 0.8}}))
    recipe = recipe.override(["prune.schedule=iterative", "prune.rate=0.2", "train.epochs=2"])  # 4-5 rounds
    prepare(
        recipe, out=tmp_path, url=storage_url(None, tmp_path), name="s", data_dir=None, heartbeat=1, log=lambda m: None
    )
    first = tmp_path / "trials/0/checkpoints/step_000.safetensors"
    assert _start_and_stop(recipe, tmp_path, 1, 0, signal.SIGKILL) == -signal.SIGKILL
    stamp = first.stat().st_mtime_ns
    study = optuna.load_study(study_name="s", storage=storage_url(None, tmp_path))
    [running] = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    worker = {**running.user_attrs["worker"], "host": "another-machine"}  # only its heartbeat can tell
    study._storage.set_trial_user_attr(running._trial_id, "worker", worker)
    logs: list[str] = []
    search(recipe, trials=1, out=tmp_path, heartbeat=1, log=logs.append)  # resume
    steps = [int(m.split()[3].rstrip(":")) for m in logs if m.startswith("trial 1: step ")]
    assert steps and steps[0] >= 1  # the retry continued after the checkpointed rounds
    assert first.stat().st_mtime_ns == stamp

    assert _start_and_stop(recipe, tmp_path, 2, 2, signal.SIGTERM) == 130  # queues its trial itself
    res = search(recipe, trials=2, out=tmp_path, heartbeat=1, log=None)
    study = res.load_study()
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "FAIL", "COMPLETE"]
    assert [t.system_attrs.get("failed_trial") for t in study.trials] == [None, 0, None, 2]
    assert [t.user_attrs["run_dir"] for t in study.trials] == ["trials/0", "trials/0", "trials/2", "trials/2"]
    for t in study.trials[1::2]:  # each retried run went through every round once
        history = json.loads((tmp_path / t.user_attrs["run_dir"] / "results.json").read_text())["history"]
        assert [h["step"] for h in history] == list(range(len(history))) and len(history) >= 4
        assert t.params == study.trials[t.number - 1].params


def test_trials_of_dead_local_workers_are_queued_again_at_once(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'x.db'}", study_name="x")
    gone = subprocess.Popen(["true"])
    gone.wait()
    mine, theirs = study.ask(), study.ask()
    for trial, pid, host in ((mine, gone.pid, socket.gethostname()), (theirs, gone.pid, "another-machine")):
        trial.suggest_float("x", 0, 1)
        trial.set_user_attr("worker", {"host": host, "pid": pid, "trial": trial.number})
    logs: list[str] = []
    assert reap_dead_workers(study, log=logs.append) == [0] and "pid" in logs[0]
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "RUNNING", "WAITING"] and study.trials[2].params == study.trials[0].params
    assert reap_dead_workers(study) == [] and alive(os.getpid()) and not alive(gone.pid)
