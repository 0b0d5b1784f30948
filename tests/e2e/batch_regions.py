# Runs inside gimp-console-3.0 (python-fu-eval), in the trixie chroot. The test prepends
# ARGS_PATH = "...json" to this text. The regions mode: an 80x48 image whose 64x48 layer sits at
# x offset 16, with two saved selections splitting the image at x=48 (the layer's x=32), so a
# channel read without the layer's offset would put the split in the wrong place. Region 1 is the
# left channel with a red style file, region 2 the right channel with a blue style layer of
# another image. Then the same through the layer mask (white -> red, black -> blue), then an
# empty channel, which must fail with a message. Pixels and errors go to ARGS["out"].
import json
import sys
import traceback

sys.path.insert(0, E2E_DIR)  # noqa: F821 - prepended by the test
from batch_prelude import Gimp, Gio, fill, load_args, pixels, procedure_config, run_procedure

ARGS = load_args(ARGS_PATH)  # noqa: F821 - prepended by the test
IW, W, H, OX = 80, 64, 48, 16
findings = {"width": W}


def run(image, layer, **props):
    """Run the transfer in the regions mode; (status, error, the new layer's pixels or None)."""
    proc, config = procedure_config(
        image,
        [layer],
        method="gatys",
        layer_mask="regions",
        preset="draft",
        iterations=20,
        strength=10.0,
        **props,
    )
    before = len(image.get_layers())
    status, error = run_procedure(proc, config)
    out = None
    if len(image.get_layers()) > before:
        new = image.get_layers()[image.get_item_position(layer) - 1]
        out = {"name": new.get_name(), "pixels": list(pixels(new, "R'G'B' float"))}
    return status, error, out


def saved_selection(image, name, x, w):
    image.select_rectangle(Gimp.ChannelOps.REPLACE, x, 0, w, H)
    channel = Gimp.Selection.save(image)
    channel.set_name(name)
    return channel


try:
    image = Gimp.Image.new(IW, H, Gimp.ImageBaseType.RGB)
    layer = Gimp.Layer.new(image, "Photo", W, H, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    layer.set_offsets(OX, 0)
    # Neutral grey, as near the red style as the blue: the colour each half takes comes from its region.
    fill(layer, 3, "R'G'B' float", lambda x, y, c: 0.3 + 0.3 * ((x // 3 + y // 3) % 2))
    left = saved_selection(image, "Left", 0, 48)
    right = saved_selection(image, "Right", 48, IW - 48)
    empty = saved_selection(image, "Empty", 0, IW)
    Gimp.Selection.none(image)
    fill(empty, 1, "Y float", lambda x, y, c: 0.0)
    findings["source"] = list(pixels(layer, "R'G'B' float"))

    style_image = Gimp.Image.new(48, 48, Gimp.ImageBaseType.RGB)  # the blue style, as a layer
    blue = Gimp.Layer.new(style_image, "Blue", 48, 48, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    style_image.insert_layer(blue, None, 0)
    fill(blue, 3, "R'G'B' float", lambda x, y, c: (0.1, 0.2, 0.85)[c] * (1.0 if (x + y) % 6 < 3 else 0.6))
    red_file = Gio.File.new_for_path(ARGS["red"])

    findings["channels"] = run(
        image,
        layer,
        region1_source="channel",
        region1_channel=left,
        region1_style_file=red_file,
        region2_source="channel",
        region2_channel=right,
        region2_style_layer=blue,
    )

    mask = layer.create_mask(Gimp.AddMaskType.WHITE)
    layer.add_mask(mask)
    fill(mask, 1, "Y float", lambda x, y, c: 1.0 if x < W // 2 else 0.0)
    findings["layer_mask"] = run(
        image,
        layer,
        region1_source="layer-mask",
        region1_style_file=red_file,
        region2_source="layer-mask-inverse",
        region2_style_layer=blue,
    )

    layers_before = [item.get_name() for item in image.get_layers()]
    findings["empty"] = run(
        image, layer, region1_source="channel", region1_channel=empty, region1_style_file=red_file
    )
    findings["empty_unchanged"] = [item.get_name() for item in image.get_layers()] == layers_before
except Exception:
    findings["exception"] = traceback.format_exc()

with open(ARGS["out"], "w") as f:
    json.dump(findings, f)
