#!/usr/bin/env python3
"""GIMP 3 entry point of the neural-style plug-in: the procedure table, nothing else.

GIMP runs this file (it must be named like its folder); host.py, which needs GIMP's own Python
modules, is imported only then, so the tests can read the table with the host Python.
"""

from i18n import _
from settings import (
    DIALOG_SETTINGS,
    MASK_MODE_LABELS,
    MASK_MODES,
    METHOD_LABELS,
    METHODS,
    OUTPUT_LABELS,
    OUTPUTS,
    REGION_COUNT,
    REGION_SOURCE_LABELS,
    REGION_SOURCES,
    Param,
    ProcedureSpec,
    declared_param,
)


def region_params(n: int) -> tuple[Param, ...]:
    """The four arguments of region n of the regions mode: its mask and its style."""
    return (
        Param(
            f"region{n}-source",
            "choice",
            _("Mask"),
            _("What marks region {n}").format(n=n),
            "none",
            choices=tuple((s, REGION_SOURCE_LABELS[s]) for s in REGION_SOURCES),
        ),
        Param(
            f"region{n}-channel",
            "channel",
            _("Channel"),
            _("The channel (a saved selection) of region {n}").format(n=n),
        ),
        Param(
            f"region{n}-style-file", "file", _("Style file"), _("Style image file of region {n}").format(n=n)
        ),
        Param(
            f"region{n}-style-layer",
            "layer",
            _("Style layer"),
            _("A layer as region {n}'s style; wins over its style file").format(n=n),
        ),
    )


TRANSFER_PARAMS = (
    Param(
        "method",
        "choice",
        _("_Method"),
        _("Style transfer method"),
        METHODS[0],
        choices=tuple((m, METHOD_LABELS[m]) for m in METHODS),
    ),
    Param("style-file", "file", _("Style _file"), _("Style image file (methods that take a style image)")),
    Param(
        "style-layer",
        "layer",
        _("Style _layer"),
        _("A layer of any open image as the style; wins over the style file"),
    ),
    Param("style2-file", "file", _("Second style file"), _("Optional second style image")),
    Param(
        "style2-layer",
        "layer",
        _("Second style layer"),
        _("Optional second style layer; wins over its file"),
    ),
    Param(
        "style2-weight",
        "double",
        _("Second style _weight"),
        _("Blend weight of the second style"),
        0.0,
        0.0,
        1.0,
    ),
    # The engine's settings, from the declaration both sides read (nst_common/settings.py).
    *(declared_param(s) for s in DIALOG_SETTINGS),
    Param(
        "output",
        "choice",
        _("_Output"),
        _("Where the result goes"),
        "new-layer",
        choices=tuple((o, OUTPUT_LABELS[o]) for o in OUTPUTS),
    ),
    Param(
        "only-selection",
        "boolean",
        _("Only the s_election"),
        _("Stylize only the selection; feathered edges blend"),
        True,
    ),
    Param(
        "remember-paths",
        "boolean",
        _("Remember style _paths"),
        _("Save the style files' full paths with the result, for re-runs after the image is reopened"),
        False,
    ),
    Param(
        "layer-mask",
        "choice",
        _("_Masks"),
        _("What a selected layer's mask means, or regions from channels"),
        "confine",
        choices=tuple((m, MASK_MODE_LABELS[m]) for m in MASK_MODES),
    ),
    Param(
        "content-map", "layer", _("_Content label map"), _("A layer of colour-coded labels over the content")
    ),
    Param(
        "style-map", "layer", _("St_yle label map"), _("The same colours over the (first) style, same size")
    ),
    *(param for n in range(1, REGION_COUNT + 1) for param in region_params(n)),
)

TRAIN_PARAMS = (
    Param(
        "model-name",
        "string",
        _("Model _name"),
        _("What the model is called in the Johnson model list: letters, digits, - and _"),
        "",
    ),
    Param("photos", "folder", _("_Photos"), _("A folder of your photos to train on, sub-folders too")),
    Param(
        "steps",
        "int",
        _("_Steps"),
        _("Training steps, each on four photos; 0 = the engine's default"),
        0,
        0,
        10_000_000,
    ),
)

TABLE = [
    ProcedureSpec(
        name="plug-in-neural-style-transfer",
        label=_("Neural Style Transfer…"),
        menu="<Image>/Filters/Artistic",
        blurb=_("Repaint the selected layers in the style of an image"),
        help=_(
            "Runs the neural-style engine (Gatys, Johnson, AdaIN or CycleGAN) on each selected layer "
            "and puts the result in a new layer above it, or in place. One undo step."
        ),
        run="transfer",
        params=TRANSFER_PARAMS,
    ),
    ProcedureSpec(
        name="plug-in-neural-style-rerun",
        label=_("Re-run Neural Style…"),
        menu="<Image>/Filters/Artistic",
        blurb=_("Run Neural Style Transfer again with the settings stored on a result layer"),
        help=_(
            "Reads the neural-style-settings parasite of the selected result layer and reopens the "
            "dialog with those settings, on the layer the result was made from."
        ),
        run="rerun",
    ),
    ProcedureSpec(
        name="plug-in-neural-style-train",
        label=_("Train Fast Style…"),
        menu="<Image>/Filters/Artistic",
        blurb=_("Train a fast style network on the selected layer's painting and a folder of photos"),
        help=_(
            "Starts a training in the neural-style engine: a Johnson network for the painting in the "
            "selected layer, on your photos. It goes on after GIMP closes; once it ends, the model is "
            "in the Johnson model list of Neural Style Transfer."
        ),
        run="train",
        params=TRAIN_PARAMS,
    ),
]

if __name__ == "__main__":
    import host

    host.main(TABLE)
