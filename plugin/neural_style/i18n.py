"""The plug-in's words in the user's language, with gettext, the way GIMP's own Python plug-ins do.

The domain is the plug-in's name and the catalogs lie in `locale/` beside this file
(`locale/<lang>/LC_MESSAGES/neural_style.mo`), which is where GIMP looks by default
(GimpPlugIn.set_i18n); `locale/neural_style.pot` is their template, made by tools/update-pot.py.
Python's gettext picks the language from LANGUAGE, LC_ALL, LC_MESSAGES and LANG, which plug-ins
inherit from GIMP (it sets LANGUAGE when a language is chosen in its Preferences). Without a
catalog every text stays English.

Texts that are data (the shared settings declaration's labels and help, nst_common/settings.py)
are translated where they are shown, with `_(row.label)`; tools/update-pot.py puts them in the
template too. Standard library only: the tests import it with the host Python.
"""

from __future__ import annotations

import gettext
from pathlib import Path

DOMAIN = "neural_style"
CATALOG_DIR = "locale"  # relative to the plug-in's folder, as GimpPlugIn.set_i18n wants it
LOCALE_DIR = Path(__file__).resolve().with_name(CATALOG_DIR)

gettext.bindtextdomain(DOMAIN, str(LOCALE_DIR))


def _(message: str) -> str:
    """`message` in the user's language, or as it is when there is no translation."""
    return gettext.dgettext(DOMAIN, message)


def ngettext(singular: str, plural: str, n: int) -> str:
    """The singular or plural form for `n`, in the user's language (whose plural rules may differ)."""
    return gettext.dngettext(DOMAIN, singular, plural, n)
