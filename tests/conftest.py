"""Shared test set-up: qaprune's cache (the dense references of runs) in a folder of the
session, never in the user's home; worker processes started by tests inherit it."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _qaprune_cache(tmp_path_factory: pytest.TempPathFactory):
    before = os.environ.get("QAPRUNE_CACHE")
    os.environ["QAPRUNE_CACHE"] = str(tmp_path_factory.mktemp("qaprune-cache"))
    yield
    if before is None:
        os.environ.pop("QAPRUNE_CACHE", None)
    else:
        os.environ["QAPRUNE_CACHE"] = before
