#!/usr/bin/env python3
"""GIMP 3 entry point of the neural-style plug-in: the procedure table, nothing else."""

import host
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
            "Mask",
            f"What marks region {n}",
            "none",
            choices=tuple((s, REGION_SOURCE_LABELS[s]) for s in REGION_SOURCES),
        ),
        Param(f"region{n}-channel", "channel", "Channel", f"The channel (a saved selection) of region {n}"),
        Param(f"region{n}-style-file", "file", "Style file", f"Style image file of region {n}"),
        Param(
            f"region{n}-style-layer",
            "layer",
            "Style layer",
            f"A layer as region {n}'s style; wins over the file",
        ),
    )


TRANSFER_PARAMS = (
    Param(
        "method",
        "choice",
        "_Method",
        "Style transfer method",
        METHODS[0],
        choices=tuple((m, METHOD_LABELS[m]) for m in METHODS),
    ),
    Param("style-file", "file", "Style _file", "Style image file (methods that take a style image)"),
    Param(
        "style-layer", "layer", "Style _layer", "A layer of any open image as the style; wins over the file"
    ),
    Param("style2-file", "file", "Second style file", "Optional second style image"),
    Param("style2-layer", "layer", "Second style layer", "Optional second style layer; wins over its file"),
    Param(
        "style2-weight", "double", "Second style _weight", "Blend weight of the second style", 0.0, 0.0, 1.0
    ),
    # The engine's settings, from the declaration both sides read (nst_common/settings.py).
    *(declared_param(s) for s in DIALOG_SETTINGS),
    Param(
        "output",
        "choice",
        "_Output",
        "Where the result goes",
        "new-layer",
        choices=tuple((o, OUTPUT_LABELS[o]) for o in OUTPUTS),
    ),
    Param(
        "only-selection",
        "boolean",
        "Only the s_election",
        "Stylize only the selection; feathered edges blend",
        True,
    ),
    Param(
        "remember-paths",
        "boolean",
        "Remember style _paths",
        "Save the style files' full paths with the result, for re-runs after the image is reopened",
        False,
    ),
    Param(
        "layer-mask",
        "choice",
        "_Masks",
        "What a selected layer's mask means, or regions from channels",
        "confine",
        choices=tuple((m, MASK_MODE_LABELS[m]) for m in MASK_MODES),
    ),
    Param("content-map", "layer", "_Content label map", "A layer of colour-coded labels over the content"),
    Param("style-map", "layer", "St_yle label map", "The same colours over the (first) style, same size"),
    *(param for n in range(1, REGION_COUNT + 1) for param in region_params(n)),
)

TABLE = [
    ProcedureSpec(
        name="plug-in-neural-style-transfer",
        label="Neural Style Transfer…",
        menu="<Image>/Filters/Artistic",
        blurb="Repaint the selected layers in the style of an image",
        help="Runs the neural-style engine (Gatys, Johnson, AdaIN or CycleGAN) on each selected layer "
        "and puts the result in a new layer above it, or in place. One undo step.",
        run="transfer",
        params=TRANSFER_PARAMS,
    ),
    ProcedureSpec(
        name="plug-in-neural-style-rerun",
        label="Re-run Neural Style…",
        menu="<Image>/Filters/Artistic",
        blurb="Run Neural Style Transfer again with the settings stored on a result layer",
        help="Reads the neural-style-settings parasite of the selected result layer and reopens the "
        "dialog with those settings, on the layer the result was made from.",
        run="rerun",
    ),
]

if __name__ == "__main__":
    host.main(TABLE)
