"""bench/gatys.py --quick end to end: every part runs, and its last line is the promised JSON."""

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
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["quick"] is True
    for key in ("step_ratio_512", "ttr_reference_s", "ttr_ours_s", "balanced_1024_s"):
        assert isinstance(result[key], float) and result[key] > 0, key
