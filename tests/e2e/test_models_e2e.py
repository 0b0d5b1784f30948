"""Models from the dialog in real GIMP 3: the user picks a Johnson model that is not installed and
presses OK; the plug-in has the engine download it (a `pull` job) from an HTTP server on loopback,
then runs the transfer. A model whose download fails the checksum ends the run with the engine's
message and leaves the image as it was.

The served model is a fixed-seed TransformerNet saved as pytorch/examples saves its models
(bench/zoo.py), listed in a copy of the weights manifest with its sha256. The non-interactive
refusal of a missing model (the `nst models pull` hint) is test_methods_e2e's. Models trained
here with `nst train johnson` and `nst train adain` run from the same list, with nothing to download,
and Train Fast Style starts a training in the engine from a painting layer.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from gimp_harness import HERE, REPO, engine_env, install_plugin, run_gimp_batch, running_engine
from helpers import Files, drawn_scene, serve_files
from PIL import Image

pytestmark = pytest.mark.gimp


@pytest.fixture
def served(zoo: ModuleType) -> Iterator[tuple[str, dict[str, bytes], list[str]]]:
    """A loopback HTTP server: the mosaic model, and for udnie a Johnson model other than the one
    its sha256 says."""
    import torch

    def checkpoint(seed: int) -> bytes:
        buffer = io.BytesIO()
        torch.save(zoo.johnson_state_dict(zoo.johnson_model(seed=seed)), buffer)
        return buffer.getvalue()

    files = {"/mosaic.pth": checkpoint(3), "/udnie.pth": checkpoint(4)}
    requests: list[str] = []
    with serve_files(Files(files, requests=requests)) as url:
        yield url, files, requests


def _manifest(url: str, files: dict[str, bytes]) -> str:
    """The real manifest with mosaic and udnie served from `url` (the others stay in the bundle)."""
    text = (REPO / "weights" / "manifest.toml").read_text(encoding="utf-8")
    expected = {"mosaic": files["/mosaic.pth"], "udnie": b"the real udnie model"}
    for model, body in expected.items():
        old = f'archive = "fast_neural_style_zip"\nmember = "saved_models/{model}.pth"'
        sha = hashlib.sha256(body).hexdigest()
        new = f'urls = ["{url}/{model}.pth"]\nsha256 = "{sha}"\nsize = {len(files[f"/{model}.pth"])}'
        assert text.count(old) == 1, model
        text = text.replace(old, new)
    return text


def test_the_dialog_downloads_the_chosen_model_then_runs(
    gimp_chroot: Path,
    work: Path,
    served: tuple[str, dict[str, bytes], list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, files, requests = served
    manifest = work / "manifest.toml"
    manifest.write_text(_manifest(url, files), encoding="utf-8")
    monkeypatch.setenv("NST_MANIFEST", str(manifest))  # the engine started below inherits it
    with running_engine(work) as sock:
        install_plugin(work, {"python": "/nonexistent/python", "endpoint": f"unix:{sock}"})
        findings = run_gimp_batch(
            work, HERE / "batch_models.py", {"cases": [{"model": "udnie"}, {"model": "mosaic"}]}, gui=True
        )
    cases = findings["cases"]
    output = findings["gimp_output"]

    failed = cases["udnie"]
    assert failed["pressed"], output
    assert failed["status"] == "execution-error", (failed, output)
    assert failed["error"].startswith("Could not download the johnson model udnie: "), failed["error"]
    assert "which does not match the published" in failed["error"], failed["error"]
    assert failed["unchanged"] and failed["layers"] == ["Photo"]

    ok = cases["mosaic"]
    assert ok["pressed"], output
    assert ok["status"] == "success", (ok, output)
    assert ok["layers"] == ["Photo (mosaic, johnson)", "Photo"]
    assert ok["changed_pixels"] > 1000  # the random net repaints the layer

    installed = work / "home" / "weights" / "johnson_mosaic.pth"
    assert installed.read_bytes() == files["/mosaic.pth"]
    assert not (work / "home" / "weights" / "johnson_udnie.pth").exists()
    assert requests == ["/udnie.pth", "/mosaic.pth"]  # each downloaded once, by the engine
    log = (work / "home" / "engine.log").read_text()
    assert log.count("queued: 'pull' on 'download'") == 2, log


def _photos(folder: Path, seeds: range = range(3)) -> Path:
    """A folder of drawn photos to train on."""
    folder.mkdir()
    for i in seeds:
        Image.fromarray((drawn_scene(i, 64, 80) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def _train_here(work: Path, *words: object) -> None:
    """`nst train METHOD ...`: small fp32 steps (unless `words` say otherwise), into the engine's
    data directory."""
    trained = subprocess.run(
        [sys.executable, "-m", "engine", "train", *map(str, words[:1]), "--batch", "1", "--size", "64",
         "--lr", "0.01", "--precision", "fp32", "--validate-every", "0", *map(str, words[1:])],
        cwd=REPO, env=engine_env(work / "home"), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr


def _from_the_dialog(work: Path, cases: list[dict]) -> dict:
    """batch_models.py's cases against a real engine: each from the dialog, OK pressed."""
    with running_engine(work) as sock:
        install_plugin(work, {"python": "/nonexistent/python", "endpoint": f"unix:{sock}"})
        return run_gimp_batch(work, HERE / "batch_models.py", {"cases": cases}, gui=True)


