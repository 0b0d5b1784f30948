"""Training the engine's own fast-style networks from a painting and a folder of photos."""
