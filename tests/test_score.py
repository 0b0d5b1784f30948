"""`nst score` and `nst compare` from the command line, on pictures the tests draw: the score's anchors
hold, a stylised result scores as one, and the comparison runs every installed method onto one sheet."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_backbones import manifest_with
from test_zoo import files, home, states  # noqa: F401
from torch import nn
from torchvision.models import inception_v3

from engine.imaging import images

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
    # No Inception weights in this home: no SIFID, and the command says how to get it.
    assert result["sifid"] is None and "nst models pull inception_v3" in done.stderr


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


def test_a_fast_runs_time_keeps_two_figures() -> None:
    from engine.compare import seconds_text

    assert [seconds_text(t) for t in (0.0432, 0.5, 12.34)] == ["0.043 s", "0.5 s", "12.3 s"]


def _sifid_as_published(net: nn.Module, real: np.ndarray, fake: np.ndarray) -> float:
    """SIFID as SinGAN's SIFID/sifid_score.py defines it, in numpy: its two Inception blocks up to
    Conv2d_4a_3x3 (192 features), input scaled to [-1, 1], one feature vector per location, numpy's
    mean and covariance; the trace of (C1 C2)^1/2, which the authors take from scipy's sqrtm, from
    the eigenvalues of the product (scipy is not installed here)."""
    block0 = [net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3]
    block1 = [nn.MaxPool2d(kernel_size=3, stride=2), net.Conv2d_3b_1x1, net.Conv2d_4a_3x3]
    blocks = nn.Sequential(*block0, *block1)

    def statistics(picture: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            out = blocks(2 * images.to_tensor(picture) - 1).numpy()
        act = out.transpose(0, 2, 3, 1).reshape(-1, out.shape[1]).astype(np.float64)
        return act.mean(0), np.cov(act, rowvar=False)

    (m1, s1), (m2, s2) = statistics(real), statistics(fake)
    root_trace = np.sqrt(np.linalg.eigvals(s1 @ s2).real.clip(0)).sum()
    return float((m1 - m2) @ (m1 - m2) + np.trace(s1) + np.trace(s2) - 2 * root_trace)


def test_sifid_where_the_inception_weights_are_installed(
    pictures: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchvision's Inception v3 layout with random weights, imported as a user with the downloaded
    file would; `nst score` then gives each picture SIFID against the painting, as published."""
    photo, painting = pictures
    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=True, init_weights=True).eval()
    download = tmp_path / "download.pth"
    torch.save(net.state_dict(), download)
    prefix = hashlib.sha256(download.read_bytes()).hexdigest()[:8]
    # The shipped entry with this file's prefix in place of torchvision's.
    manifest_with(tmp_path, monkeypatch, {
        'file = "inception_v3_google-0cc3c7bd.pth"': f'file = "inception_v3_google-{prefix}.pth"',
        'sha256_prefix = "0cc3c7bd"': f'sha256_prefix = "{prefix}"',
    })  # fmt: skip
    home = tmp_path / "home"  # noqa: F811
    env = {"NST_MANIFEST": os.environ["NST_MANIFEST"]}
    imported = _nst(["models", "import", "inception_v3", download], tmp_path, home, env)
    assert imported.returncode == 0, imported.stderr

    done = _nst(["score", photo, painting, photo, painting, "--json"], tmp_path, home, env)
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)
    assert "SIFID" not in done.stderr
    # Scored at the photo's size (128 px long side here): the painting is enlarged to it first.
    side = max(np.asarray(Image.open(photo)).shape[:2])
    real = images.at_long_side(images.load_image(painting), side)
    expected = _sifid_as_published(net, real, images.load_image(photo))
    assert expected > 1e-3  # random weights still tell the two pictures apart
    assert scores[str(photo)]["sifid"] == pytest.approx(expected, rel=1e-3)
    assert abs(scores[str(painting)]["sifid"]) < 1e-6 * expected  # the painting against itself

    # Too small for two feature locations: no SIFID, said once, and the other numbers as ever.
    Image.open(photo).resize((16, 12)).save(tmp_path / "tiny.png")
    Image.open(photo).resize((300, 8)).save(tmp_path / "thin.png")
    small = _nst(["score", "tiny.png", painting, "tiny.png", "--json"], tmp_path, home, env)
    assert small.returncode == 0, small.stderr
    assert json.loads(small.stdout)["tiny.png"]["sifid"] is None and "under 23 px" in small.stderr
    thin = _nst(["score", photo, painting, "thin.png", "--json"], tmp_path, home, env)
    assert thin.returncode == 0, thin.stderr
    assert json.loads(thin.stdout)["thin.png"]["sifid"] is None

    # nst compare gives it too, on a line of its own under each picture of the sheet.
    run = ["--run", "gatys preset=draft iterations=2", "--size", "48", "--json"]
    compared = _nst(["compare", photo, painting, "-o", "sheet.png", *run], tmp_path, home, env)
    assert compared.returncode == 0, compared.stderr
    assert json.loads(compared.stdout)["runs"][0]["score"]["sifid"] > 0
    assert Image.open(tmp_path / "sheet.png").size == (3 * 336, 336 + 68)