def test_a_model_trained_here_runs_from_the_dialog(gimp_chroot: Path, work: Path) -> None:
    """`nst train johnson` (a few steps on drawn photos), then the dialog with that model: the
    engine's list offers it as installed, so OK runs it at once, with no download."""
    Image.fromarray((drawn_scene(50, 64, 64) * 255).astype(np.uint8)).save(work / "painting.png")
    _train_here(work, "johnson", "-o", "mine", "--style", work / "painting.png",
                "--content-dir", _photos(work / "photos"), "--steps", 2)  # fmt: skip
    findings = _from_the_dialog(work, [{"model": "mine"}])
    case = findings["cases"]["mine"]
    assert case["pressed"], findings["gimp_output"]
    assert case["status"] == "success", (case, findings["gimp_output"])
    assert case["layers"] == ["Photo (mine, johnson)", "Photo"]
    assert case["changed_pixels"] > 100
    log = (work / "home" / "engine.log").read_text()
    assert "'pull'" not in log, log  # installed: nothing to download


def test_a_decoder_trained_here_runs_from_the_dialog(gimp_chroot: Path, work: Path) -> None:
    """`nst train adain` (a few steps on drawn photos and paintings), then the dialog with AdaIN,
    that decoder and a layer as the painting: it runs with the published encoder and decoder not
    installed, and nothing is downloaded."""
    _train_here(work, "adain", "-o", "mine", "--style-dir", _photos(work / "paintings", range(60, 63)),
                "--content-dir", _photos(work / "photos"), "--steps", 2)  # fmt: skip
    findings = _from_the_dialog(work, [{"method": "adain", "model": "mine"}])
    case = findings["cases"]["mine"]
    assert case["pressed"], findings["gimp_output"]
    assert case["status"] == "success", (case, findings["gimp_output"])
    assert case["layers"] == ["Photo (Paint, adain)", "Photo", "Paint"]
    assert case["changed_pixels"] > 100
    log = (work / "home" / "engine.log").read_text()
    assert "'pull'" not in log, log  # installed: nothing to download


def test_a_mix_of_a_model_of_two_paintings_runs_from_the_dialog(gimp_chroot: Path, work: Path) -> None:
    """`nst train johnson` on two paintings, then the dialog with that model and Style mix set to
    the second painting alone: it runs, and makes another picture than a run with the first
    painting alone (non-interactive: an interactive run after a first one starts from GIMP's
    last-used values, not from the caller's)."""
    for name, seed in (("dawn", 50), ("dusk", 51)):
        picture = drawn_scene(seed, 64, 64)[..., [2, 0, 1] if name == "dusk" else [0, 1, 2]]
        Image.fromarray((picture * 255).astype(np.uint8)).save(work / f"{name}.png")
    _train_here(work, "johnson", "-o", "both", "--style", work / "dawn.png", "--style", work / "dusk.png",
                "--content-dir", _photos(work / "photos"), "--steps", 16, "--batch", 2)  # fmt: skip
    findings = _from_the_dialog(
        work,
        [
            {"model": "both", "mix": "dusk=1", "key": "dusk"},
            {"model": "both", "mix": "dawn=1", "key": "dawn", "interactive": False},
        ],
    )
    for name in ("dawn", "dusk"):
        case = findings["cases"][name]
        assert case["pressed"] and case["status"] == "success", (case["status"], findings["gimp_output"])
        assert case["layers"] == ["Photo (both, johnson)", "Photo"]
    dawn, dusk = (np.array(findings["cases"][name]["result"]) for name in ("dawn", "dusk"))
    assert np.abs(dawn - dusk).mean() > 1 / 255  # RGBA: the alpha is 1 in both


def test_train_fast_style_starts_a_training_that_outlives_gimp(gimp_chroot: Path, work: Path) -> None:
    """Filters > Artistic > Train Fast Style on a painting layer, from its dialog, with a folder of
    photos: OK returns at once with the image as it was, the engine trains on the layer's pixels
    after GIMP has quit, and installs the model under the layer's name as its painting. A missing
    name, a missing folder and a shipped model's name are refused with what to change."""
    photos = _photos(work / "photos")
    cases = [  # the dialog first: GIMP fills a later dialog with the last run's values
        {"name": "gimp_style", "photos": str(photos), "steps": 3, "interactive": True},
        {"name": "", "photos": str(photos)},
        {"name": "nofolder"},
        {"name": "candy", "photos": str(photos)},
    ]
    with running_engine(work) as sock:
        install_plugin(work, {"python": "/nonexistent/python", "endpoint": f"unix:{sock}"})
        findings = run_gimp_batch(work, HERE / "batch_train.py", {"cases": cases}, gui=True)
        started, unnamed, no_folder, shipped = findings["cases"]
        assert started["pressed"] and started["status"] == "success", (started, findings["gimp_output"])
        assert all(case["unchanged"] for case in findings["cases"])
        assert unnamed["status"] == "execution-error" and "Model name" in unnamed["error"]
        assert no_folder["status"] == "execution-error" and "Photos" in no_folder["error"]
        assert shipped["status"] == "execution-error" and "published model's name" in shipped["error"]
        model = work / "home" / "weights" / "johnson_gimp_style.pth"
        deadline = time.monotonic() + 300
        while not model.is_file():  # GIMP has quit; the engine goes on
            assert time.monotonic() < deadline, (work / "home" / "engine.log").read_text()[-2000:]
            time.sleep(1)
    provenance = json.loads((work / "home" / "weights" / "trained.json").read_text())["johnson_gimp_style"]
    assert provenance["styles"] == ["Blue_waves"] and provenance["steps"] == 3
