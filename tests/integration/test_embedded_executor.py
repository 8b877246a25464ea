"""The `sandbox` entry point of `mistral.executors`, used by code that embeds an executor."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import FIXTURES

pytestmark = pytest.mark.usefixtures("no_leaks")


def embedded(kind):
    p = subprocess.run([sys.executable, "-W", "ignore",
                        os.path.join(FIXTURES, "embedded_executor.py"), kind],
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=FIXTURES))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_get_executor_sandbox_runs_actions_in_the_sandbox():
    out = embedded("mistral_lib")
    assert out["error"] is None
    assert out["data"]["double"] == 8 and out["data"]["workflow"] == "embedded"
    assert out["data"]["pid"] != out["pid"]  # not in the embedding process
    api = embedded("api")
    assert (api["data"], api["error"]) == ("hello embedded from embedded", None)


def test_limits_hold_for_embedded_executions():
    out = embedded("hog")
    assert out["data"] is None and out["error"].startswith("memory_limit: "), out
