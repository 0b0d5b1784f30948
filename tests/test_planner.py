"""The memory planner: tile sizes that fit the memory, the retry path when memory runs
out for real, and `nst stylize --dry-run`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import planner
from engine.compute import devices
from engine.errors import UserError
from engine.methods.adain import METHOD as ADAIN
from engine.methods.johnson import METHOD as JOHNSON

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
GIB = 1 << 30
BIG = (8192, 8192)


def plan_with_room(room: int, size: tuple[int, int] = BIG, method=JOHNSON, **settings) -> planner.Plan:
    """A plan for `size` when the job may use `room` more bytes than this process holds now."""
    limit = devices.used_memory(CPU) + room
    return planner.plan(method, method.parse_params(settings), size, CPU, limit)


@pytest.fixture
def roomy() -> None:
    """The `memory` setting only lowers the budget below the free memory: these need enough free."""
    if devices.free_memory(CPU) * planner.HEADROOM < 3.5 * GIB:
        pytest.skip("this machine has less than 4.4 GiB free")


def test_less_memory_gives_smaller_tiles_that_fit(roomy: None) -> None:
    plans = [plan_with_room(room) for room in (3 * GIB, 1.5 * GIB, GIB)]
    tiles = [p.tile for p in plans]
    assert tiles == sorted(tiles, reverse=True) and len(set(tiles)) == 3, tiles
    for p in plans:
        assert p.need <= p.budget
        assert p.tile % 4 == 0 and len(p.tiles()) > 1
    assert "tiles of 512 px" in plans[-1].describe() and "crops of 256 px" in plans[-1].describe()
    # AdaIN needs more memory per pixel than Johnson: with the same room, its tiles are no larger
    assert plan_with_room(1.5 * GIB, method=ADAIN).tile <= plans[1].tile


def test_one_pass_when_it_fits_and_a_clear_error_when_nothing_does(roomy: None) -> None:
    small = plan_with_room(GIB, (300, 400))
    assert small.tile is None and small.tiles() == [] and "in one pass" in small.describe()
    with pytest.raises(UserError) as err:
        plan_with_room(600 << 20)  # the 8192 px result alone is 768 MiB
    assert err.value.code == "out-of-memory" and "--size" in err.value.message


def test_a_forced_tile_is_checked_and_used(roomy: None) -> None:
    forced = plan_with_room(GIB, (300, 400), tile=258)
    assert forced.tile == 256  # down to the net's multiple
    assert "tiles of 256 px" in forced.describe()
    with pytest.raises(UserError, match="at least"):
        plan_with_room(GIB, (300, 400), tile=100)  # smaller than two halos
    with pytest.raises(UserError, match="tile"):
        JOHNSON.parse_params({"tile": "big"})


def test_after_running_out_the_retry_takes_half_the_memory_then_gives_up(roomy: None) -> None:
    current = plan_with_room(3 * GIB)
    seen = []
    while current is not None:
        seen.append(current)
        current = planner.shrink(current)
    sides = [p.tile for p in seen]
    assert sides == sorted(sides, reverse=True) and len(set(sides)) == len(sides) and sides[-1] == 256
    assert seen[-1].stats_pixels < seen[0].stats_pixels  # the statistics sample shrinks too


def test_a_gpu_plan_falls_back_to_the_cpu() -> None:
    fp = JOHNSON.footprint(JOHNSON.parse_params({}), BIG)
    need = fp.fixed_bytes + int(fp.bytes_per_pixel * 256 * 256)  # on a GPU, the result stays in host memory
    smallest = planner.Plan("johnson", torch.device("cuda"), BIG, 256, fp, need, need)
    fallback = planner.shrink(smallest)
    assert fallback is not None and fallback.device.type == "cpu"
    assert fallback.describe().startswith("johnson on cpu")


# --- for real: the command line, and an allocation that fails -------------------------------------


def _content(path: Path, height: int, width: int) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _nst(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NST_HOME": str(home), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "engine", "stylize", *args]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path: Path) -> None:
    content, out = _content(tmp_path / "in.png", 300, 400), tmp_path / "out.png"
    done = _nst(
        str(content), "--method", "johnson", "-o", str(out), "--dry-run", "--device", "cpu", home=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("plan: johnson on cpu: 400x300 px in one pass; estimated peak")
    assert not out.exists()  # no weights are installed: it cannot have run
    tiled = _nst(str(content), "--method", "adain", "-s", str(content), "-o", str(out), "--dry-run",
                 "--set", "tile=256", home=tmp_path)  # fmt: skip
    assert tiled.returncode == 0 and "tiles of 256 px (halo 72 px)" in tiled.stdout
    bad = _nst(
        str(content), "--method", "johnson", "-o", str(out), "--dry-run", "--set", "memory=1", home=tmp_path
    )
    assert bad.returncode != 0 and "memory" in bad.stderr and "Traceback" not in bad.stderr


RETRY = textwrap.dedent(
    """
    import resource, sys
    import torch
    import importlib.util
    sys.path.insert(0, {root!r})
    spec = importlib.util.spec_from_file_location("bench_zoo", {root!r} + "/bench/zoo.py")
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    from engine import weights
    from engine.compute import devices
    from engine.imaging import images
    from engine.compute.cache import ModelCache
    from engine.errors import CancelToken
    from engine.pipeline import run_job
    from nst_common.messages import StylizeJob

    torch.save(zoo.johnson_state_dict(zoo.johnson_model()), {home!r} + "/j.pth")
    weights.import_file("johnson_candy", {home!r} + "/j.pth")

    def run(side, **settings):
        messages = []
        content = images.to_raw(zoo.synthetic_image(side, side, seed=4), "u8")
        job = StylizeJob("johnson", {{"device": "cpu", **settings}}, content)
        out = run_job(job, lambda p: messages.append(p.message), CancelToken(), ModelCache())
        return images.from_raw(out), messages

    run(128)  # warm up torch's threads and oneDNN, whose first use takes address space of its own
    vm_size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (vm_size + (200 << 20), resource.RLIM_INFINITY))
    # The user claims 1 GiB more than this process holds: the planner believes one pass fits.
    claimed = (devices.used_memory(torch.device("cpu")) >> 20) + 1024
    result, messages = run(1024, memory=claimed)
    plans = [m for m in messages if "plan" in m or "out of memory" in m]
    print("\\n".join(plans))
    assert "in one pass" in plans[0], plans
    assert any(m.startswith("out of memory on cpu; retrying") for m in plans), plans
    assert "tiles of" in plans[-1], plans
    assert result.shape == (1024, 1024, 3) and result.std() > 0.02
    """
)


@pytest.mark.skipif(
    not Path("/proc/self/statm").exists(), reason="needs Linux's /proc for the address-space limit"
)
def test_running_out_of_memory_for_real_retries_with_smaller_tiles(tmp_path: Path) -> None:
    """A process limited to 200 MiB more address space than it holds, and a job told it may use
    1 GiB: the one-pass plan (about 450 MiB) fails to allocate, the pipeline says so and retries in
    tiles until they fit."""
    script = RETRY.format(root=str(ROOT), home=str(tmp_path))
    env = {**os.environ, "NST_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
