"""Networks of the feed-forward methods (Johnson, AdaIN, CycleGAN) built from upstream state dicts.

Each loader reads the file layout its upstream project saves, checks it strictly, and folds the
fixed input/output scalings into the weights, so inference runs on RGB 0..1 in and out. An image
too large for one pass runs in tiles without seams (tiling.py).
"""
