"""Code both sides of the socket read: the plug-in (a copy beside it) and the engine. Standard
library only, because it runs inside GIMP's Python."""
