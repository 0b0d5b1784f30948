"""The plug-in's translations: the committed template holds every text the plug-in shows, messages
quote only labels the dialog has, and a catalog in locale/ reaches labels, the declaration's words,
messages and plurals alike. Run with the host Python."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_catalog

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "plugin" / "neural_style"
TEMPLATE = PLUGIN / "locale" / "neural_style.pot"


def entries(text: str) -> list[dict[str, str]]:
    """The entries of a PO file: msgctxt, msgid, msgid_plural and the comment lines, unescaped; the
    header (empty msgid) left out."""
    found: list[dict[str, str]] = []
    entry: dict[str, str] = {}
    key = ""
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if entry.get("msgid"):
                found.append(entry)
            entry, key = {}, ""
        elif line.startswith("#"):
            entry["comments"] = entry.get("comments", "") + line + "\n"
        elif line.startswith('"'):
            entry[key] += ast.literal_eval(line)
        else:
            key, _, rest = line.partition(" ")
            entry[key] = ast.literal_eval(rest)
    return found


def test_the_committed_template_is_up_to_date(tmp_path: Path) -> None:
    if shutil.which("xgettext") is None:
        pytest.skip("xgettext (GNU gettext) is not installed")
    fresh = tmp_path / "fresh.pot"
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "update-pot.py"), "--output", str(fresh)], check=True
    )

    def texts(path: Path) -> list[tuple[str, ...]]:
        return [
            (e.get("msgctxt", ""), e["msgid"], e.get("msgid_plural", ""), e.get("comments", ""))
            for e in entries(path.read_text(encoding="utf-8"))
        ]

    assert texts(TEMPLATE) == texts(fresh), "the template is out of date: run python3 tools/update-pot.py"


def test_the_template_holds_the_plug_ins_and_the_declarations_texts() -> None:
    from neural_style import TABLE, TRANSFER_PARAMS

    from nst_common import settings as declared

    msgids = {e["msgid"] for e in entries(TEMPLATE.read_text(encoding="utf-8"))}
    shown = {p.label for p in TRANSFER_PARAMS} | {
        label for p in TRANSFER_PARAMS for _nick, label in p.choices
    }
    shown |= {spec.label for spec in TABLE} | {m.label for m in declared.METHODS}
    # Region n's own labels and blurbs are formatted; their templates are in as "... {n} ...".
    missing = {text for text in shown if text not in msgids and not re.search(r"\d", text)}
    assert not missing
    assert {"Mo_del", "Draft", "Automatic", "{help}; 0 = the default"} <= msgids


def dialog_labels() -> set[str]:
    """What the dialogs show as labels and choices, without mnemonics; for a choice that explains
    itself ("Split: the first style ..."), also its name before the colon; the region tabs."""
    from neural_style import TABLE
    from settings import REGION_COUNT

    params = [p for spec in TABLE for p in spec.params]
    labels = {p.label for p in params}
    for p in params:
        for _nick, label in p.choices:
            labels |= {label, label.partition(":")[0]}
    labels |= {f"Region {n}" for n in range(1, REGION_COUNT + 1)}
    return {label.replace("_", "") for label in labels}


def test_messages_quote_only_labels_the_dialog_shows() -> None:
    """A message that tells the user to set a field names it as the dialog labels it ("Masks", not
    "Layer mask"): every “quoted” text in the template is a label, a choice, or a placeholder for
    a layer's or channel's name."""
    labels = dialog_labels()
    quoted = {
        (span, e["msgid"])
        for e in entries(TEMPLATE.read_text(encoding="utf-8"))
        for span in re.findall(r"“([^”]*)”", e["msgid"] + e.get("msgid_plural", ""))
        if not re.fullmatch(r"\{\w+\}", span)
    }
    assert quoted, "no message quotes a label: the check would prove nothing"
    unknown = sorted((span, msgid) for span, msgid in quoted if span not in labels)
    assert not unknown, unknown
    assert {"Masks", "Ignore", "Style file", "Second style weight"} <= {span for span, _ in quoted}


def test_a_catalog_translates_labels_declared_words_messages_and_plurals(tmp_path: Path) -> None:
    """A copy of the plug-in with a catalog for a made-up language "xx", imported in a fresh Python
    with LANGUAGE=xx as GIMP starts its plug-ins: the words change wherever they are shown."""
    copy = tmp_path / "neural_style"
    shutil.copytree(PLUGIN, copy, ignore=shutil.ignore_patterns("__pycache__", "engine.json"))
    write_catalog(
        copy / "locale" / "xx" / "LC_MESSAGES" / "neural_style.mo",
        {
            "_Masks": "_Maskoj",
            "Mo_del": "Mo_delo",
            "Draft": "Skizo",
            "{help}; 0 = the default": "{help}; 0 = la defaŭlto",
            "{method} needs a style: choose a “Style file” or a “Style layer”.": "{method} bezonas stilon.",
            ("Waiting for {n} job ahead", "Waiting for {n} jobs ahead"): ("{n} laboro", "{n} laboroj"),
        },
    )
    probe = """
from neural_style import TRANSFER_PARAMS
from i18n import ngettext
from settings import Settings, SettingsError, validate
by_name = {p.name: p for p in TRANSFER_PARAMS}
print(by_name["layer-mask"].label)
print(by_name["model"].label)
print(dict(by_name["preset"].choices)["draft"])
print(by_name["size"].blurb)
try:
    validate(Settings.of(method="gatys"), {"gatys": None})
except SettingsError as exc:
    print(exc)
print(ngettext("Waiting for {n} job ahead", "Waiting for {n} jobs ahead", 3).format(n=3))
"""
    env = {**os.environ, "LANGUAGE": "xx", "PYTHONPATH": os.pathsep.join([str(copy), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[:3] == ["_Maskoj", "Mo_delo", "Skizo"]
    assert lines[3].endswith("; 0 = la defaŭlto")
    assert lines[4:] == ["gatys bezonas stilon.", "3 laboroj"]
