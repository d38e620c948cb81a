"""A deterministic synthetic dataset (shapes with known masks) in the frames/masks layout.

Used by `python train.py` with no flags and by the tests, so nothing needs a
download. Class 0 is background; classes 1.. are ellipses, rectangles and
triangles (or thin lines), drawn over a noisy gradient so a model has to learn shape and
brightness, not just a threshold.
"""

import os

import numpy as np
from PIL import Image, ImageDraw

_SHAPES = ("ellipse", "rectangle", "triangle")


def _draw_example(rng, size, num_classes, rgb, object_size=(1 / 6, 1 / 2.5), objects=(1, 3),
                  shapes=_SHAPES, class_probabilities=None):
    height, width = size
    ramp = np.linspace(40, 110, width)[None, :] + np.linspace(0, 30, height)[:, None]
    base = ramp + rng.normal(0, 12, (height, width))
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(rng.integers(objects[0], objects[1] + 1)):
        if class_probabilities is None:
            cls = int(rng.integers(1, num_classes))
        else:
            cls = int(rng.choice(np.arange(1, num_classes), p=class_probabilities))
        shape = shapes[(cls - 1) % len(shapes)]
        h = int(rng.integers(int(height * object_size[0]), int(height * object_size[1])))
        w = int(rng.integers(int(width * object_size[0]), int(width * object_size[1])))
        top, left = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        box = (left, top, left + w, top + h)
        if shape == "ellipse":
            draw.ellipse(box, fill=cls)
        elif shape == "rectangle":
            draw.rectangle(box, fill=cls)
        elif shape == "line":  # thin: a 2 px polyline across the box
            draw.line([(left, top), (left + w // 2, top + h), (left + w, top + h // 3)],
                      fill=cls, width=2)
        else:
            draw.polygon([(left, top + h), (left + w // 2, top), (left + w, top + h)], fill=cls)
    labels = np.asarray(mask)
    # Objects are brighter than the background by a class-dependent amount.
    image = base + (labels > 0) * (70 + 25 * labels) + rng.normal(0, 8, (height, width))
    image = np.clip(image, 0, 255).astype(np.uint8)
    if rgb:
        tint = rng.uniform(0.8, 1.2, size=3)
        image = np.clip(image[..., None] * tint, 0, 255).astype(np.uint8)
    return image, labels


def generate(root, count=120, size=(128, 128), num_classes=2, rgb=False, seed=0,
             frame_format="png", object_size=(1 / 6, 1 / 2.5), objects=(1, 3), shapes=_SHAPES,
             class_probabilities=None):
    """Writes root/frames/frame_NNN.{png,jpg} and root/masks/mask_NNN.png; returns root.

    size: (height, width), or a list of them used in turn (frames of many sizes);
    object_size: each object's height and width, fractions of the frame's (low, high);
    objects: how many a frame holds (low, high), inclusive;
    shapes: class c's shape is shapes[(c - 1) % len(shapes)]: ellipse, rectangle, triangle
    or line (a thin 2 px polyline);
    class_probabilities: how often each object is of class 1, 2, ... (None: uniform).

    Binary datasets store masks as 0/255 (the classic layout's convention), multi-class as
    class indices. The same arguments always give the same bytes.
    """
    rng = np.random.default_rng(seed)
    sizes = [tuple(size)] if isinstance(size[0], int) else [tuple(s) for s in size]
    os.makedirs(os.path.join(root, "frames"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    for index in range(count):
        image, labels = _draw_example(rng, sizes[index % len(sizes)], num_classes, rgb,
                                      object_size, objects, tuple(shapes), class_probabilities)
        frame = Image.fromarray(image)
        name = f"frame_{index:03d}." + ("jpg" if frame_format == "jpeg" else "png")
        if frame_format == "jpeg":
            frame.save(os.path.join(root, "frames", name), "JPEG", quality=95)
        else:
            frame.save(os.path.join(root, "frames", name), "PNG")
        stored = labels * 255 if num_classes == 2 else labels
        Image.fromarray(stored.astype(np.uint8)).save(
            os.path.join(root, "masks", f"mask_{index:03d}.png"), "PNG")
    return root
