#!/usr/bin/env python3
"""Regenerate the plug-in's translation template, plugin/neural_style/locale/neural_style.pot.

    python3 tools/update-pot.py                 rewrite the template in place
    python3 tools/update-pot.py --output FILE   write it to FILE instead

xgettext (GNU gettext) reads the plug-in's own texts: the literals of `_()` and `ngettext()` in
plugin/neural_style/*.py. The labels, help texts and choice labels the dialog takes from the shared
settings declaration (nst_common/settings.py) are data there, translated by the plug-in where it
shows them (`_(row.label)`), so this script lists them from the declaration itself, each with a
note on where it shows, and hands them to the same xgettext run. tests/test_plugin_i18n.py fails
when the committed template differs from what this makes.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "plugin" / "neural_style"
TEMPLATE = PLUGIN / "locale" / "neural_style.pot"
DECLARATION = "nst_common/settings.py"


def declared_texts() -> dict[str, list[str]]:
    """Each text of the declaration the plug-in shows -> where it shows, for the translators."""
    sys.path[:0] = [str(REPO), str(PLUGIN)]
    from settings import DIALOG_SETTINGS  # the plug-in's own choice of rows

    from nst_common import settings as declared

    texts: dict[str, list[str]] = {}
    for method in declared.METHODS:
        texts.setdefault(method.label, []).append(f"the method choice {method.name}")
    for row in DIALOG_SETTINGS:
        texts.setdefault(row.label, []).append(f"dialog label of the setting {row.name}")
        texts.setdefault(row.help, []).append(f"tooltip of the setting {row.name}")
        if row.kind == "choice":
            wide = row.widest()
            for choice in wide.choices:
                texts.setdefault(wide.choice_label(choice), []).append(
                    f"choice {choice} of the setting {row.name}"
                )
    return texts


def po_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def declared_pot(texts: dict[str, list[str]]) -> str:
    """The declaration's texts as PO entries, referenced to the declaration's file."""
    entries = [
        "".join(f"#. {note}\n" for note in notes) + f'#: {DECLARATION}\nmsgid {po_string(text)}\nmsgstr ""\n'
        for text, notes in texts.items()
    ]
    header = 'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n'
    return "\n".join([header, *entries])


def write_template(output: Path) -> None:
    xgettext = shutil.which("xgettext")
    if xgettext is None:
        raise SystemExit(
            "update-pot: xgettext is missing; install GNU gettext (Debian: apt-get install gettext)"
        )
    sources = sorted(str(p.relative_to(REPO)) for p in PLUGIN.glob("*.py"))
    with tempfile.TemporaryDirectory() as tmp:
        declared = Path(tmp) / "declaration.pot"
        declared.write_text(declared_pot(declared_texts()), encoding="utf-8")
        made = Path(tmp) / "neural_style.pot"
        subprocess.run(
            [
                xgettext,
                "--from-code=UTF-8",
                "--keyword",  # only the plug-in's own two functions
                "--keyword=_",
                "--keyword=ngettext:1,2",
                "--add-comments=TRANSLATORS:",
                "--add-location=file",  # no line numbers: the template changes only with its texts
                "--package-name=neural-style",
                "--copyright-holder=neural-style contributors",
                f"--output={made}",
                *sources,
                str(declared),
            ],
            cwd=REPO,
            check=True,
        )
        text = made.read_text(encoding="utf-8")
    text = text.replace("SOME DESCRIPTIVE TITLE.", "Translations of the neural-style GIMP plug-in.", 1)
    if output.is_file() and undated(output.read_text(encoding="utf-8")) == undated(text):
        return  # the same texts: keep the file, and the date it was made
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")


def undated(template: str) -> str:
    return re.sub(r'^"POT-Creation-Date: .*$', "", template, flags=re.MULTILINE)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=TEMPLATE, help="where to write (default: %(default)s)")
    write_template(parser.parse_args().output)


if __name__ == "__main__":
    main()
