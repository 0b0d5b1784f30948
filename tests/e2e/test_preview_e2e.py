"""The live preview and the time left in real GIMP 3 (GUI under Xvfb): a temporary layer above each
source shows the engine's previews while its Gatys job runs and is gone when the results arrive,
outside the undo history; the progress text says how long is left.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gimp_harness import HERE, install_plugin, run_gimp_batch, write_style

pytestmark = pytest.mark.gimp

PREVIEW = "Neural style preview"


def test_a_preview_layer_shows_while_gatys_runs_and_leaves_no_trace(
    gimp_chroot: Path, work: Path, engine: Path
) -> None:
    style = work / "style.png"
    write_style(style)
    plugin_dir = install_plugin(work, {"python": "/nonexistent/python", "endpoint": f"unix:{engine}"})
    findings = run_gimp_batch(
        work,
        HERE / "batch_preview.py",
        {"style": str(style), "plugin_dir": str(plugin_dir), "iterations": 40},
        gui=True,
        timeout=420,
    )
    assert findings["status"] == "success", (findings["error"], findings["gimp_output"][-3000:])
    seen = findings["seen"]

    # While the first layer's job runs, its preview sits right above it, at its size and place,
    # and shows a picture; during the second job the first preview stays and a second one shows.
    first = [s["layers"] for s in seen if s["layers"][:3] == [PREVIEW, "Top", "Base"]]
    both = [s["layers"] for s in seen if s["layers"] == [PREVIEW, "Top", f"{PREVIEW} #1", "Base"]]
    assert first and both, [s["layers"] for s in seen]
    shown = [s["preview"] for s in seen if "preview" in s]
    assert all(p["size"] == [64, 48] and p["offsets"] == [0, 0] for p in shown), shown
    assert max(p["spread"] for p in shown) > 0.02, "the preview layer shows no picture"

    # The progress text says how long is left, from the plan on.
    messages = [s["message"] for s in seen]
    plan = next(i for i, m in enumerate(messages) if "plan:" in m)
    assert messages[plan].split(" — ", 1)[0].endswith(" left"), messages[plan]
    assert all(" left" in m for m in messages[plan:] if "step" in m), messages

    # The results are in, the previews gone; one Ctrl+Z removes every result and a second
    # brings back no preview: neither was ever in the undo history.
    assert findings["after_run"] == ["Top (style, gatys)", "Top", "Base (style, gatys)", "Base"]
    assert findings["windows"], "no image window found"
    assert findings["after_undo"] == findings["before"]
    assert findings["after_second_undo"] == ["Top", "Base"]

    # A preview a cancelled run left behind: the next run (non-interactive, no previews) removes it,
    # its result is one undo step, and undoing it does not bring the stale preview back.
    assert findings["with_stale"] == [PREVIEW, "Top", "Base"]
    assert findings["pdb_status"] == "success", findings["pdb_error"]
    assert findings["after_pdb"] == ["Top (style, gatys)", "Top", "Base"]
    assert findings["after_pdb_undo"] == ["Top", "Base"]

    # A grey image's preview is a grey layer (the engine's previews are RGB; GEGL converts them).
    assert findings["grey_status"] == "success"
    assert findings["grey_seen"] and all(p["grey"] and p["size"] == [32, 24] for p in findings["grey_seen"])
    assert findings["grey_after"] == ["Grey (style, gatys)", "Grey"]
