"""The benches end to end: every part runs, and the last line is the promised JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.compute.devices import gpu_name
from engine.training.loop import training_device

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


@pytest.mark.slow
def test_train_bench_times_both_sides_on_the_training_device(tmp_path: Path) -> None:
    """A step at a tiny size, on the photos the bench draws where the shared ones are missing: the
    reference and each engine path train on the device `nst train` uses, and the JSON names it."""
    out = tmp_path / "train.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train.py"), "--size", "64", "--batch", "2", "--steps", "1",
         "--warmup", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device"] == (gpu_name(training_device()) or "cpu")
    assert f"training on {result['device']}" in done.stdout
    assert result["reference_photos_per_s"] > 0
    for path in ("auto", "fp32") + (("fp32-winograd",) if result["device"] == "cpu" else ()):
        assert result[f"ours_{path}"]["photos_per_s"] > 0, path
