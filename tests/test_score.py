"""`nst score` and `nst compare` from the command line, on pictures the tests draw: the score's anchors
hold, a stylised result scores as one, and the comparison runs every installed method onto one sheet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_zoo import files, home, states  # noqa: F401

# A Gatys result must keep at least this much of the photo's outlines (edge correlation at a quarter
# of the size): with every default, the drawn street below scores about 0.47 and the painting 0.2.
# The houses stay recognisable at 0.47; a drawing of one flat house that the style had wiped out
# scored 0.09.
EDGE_FLOOR = 0.35


def _photo(path: Path) -> None:
    """A street: sky, a row of houses with roofs and windows, a road; shading and grain."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:96, 0:128] / 96
    picture = np.stack([0.55 + 0.3 * y, 0.7 + 0.2 * y, 0.95 - 0.2 * y], -1)
    picture[y > 0.78] = (0.35, 0.35, 0.38)
    walls = [(0.8, 0.5, 0.35), (0.9, 0.85, 0.7), (0.55, 0.6, 0.7)]
    for i, left in enumerate((0.05, 0.35, 0.65, 0.95)):
        top = 0.3 + 0.08 * (i % 3)
        wall = (x > left) & (x < left + 0.24) & (y > top) & (y < 0.78)
        picture[wall] = np.array(walls[i % 3]) * (0.85 + 0.15 * x[wall, None] * 0.75)
        picture[(y < top) & (y > top - 0.12) & (np.abs(x - left - 0.12) < y - top + 0.12)] = (0.45, 0.2, 0.15)
        for dx in (0.04, 0.14):
            for dy in (0.08, 0.24):
                window = (x > left + dx) & (x < left + dx + 0.06) & (y > top + dy) & (y < top + dy + 0.08)
                picture[window] = (0.15, 0.2, 0.3)
    picture += rng.normal(0, 0.03, picture.shape)
    Image.fromarray((np.clip(picture, 0, 1) * 255).astype(np.uint8)).save(path)


