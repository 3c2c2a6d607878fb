"""bench/common.py's provenance: what every results JSON records of the checkout that ran it
(commit, dirty, tree, command). The tree hashes are checked in a throwaway git repository."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "common.py"
KEYS = ("commit", "dirty", "tree", "command")

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@pytest.fixture(scope="module")
def common():
    spec = importlib.util.spec_from_file_location("bench_common", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A fresh repository with one commit: a.txt and a .gitignore."""
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q")
    git(r, "config", "user.email", "bench@example.com")
    git(r, "config", "user.name", "bench")
    git(r, "config", "commit.gpgsign", "false")
    (r / "a.txt").write_text("one\n")
    (r / ".gitignore").write_text("*.log\n")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "first")
    return r


def test_machine_records_the_checkout_and_the_command(common):
    info = common.machine()
    assert set(KEYS) <= set(info) and {"torch", "python", "platform", "cpu"} <= set(info)
    assert info["command"].startswith("python ")
    if common.START["commit"] is not None:  # inside a git checkout, as in CI and development
        assert len(info["commit"]) == 40 and isinstance(info["dirty"], bool) and len(info["tree"]) == 40


@needs_git
def test_tree_is_heads_when_clean_and_changes_with_the_files(common, repo):
    clean = common.provenance(repo)
    assert clean == {
        "commit": git(repo, "rev-parse", "HEAD"),
        "dirty": False,
        "tree": git(repo, "rev-parse", "HEAD^{tree}"),
    }
    (repo / "debug.log").write_text("ignored\n")
    assert common.provenance(repo) == clean  # ignored files are not the code that ran
    results = repo / "bench" / "results"
    results.mkdir(parents=True)
    (results / "x.json").write_text("{}")  # what the benchmark writes itself
    assert common.provenance(repo) == clean

    (repo / "a.txt").write_text("two\n")  # a tracked file changed
    changed = common.provenance(repo)
    assert changed["dirty"] is True and changed["commit"] == clean["commit"] and changed["tree"] != clean["tree"]
    (repo / "a.txt").write_text("one\n")
    (repo / "new.py").write_text("x = 1\n")  # an untracked file
    untracked = common.provenance(repo)
    assert untracked["dirty"] is True and untracked["tree"] not in (clean["tree"], changed["tree"])

    assert git(repo, "diff", "--cached", "--name-only") == ""  # the repository's own index is untouched
    git(repo, "add", "-A", "--", ".", ":(exclude)bench/results")
    git(repo, "commit", "-q", "-m", "second")
    assert common.provenance(repo)["tree"] == untracked["tree"] == git(repo, "rev-parse", "HEAD^{tree}")


def test_outside_a_checkout_everything_is_unknown(common, tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # even if /tmp sits in a checkout
    assert common.provenance(tmp_path) == {"commit": None, "dirty": None, "tree": None}


def test_command_is_relative_to_the_checkout(common):
    script = str(BENCH.parent / "prune_fashion.py")
    cmd = common.command([script, "--merge", "prune_fashion_ft6", "--name", "a b"], BENCH.parents[1])
    assert cmd == "python bench/prune_fashion.py --merge prune_fashion_ft6 --name 'a b'"


def test_write_results_records_the_machine(common, tmp_path):
    path = common.write_results("demo", {"benchmark": "demo", "headline": {"x": 1.0}}, tmp_path / "results")
    data = json.loads(path.read_text())
    assert path == tmp_path / "results" / "demo.json" and data["headline"] == {"x": 1.0}
    assert set(KEYS) <= set(data["machine"])
    mine = {"commit": "c", "dirty": False, "tree": "t", "command": "python x"}
    kept = json.loads(common.write_results("demo", {"machine": mine}, tmp_path / "results").read_text())
    assert kept["machine"] == mine  # a block the benchmark put together itself is kept


def test_merged_files_keep_each_parts_machine(common):
    a, b = {"commit": "a" * 40}, {"commit": "b" * 40}
    assert common.parts_of(a, "base") == {"base": a}
    merged = common.merged_machine({**common.parts_of(a, "base"), **common.parts_of(b, "ft6")})
    assert merged["parts"] == {"base": a, "ft6": b} and set(KEYS) <= set(merged)
    assert common.parts_of(merged, "prune_fashion") == {"base": a, "ft6": b}  # merged again: not nested
