"""Pictures of images and masks for people: colour maps, overlays, grids (Pillow only)."""
import numpy as np
from PIL import Image

from segdata import atomic

IGNORE_COLOUR = (255, 255, 255)


def default_palette(num_classes):
    """Distinct colours; class 0 black (background), the rest spread over the hue wheel."""
    colours = [(0, 0, 0)]
    for i in range(1, max(num_classes, 2)):
        hue = (i - 1) / max(num_classes - 1, 1)
        rgb = Image.new("HSV", (1, 1), (int(hue * 255), 200, 255)).convert("RGB").getpixel((0, 0))
        colours.append(rgb)
    return colours


def colourise(mask, palette, ignore_label=255):
    """(h, w) class indices -> (h, w, 3) uint8 colours; ignore pixels white."""
    table = np.zeros((256, 3), np.uint8)
    table[:len(palette)] = np.asarray(palette, np.uint8)
    table[ignore_label] = IGNORE_COLOUR
    return table[np.asarray(mask).reshape(mask.shape[:2])]


def overlay(image, mask, palette, alpha=0.45, ignore_label=255):
    """Blend the colourised mask over the image where the class is not 0."""
    image = np.asarray(image)
    if image.ndim == 2 or image.shape[-1] == 1:
        image = np.repeat(image.reshape(image.shape[:2])[..., None], 3, -1)
    mask = np.asarray(mask).reshape(image.shape[:2])
    colours = colourise(mask, palette, ignore_label).astype(np.float32)
    blend = image.astype(np.float32) * (1 - alpha) + colours * alpha
    keep = (mask == 0)[..., None]
    return np.where(keep, image, blend).astype(np.uint8)


def grid(rows, gap=4):
    """rows: list of lists of (h, w, 3) uint8 panels of one size -> one uint8 picture."""
    height, width = rows[0][0].shape[:2]
    columns = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (height + gap) - gap, columns * (width + gap) - gap, 3), 255,
                     np.uint8)
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            canvas[r * (height + gap):r * (height + gap) + height,
                   c * (width + gap):c * (width + gap) + width] = panel
    return canvas


def save_png(array, path):
    with atomic.replacing(path, "wb") as handle:
        Image.fromarray(array).save(handle, format="PNG")
