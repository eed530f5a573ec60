"""Second rasterisers of shapes-world spec v1, written from the spec's text for the tests:
PIL's own ellipse / rectangle / polygon drawing, and an anti-aliased render (4 x 4 supersampled
pixel-centre masks, box-averaged). Both draw a ``world.Scene``'s exact geometry."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from vlv import world


def pil_render(scene: world.Scene) -> np.ndarray:
    """PIL's drawing (its own edge rules, no anti-aliasing)."""
    s = scene.size
    image = Image.new("RGB", (s, s), world.BACKGROUNDS[scene.attributes.background])
    draw = ImageDraw.Draw(image)
    for obj, (jx, jy) in zip(scene.attributes.objects, scene.jitter):
        row, col = divmod(obj.cell, 3)
        cx, cy = world.CELL_CENTRES[col] * s + jx, world.CELL_CENTRES[row] * s + jy
        half = world.SIZES[obj.size] * s / 2
        colour = world.COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=colour)
        elif obj.shape == "square":
            draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=colour)
        else:
            draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=colour)
    return np.asarray(image)


def antialiased_render(scene: world.Scene, factor: int = 4) -> np.ndarray:
    """The scene at ``factor`` x the size, averaged back down: edge pixels blend object and background."""
    big = world.Scene(scene.attributes, tuple((x * factor, y * factor) for x, y in scene.jitter), scene.size * factor)
    s = scene.size
    return world.render(big).astype(np.float32).reshape(s, factor, s, factor, 3).mean((1, 3)).round().astype(np.uint8)
