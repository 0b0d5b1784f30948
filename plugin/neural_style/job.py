"""One layer's StylizeJob from the settings and the pixels read for it: its styles and their
weights, and a layer mask or the regions as the job's masks (docs/protocol.md). Standard library
only, run by the tests with the host Python.
"""

from __future__ import annotations

from i18n import _
from pixels import inverse, selection_coverage
from settings import Settings, SettingsError, regions

from nst_common.messages import RawImage, StyleRef, StylizeJob

LAYER_MASK = "layer-mask"  # the job's mask name for a layer's own mask
LAYER_MASK_INVERSE = "layer-mask-inverse"  # its black part, the second style's region in "split"


def region_masks(
    settings: Settings, layer_name: str, layer_mask: RawImage | None, channels: dict[int, RawImage]
) -> dict[int, RawImage]:
    """Region number -> its mask over one layer: a channel (already cropped to the layer), the
    layer mask or its inverse. A region that selects nothing there is an error the user can fix,
    not a silently unstyled layer."""
    out = {}
    for region in regions(settings):
        if region.source == "channel":
            mask = channels[region.number]
        elif layer_mask is None:
            raise SettingsError(
                _(
                    "Region {n} is marked by the layer mask, but “{layer}” has no mask. Add a layer "
                    "mask to it, or set the region's “Mask” to a channel."
                ).format(n=region.number, layer=layer_name)
            )
        else:
            mask = layer_mask if region.source == "layer-mask" else inverse(layer_mask)
        if selection_coverage(mask) == "none":
            raise SettingsError(
                _(
                    "{region} selects nothing over “{layer}”. Paint the region into it, or choose "
                    "another “Mask”."
                ).format(region=region.describe(), layer=layer_name)
            )
        out[region.number] = mask
    return out


def build_job(
    settings: Settings,
    content: RawImage,
    styles: list[tuple[str | RawImage, float]],
    selection: RawImage | None,
    layer_mask: RawImage | None = None,
    maps: tuple[RawImage, RawImage] | None = None,
    region_mask: dict[int, RawImage] | None = None,
) -> StylizeJob:
    """The job for one layer; `styles` holds a file path or the pixels of a style layer each.

    A layer mask becomes regions (docs/protocol.md): "confine" styles where it is white and keeps
    the content where black; "split" gives white to the first style and black to the second. The
    engine does this inside its loss rather than by pasting. In the regions mode `styles` holds
    each region's style in the order of regions() and `region_mask` each region's mask
    (region_masks); what no region covers keeps the content. `maps` (content's, first style's)
    are colour-coded label maps: each label of the content takes the style of the same label.
    """
    refs = [
        StyleRef(path=s, weight=w) if isinstance(s, str) else StyleRef(image=s, weight=w) for s, w in styles
    ]
    params = settings.engine_params()
    masks = {}
    if settings.layer_mask == "regions":
        params["regions"] = []
        for index, region in enumerate(regions(settings)):
            name = f"region-{region.number}"
            masks[name] = (region_mask or {})[region.number]
            params["regions"].append({"mask": name, "style": index})
    elif layer_mask is not None and settings.layer_mask == "split":
        coverage = selection_coverage(layer_mask)
        params["regions"] = []
        if coverage != "none":
            masks[LAYER_MASK] = layer_mask
            params["regions"].append({"mask": LAYER_MASK, "style": 0})
        if coverage != "full":
            masks[LAYER_MASK_INVERSE] = inverse(layer_mask)
            params["regions"].append({"mask": LAYER_MASK_INVERSE, "style": 1})
    elif layer_mask is not None:
        masks[LAYER_MASK] = layer_mask
        params["regions"] = [{"mask": LAYER_MASK}]
    job = StylizeJob(
        method=settings.method,
        params=params,
        content=content,
        styles=refs,
        selection=selection,
        masks=masks,
        content_map=maps[0] if maps else None,
    )
    if maps:
        job.styles[0].map = maps[1]
    return job


def style_weights(settings: Settings) -> tuple[float, float]:
    """Weights of the first and second style: the blend weight goes to the second. Split by the
    layer mask, each style has its own region and both count fully."""
    if settings.layer_mask == "split":
        return 1.0, 1.0
    return 1.0 - settings.style2_weight, settings.style2_weight
