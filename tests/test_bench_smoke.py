"""The benches end to end: every part runs, and the last line is the promised JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "images"


@pytest.mark.slow
@pytest.mark.skipif(not (IMAGES / "content").is_dir(), reason="needs the shared content and style images")
def test_gatys_bench_quick_prints_one_json_line() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gatys.py"), "--quick"],
        capture_output=True, text=True, timeout=600, check=False,  # a smoke test, not a timing: loaded CI
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["quick"] is True
    for key in ("step_ratio_512", "ttr_reference_s", "balanced_1024_s"):
        assert isinstance(result[key], float) and result[key] > 0, key
    presets = result["ttr_presets"]
    assert set(presets) == {"draft", "balanced", "best"}
    for name, row in presets.items():  # each preset ran, was judged by the reference objective, and raced
        assert row["seconds"] > 0 and row["loss"] > 0 and row["ratio"] > 0, name
        assert row["style_ratio"] > 0 and 0 <= row["score"]["style"] < 2, name


@pytest.mark.slow
def test_zoo_bench_runs_both_sides_and_they_agree() -> None:
    """One round at a tiny size: every reference and engine process runs, and their outputs match."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "zoo.py"), "--sizes", "32", "--rounds", "1", "--reps", "1"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])["results"]
    assert set(results) >= {"cpu:johnson@32", "cpu:adain@32", "cpu:cyclegan@32"}
    for case, row in results.items():
        assert row["max_abs_diff"] <= 1e-4, case
        assert row["ref_s"] > 0 and row["ours_s"] > 0, case
