"""Compute paths: the choice measured once per machine and remembered, what overrides it, and each
reduced-precision path held to a stated tolerance against fp32, through the methods as users run them.

Tolerances, and what they mean to the eye:
- Feed-forward nets in bf16: a mean difference of at most 2/255 and 99% of values within 6/255 of
  the fp32 result. On 8-bit output that is a level or two on average and a few levels at most in
  the busiest texture, below what the eye tells apart in a stylised picture. (Random-weight nets
  measured 0.2-1.2 levels on average and 0.7-3.8 at the 99th percentile.)
- AdaIN through NNPACK's Winograd kernel (fp32): within 1e-4 of oneDNN's result at every value, the
  same sums in another order: no visible difference at all.
- Gatys in bf16: the result scores within 5% of the fp32 run's by the fp32 objective, and differs
  from it less than two fp32 runs with different seeds differ from each other: bf16 changes the
  picture less than the seed does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_zoo import ADAIN, CYCLEGAN, JOHNSON, files, home, image, run, states  # noqa: F401

from engine.backbones import load_backbone
from engine.compute import tune
from engine.errors import UserError
from engine.imaging import images
from engine.methods import gatys
from engine.methods.gatys.objective import for_scale
from engine.nets.ops import nnpack_usable

CPU = torch.device("cpu")


@pytest.fixture
def auto(nst_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The product's own choice, in a fresh data folder: nothing measured yet."""
    monkeypatch.delenv(tune.PRECISION_ENV, raising=False)
    monkeypatch.setattr(tune, "_memory", {})
    return nst_env


