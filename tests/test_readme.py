"""The README's command-line examples, run as written on pictures the test makes (Gatys with a few
iterations, to stay short): a renamed option or a method that no longer runs from its example fails
here."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from test_zoo import files, home, states  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


def _examples() -> list[str]:
    """The `nst` lines of the sh block under the README's "The command line", comments dropped."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## The command line", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the README's command-line section has no sh block"
    lines = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line.startswith("nst ")]


def _picture(path: Path, seed: int, grey: bool = False) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:64] / 64
    pixels = np.stack([xx, yy, 0.5 + 0.5 * np.sin(9 * xx + seed)], -1) + rng.normal(0, 0.05, (48, 64, 3))
    picture = (np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(picture[..., 0] if grey else picture).save(path)


def test_every_readme_example_runs(home: Path, tmp_path: Path) -> None:  # noqa: F811
    examples = _examples()
    assert len(examples) >= 8
    for name, seed, grey in [("photo.jpg", 1, False), ("painting.jpg", 2, False), ("a.jpg", 3, False),
                             ("b.jpg", 4, False), ("sky.png", 5, True), ("sea.png", 6, True)]:  # fmt: skip
        _picture(tmp_path / name, seed, grey)
    env_home = {"NST_HOME": str(home)}
    for example in examples:
        words = shlex.split(example)[1:]
        if words[0] == "stylize":  # run as written (Gatys with a few iterations); each writes out.png
            (tmp_path / "out.png").unlink(missing_ok=True)
            gatys = "--method" not in words
            done = _nst([*words, "--iterations", "3"] if gatys else words, tmp_path, env_home)
            assert done.returncode == 0, (example, done.stderr)
            width, height = Image.open(tmp_path / "out.png").size
            assert width * 48 == height * 64, example  # the photo's shape (at --size, where given)
        else:  # "nst models list | pull ID… | …": cheap ones run, the rest must exist with --help
            alternatives = [a.split() for a in " ".join(words).replace("[", "").replace("]", "").split("|")]
            for index, alternative in enumerate(alternatives):
                if words[0] == "models" and index:
                    alternative = ["models", *alternative]
                command = alternative[: 2 if words[0] == "models" else 1]
                real = alternative if alternative in (["info", "--json"], ["models", "list"]) else None
                done = _nst(real or [*command, "--help"], tmp_path, env_home)
                assert done.returncode == 0, (example, command, done.stderr)


def _nst(words: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *words],
        cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
