"""`nst stylize` never destroys a file of the user's: not an input, not an existing output, not
on a failed write; and a result with alpha reaches a format without alpha."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.errors import UserError
from engine.imaging import images

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--size", "16", "--iterations", "1", "--optimizer", "adam", "--device", "cpu"]


def _nst(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NST_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "engine", "stylize", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    paths = {"photo": tmp_path / "photo.png", "style": tmp_path / "style.png", "out": tmp_path / "out.png"}
    Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), "RGBA").save(paths["photo"])
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(paths["style"])
    paths["out"].write_bytes(b"the user's earlier result")
    return paths


def test_an_input_or_an_existing_output_is_kept_without_force(files: dict[str, Path], tmp_path: Path) -> None:
    photo = files["photo"].read_bytes()
    done = _nst(tmp_path, str(files["photo"]), "-s", str(files["style"]), "-o", str(files["photo"]), *QUICK)
    assert done.returncode == 2 and "is one of the inputs" in done.stderr and "--force" in done.stderr
    assert files["photo"].read_bytes() == photo

    done = _nst(tmp_path, str(files["photo"]), "-s", str(files["style"]), "-o", str(files["out"]), *QUICK)
    assert done.returncode == 2 and "exists" in done.stderr, done.stderr
    assert files["out"].read_bytes() == b"the user's earlier result"

    args = [str(files["photo"]), "-s", str(files["style"]), "-o", str(files["out"]), *QUICK, "--force"]
    done = _nst(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    assert images.load_image(files["out"]).shape == (16, 16, 4)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_a_result_with_alpha_is_written_as_jpeg(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.jpg"
    done = _nst(tmp_path, str(files["photo"]), "-s", str(files["style"]), "-o", str(out), *QUICK)
    assert done.returncode == 0, done.stderr
    with Image.open(out) as written:
        assert (written.format, written.mode, written.size) == ("JPEG", "RGB", (16, 16))


def test_an_unknown_extension_is_refused_before_any_work(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.result"
    done = _nst(tmp_path, str(files["photo"]), "-s", str(files["style"]), "-o", str(out), *QUICK)
    assert done.returncode == 2 and "out.result" in done.stderr and not out.exists()


def test_a_failed_write_leaves_the_existing_file_whole(tmp_path: Path) -> None:
    out = tmp_path / "out.jpg"
    out.write_bytes(b"an earlier picture")
    grey16 = np.full((8, 8, 1), 0.5, np.float32)
    with pytest.raises(UserError, match="cannot write"):
        images.save_image(out, grey16, bits=16)  # JPEG holds no 16-bit grey
    assert out.read_bytes() == b"an earlier picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jpg"]


def test_an_input_that_would_be_ignored_or_stretched_is_refused(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """One line naming the input and the fix, before any work, instead of a result that silently
    left a style out or stretched a mask over the wrong part of the photo."""
    photo, style = str(files["photo"]), str(files["style"])
    out_new = str(tmp_path / "new.png")
    done = _nst(tmp_path, photo, "--method", "johnson", "-s", style, "-o", out_new)
    assert done.returncode == 2 and "takes no style image (-s)" in done.stderr and "--model" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr

    portrait = tmp_path / "portrait.png"
    Image.fromarray(np.full((24, 12), 255, np.uint8)).save(portrait)  # the photo is 16x16
    for flag in ("--mask", "--content-map"):
        done = _nst(tmp_path, photo, "-s", style, flag, str(portrait), "-o", out_new, *QUICK)
        assert done.returncode == 2 and f"{flag} {portrait} is 12x24 px and the photo 16x16 px" in done.stderr
    done = _nst(tmp_path, photo, "--region", f"{portrait}={style}", "-o", out_new, *QUICK)
    assert done.returncode == 2 and "the --region mask" in done.stderr and "photo's shape" in done.stderr

    square = tmp_path / "map.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(square)  # the style is 16x16
    maps = ["--content-map", style, "--style-map", str(square)]
    done = _nst(tmp_path, photo, "-s", style, *maps, "-o", out_new, *QUICK)
    assert done.returncode == 2 and "is 8x8 px and that style image 16x16 px" in done.stderr, done.stderr
    assert not Path(out_new).exists() and files["out"].read_bytes() == b"the user's earlier result"