def test_the_fastest_path_is_measured_once_remembered_and_overridable(
    auto: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = {"fp32": 0.004, "fp32-winograd": 0.003, "bf16": 0.001}  # seconds per pass, made up
    calls: list[tuple[str, int]] = []

    def workload(path: tune.ComputePath, side: int) -> None:
        calls.append((path.name, side))
        end = time.perf_counter() + slow[path.name] * (side / 16) ** 2
        while time.perf_counter() < end:
            pass

    chosen = tune.choose("demo", CPU, 32 * 32, workload, (16, 32))
    assert chosen is tune.BF16
    names = {p.name for p in tune.candidates("demo")}
    assert {name for name, _ in calls} == names and {side for _, side in calls} == {16, 32}
    assert len(calls) == len(names) * 2 * (1 + tune.REPEATS)  # a warm-up and the timed runs, per side

    # Remembered in the data folder for this machine and torch: a new process measures nothing.
    saved = json.loads((Path(auto["NST_HOME"]) / tune.CACHE_NAME).read_text())
    (key,) = saved
    assert torch.__version__ in key and tune.machine()["capability"] in key
    monkeypatch.setattr(tune, "_memory", {})
    calls.clear()
    assert tune.choose("demo", CPU, 32 * 32, workload, (16, 32)) is tune.BF16 and not calls

    # The setting wins, then the environment; a bad environment value names itself and the fix.
    assert tune.choose("demo", CPU, 1, workload, (16,), "fp32") is tune.FP32
    monkeypatch.setenv(tune.PRECISION_ENV, "fp32")
    assert tune.choose("demo", CPU, 1, workload, (16,)) is tune.FP32
    monkeypatch.setenv(tune.PRECISION_ENV, "fp64")
    with pytest.raises(UserError, match=r"NST_PRECISION='fp64': choose one of auto, fp32"):
        tune.choose("demo", CPU, 1, workload, (16,))
    assert not calls

    # bf16 must win clearly: a tie goes to fp32, whose results are exact.
    record = {"sides": {"16": {"fp32": 1.0, "bf16": 0.99}}}
    assert tune.fastest(record, 16 * 16) is tune.FP32


def test_nst_info_shows_the_measured_choice(auto: dict[str, str]) -> None:
    tune.measure("demo", lambda path, side: None, (16,))
    out = subprocess.run(
        [sys.executable, "-m", "engine", "info", "--json"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    compute = json.loads(out.stdout)["compute"]
    assert compute["machine"]["torch"] == torch.__version__
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and "cpu family" in cpuinfo.read_text():  # x86 Linux: name the generation too
        text = cpuinfo.read_text()
        family = next(line for line in text.splitlines() if line.startswith("cpu family")).split(":")[1]
        assert f"(family {family.strip()}, model " in compute["machine"]["cpu"]
        assert ("avx512_bf16" in compute["machine"]["units"]) == (" avx512_bf16" in text)
    assert set(compute["measured"]["demo"]["sides"]["16"]["seconds"]) == {
        p.name for p in tune.candidates("demo")
    }
    assert compute["measured"]["demo"]["sides"]["16"]["chosen"] in tune.BY_NAME


@pytest.mark.parametrize("name", ["johnson", "adain", "cyclegan"])
def test_feed_forward_bf16_stays_within_a_few_grey_levels_of_fp32(name: str, home: Path) -> None:  # noqa: F811
    method = {"johnson": JOHNSON, "adain": ADAIN, "cyclegan": CYCLEGAN}[name]
    styles = [(image(96, 96, seed=11),)] if name == "adain" else []
    content = image(128, 160, seed=10)
    exact = run(method, content, styles, precision="fp32")
    reduced = run(method, content, styles, precision="bf16")
    difference = np.abs(exact - reduced)
    assert difference.mean() <= 2 / 255, difference.mean()
    assert np.quantile(difference, 0.99) <= 6 / 255, np.quantile(difference, 0.99)
    assert difference.max() > 0  # it did run in bf16


@pytest.mark.skipif(not nnpack_usable(), reason="NNPACK is not available in this torch or on this CPU")
def test_adain_through_the_winograd_kernel_matches_fp32(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    assert tune.WINOGRAD in tune.candidates("adain")  # measured where it can win, as a whole path
    styles = [(image(96, 96, seed=11),)]
    content = image(128, 160, seed=10)
    exact = run(ADAIN, content, styles, precision="fp32")
    monkeypatch.setenv(tune.PRECISION_ENV, "fp32-winograd")
    winograd = run(ADAIN, content, styles)
    difference = np.abs(exact - winograd)
    assert 0 < difference.max() <= 1e-4, difference.max()  # above 0: NNPACK did run


def _pictures() -> tuple[np.ndarray, np.ndarray]:
    """A photo-like content (gradients, a shape) and a striped style, made here."""
    yy, xx = np.mgrid[0:96, 0:128] / 128
    content = np.stack([xx, yy, 0.5 + 0.4 * np.sin(8 * xx) * np.cos(6 * yy)], -1).astype(np.float32)
    content[30:60, 40:80] = [0.9, 0.2, 0.1]
    sy, sx = np.mgrid[0:96, 0:96] / 96
    style = np.stack([0.5 + 0.5 * np.sin(40 * sx + 10 * sy), 0.5 + 0.5 * np.sin(25 * sy), 0.3 + 0 * sx], -1)
    return content, style.astype(np.float32)


@pytest.mark.usefixtures("one_torch_thread")
def test_gatys_in_bf16_scores_as_fp32_does_and_changes_the_picture_less_than_the_seed() -> None:
    from test_zoo import context

    content, style = _pictures()
    results = {}
    for precision, seed in (("fp32", 0), ("bf16", 0), ("fp32", 1)):
        settings = {"preset": "draft", "size": 128, "seed": seed, "precision": precision, "init": "noise"}
        results[precision, seed] = run(gatys.METHOD, content, [(style,)], context(), **settings)
    p = gatys.METHOD.parse_params({"preset": "draft", "size": 128})
    objective = for_scale(
        load_backbone(p["backbone"]), p, images.to_tensor(content), [images.to_tensor(style)], np.ones(1), []
    )
    with torch.no_grad():
        score = {key: float(objective(images.to_tensor(result))[0]) for key, result in results.items()}
    assert score["bf16", 0] <= 1.05 * score["fp32", 0], score
    by_precision = np.abs(results["bf16", 0] - results["fp32", 0]).mean()
    by_seed = np.abs(results["fp32", 1] - results["fp32", 0]).mean()
    assert 0 < by_precision < by_seed, (by_precision, by_seed)


def test_nst_tune_measures_every_installed_method_as_its_jobs_run_it(
    home: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`nst tune` runs each method's own measurement (smaller sides here, to keep the test short)."""
    from engine import cli
    from engine.nets import inference

    monkeypatch.delenv(tune.PRECISION_ENV)
    monkeypatch.setattr(tune, "_memory", {})
    monkeypatch.setattr(gatys, "TUNE_SIDES", (48, 96))
    monkeypatch.setattr(inference, "TUNE_SIDES", (48, 96))
    assert cli.main(["tune"]) == 0
    said = capsys.readouterr().out
    assert cli.main(["info", "--json"]) == 0  # in this process: the record is per thread count too
    info = capsys.readouterr()
    measured = json.loads(info.out)["compute"]["measured"]
    assert set(measured) == {"gatys/vgg16-hed", "johnson", "adain", "cyclegan"}, said
    for workload, record in measured.items():
        assert set(record["sides"]) == {"48", "96"}, workload
        for found in record["sides"].values():
            assert found["chosen"] in found["seconds"] and all(t > 0 for t in found["seconds"].values())
    assert "gatys/vgg16-hed at 96 px" in said  # the text report names each choice
