"""Neural style transfer engine: model zoo, job queue and socket server for the GIMP plug-in."""

__version__ = "0.2.0"
