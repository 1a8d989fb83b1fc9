"""``scripts/gpu_check.sh --device cpu --tiny`` end to end: the GPU check's code path on the CPU with tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import GOLDEN_WEIGHTS, REPO, require_fixture


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_with_tiny_sizes(tmp_path):
    require_fixture(GOLDEN_WEIGHTS["sd"])
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--device", "cpu", "--tiny", "--out", str(out),
           "--tests_k", "cpu and attend_and_excite"]  # fmt: skip
    env["PYTHON"] = sys.executable
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["tests"]["exit_code"] == 0 and "1 passed" in report["tests"]["summary"]
    whats = [r["what"] for r in report["rows"]]
    for part in ("plain", "A&E", "A&E + refinement", "SDPA attention", "explicit attention", "inversion 64px"):
        assert any(part in w for w in whats), part
    assert {r["precision"] for r in report["rows"]} == {"full", "bf16"}
    assert all(r.get("seconds", 1) > 0 and r.get("steps_per_s", 1) > 0 for r in report["rows"])
    assert "| sampling 32px, 4 steps: A&E + refinement | bf16 |" in result.stdout  # the printed table
