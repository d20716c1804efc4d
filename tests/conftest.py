"""Shared fixtures: an isolated cache (demo data, sample index) and offline Hugging Face."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("imlatent_cache")
    old = {k: os.environ.get(k) for k in ("IMLATENT_CACHE", "HF_HUB_OFFLINE")}
    os.environ["IMLATENT_CACHE"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield cache
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def demo_dir(_isolated_cache):
    from Engineering.data.demo import DemoSpec, write_demo

    return write_demo(Path(_isolated_cache) / "demo", DemoSpec())


def run_executor(script: str, *args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None):
    """Run an executor as users do; returns the CompletedProcess (text mode)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "Executors" / script), *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, env=full_env)
