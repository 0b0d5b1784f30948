"""Pixels between the outside world and the methods: image files and raw layers, colour transforms,
and masks (regions, label maps, guides). Methods see only HxWx3 float32 RGB from here."""
