"""Shapes, written in notebook 01: a scene of flat shapes on black, drawn with 4x4 supersampling so that each pixel is
its coverage times the shape's color."""
import numpy as np

from minimuse.data import PALETTE


def coverage(shape, box, size, ss=4):
    """The share (S, S) of each pixel's ss x ss sub-pixels inside a circle, square or upward triangle in box (x, y, d)."""
    x, y, d = box
    c = (np.arange(size * ss) + 0.5) / ss                     # sub-pixel centres, in pixels
    X, Y = c[None, :], c[:, None]
    if shape == "circle":
        inside = (X - x - d / 2) ** 2 + (Y - y - d / 2) ** 2 <= (d / 2) ** 2
    elif shape == "square":
        inside = (X >= x) & (X < x + d) & (Y >= y) & (Y < y + d)
    else:
        inside = (Y >= y) & (Y < y + d) & (np.abs(X - x - d / 2) <= (Y - y) / 2)
    return inside.reshape(size, ss, size, ss).mean(axis=(1, 3))


def draw_by_hand(items, boxes, size):
    """(color, shape) items and their boxes -> uint8 (S, S, 3): coverages add, since objects never overlap."""
    img = np.zeros((size, size, 3))
    for (color, shape), box in zip(items, boxes):
        img += coverage(shape, box, size)[..., None] * PALETTE[color]
    return np.round(img).astype(np.uint8)