def _painting(path: Path) -> None:
    """Wavy strokes in three strong colours, nothing like the photo's shapes."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:96, 0:96] / 96
    wave = np.sin(25 * (x + 0.6 * y) + 3 * np.sin(7 * y))
    colours = np.array([(0.1, 0.2, 0.6), (0.95, 0.75, 0.15), (0.8, 0.25, 0.1)])
    picture = colours[np.clip(((wave + 1) / 2 * 3).astype(int), 0, 2)] + rng.normal(0, 0.05, (96, 96, 3))
    Image.fromarray((np.clip(picture, 0, 1) * 255).astype(np.uint8)).save(path)


def _nst(
    words: list[str],
    cwd: Path,
    home: Path,  # noqa: F811
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, words)],
        cwd=cwd, env={**os.environ, "NST_HOME": str(home), **(env or {})}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


@pytest.fixture
def pictures(tmp_path: Path) -> tuple[Path, Path]:
    _photo(tmp_path / "photo.png")
    _painting(tmp_path / "painting.png")
    return tmp_path / "photo.png", tmp_path / "painting.png"


def test_score_anchors_and_a_stylised_result(pictures: tuple[Path, Path], tmp_path: Path, home: Path) -> None:  # noqa: F811
    photo, painting = pictures
    made = _nst(["stylize", photo, "-s", painting, "-o", "result.png"], tmp_path, home)  # every default
    assert made.returncode == 0, made.stderr
    done = _nst(["score", photo, painting, "result.png", photo, painting, "--json"], tmp_path, home)
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)
    as_photo, as_painting, result = scores[str(photo)], scores[str(painting)], scores["result.png"]
    assert as_photo["style"] == pytest.approx(1.0) and as_photo["colour"] == pytest.approx(1.0)
    assert as_photo["content"] == pytest.approx(0.0) and as_photo["edges"] == pytest.approx(1.0)
    assert set(as_photo["style_layers"]) == {"relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"}
    assert as_painting["style"] < 0.01 and as_painting["colour"] < 0.01
    assert as_painting["edges"] < EDGE_FLOOR and as_painting["content"] > 1
    # The photo scores exactly 1: a method that handed it back unchanged fails the first check.
    assert result["style"] < 0.8, result
    assert result["colour"] < 0.8, result
    assert result["edges"] >= EDGE_FLOOR, result


def test_score_takes_grey_and_transparent_pictures(
    pictures: tuple[Path, Path],
    tmp_path: Path,
    home: Path,  # noqa: F811
) -> None:
    photo, painting = pictures
    Image.open(painting).convert("L").save(tmp_path / "grey.png")
    Image.open(photo).convert("RGBA").save(tmp_path / "clear.png")
    done = _nst(["score", "clear.png", "grey.png", "grey.png", "clear.png", "--json"], tmp_path, home)
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)
    assert scores["grey.png"]["style"] < 0.01 and scores["clear.png"]["style"] == pytest.approx(1.0)


def test_score_names_an_unreadable_picture(pictures: tuple[Path, Path], tmp_path: Path, home: Path) -> None:  # noqa: F811
    photo, painting = pictures
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    done = _nst(["score", photo, painting, "broken.png"], tmp_path, home)
    assert done.returncode == 2 and "broken.png" in done.stderr and "Traceback" not in done.stderr


def test_compare_runs_every_installed_method_onto_one_sheet(
    pictures: tuple[Path, Path],
    tmp_path: Path,
    home: Path,  # noqa: F811
) -> None:
    photo, painting = pictures
    done = _nst(["compare", photo, painting, "-o", "sheet.png", "--size", "64", "--json"], tmp_path, home)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    labels = [row["label"] for row in report["runs"]]
    assert labels == [
        "gatys preset=draft", "gatys preset=balanced", "johnson model=candy", "adain model=published",
        "cyclegan model=style_monet",
    ]  # fmt: skip
    for row in report["runs"]:
        assert row["seconds"] > 0 and 0 <= row["score"]["style"] < 10, row
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.size == (4 * 336, 2 * (336 + 51))  # photo, painting and five results, four to a row
    cells = np.asarray(sheet.convert("RGB"), dtype=np.float32)
    assert cells[8:328, 344 + 8 : 344 + 300].std() > 10  # the painting's cell holds a picture
    plot = Image.open(tmp_path / "sheet-plot.png")
    assert plot.size[0] > 300 and np.asarray(plot.convert("L")).std() > 5


def test_compare_takes_labelled_runs_and_refuses_what_it_cannot_do(
    pictures: tuple[Path, Path],
    tmp_path: Path,
    home: Path,  # noqa: F811
) -> None:
    photo, painting = pictures
    runs = ["--run", "gatys preset=draft iterations=2 'label=Two steps'", "--run", "gatys iterations=4"]
    # An engine environment without matplotlib (the default install): a package that fails to import.
    (tmp_path / "blocked" / "matplotlib").mkdir(parents=True)
    (tmp_path / "blocked" / "matplotlib" / "__init__.py").write_text("raise ImportError('not installed')\n")
    without = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "blocked"), os.environ.get("PYTHONPATH", "")])}
    done = _nst(
        ["compare", photo, painting, "-o", "sheet.png", "--size", "48", *runs], tmp_path, home, without
    )
    assert done.returncode == 0, done.stderr
    assert "Two steps" in done.stdout and "gatys iterations=4" in done.stdout
    assert Image.open(tmp_path / "sheet.png").size == (4 * 336, 336 + 51)
    assert "no plot without matplotlib" in done.stderr and "-m pip install matplotlib" in done.stderr
    assert not (tmp_path / "sheet-plot.png").exists()
    again = _nst(["compare", photo, painting, "-o", "sheet.png", *runs], tmp_path, home)
    assert again.returncode == 2 and "sheet.png exists" in again.stderr
    for bad, said in [
        (["--run", "pointillism"], "must start with a method"),
        (["--run", "gatys iterations"], "expected KEY=VALUE"),
        (["--run", "gatys sharpness=3"], "unknown setting 'sharpness'"),
        (["--size", "0"], "setting 'size'"),
    ]:
        done = _nst(["compare", photo, painting, "-o", "other.png", *bad], tmp_path, home)
        assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "other.png").exists()
