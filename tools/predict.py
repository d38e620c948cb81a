"""Predict masks for images: class-index PNGs at each image's own size, plus overlays.

    python tools/predict.py --model=RUN_DIR/model.keras --input=FILE|DIR|GLOB --output=DIR \
        [--palette=colours.json] [--batch_size=8]

Works with RUN_DIR/export (the SavedModel) too. Images of mixed sizes are resized to
the model's input, batched, and their masks mapped back onto their own pixels.
"""
import glob
import os
import sys

from absl import app, flags

import _bootstrap  # noqa: F401  (puts the project on sys.path)

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "RUN_DIR/model.keras or RUN_DIR/export.")
flags.DEFINE_string("input", None, "An image file, a folder of images, or a glob.")
flags.DEFINE_string("output", None, "Folder for <name>_mask.png and <name>_overlay.png.")
flags.DEFINE_enum("resize", "stretch", ["stretch", "pad", "crop"], "Resize policy (as trained).")
flags.DEFINE_integer("batch_size", 8, "Images per model call.")
flags.DEFINE_string("palette", "", "JSON {'#rrggbb': class}: also write colour masks.")
flags.DEFINE_float("alpha", 0.45, "Overlay opacity.")
flags.DEFINE_bool("overlay", True, "Write overlays.")
flags.mark_flags_as_required(["model", "input", "output"])

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def list_inputs(pattern):
    if os.path.isdir(pattern):
        paths = [os.path.join(pattern, n) for n in sorted(os.listdir(pattern))]
    elif os.path.isfile(pattern):
        paths = [pattern]
    else:
        paths = sorted(glob.glob(pattern))
    paths = [p for p in paths if p.lower().endswith(EXTENSIONS)]
    if not paths:
        raise ValueError(f"--input={pattern}: no images found (png, jpg, bmp, tif)")
    return paths


def _read(path, channels):
    import numpy as np
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            array = np.asarray(image)
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"{path}: unreadable image ({err})")
    return array[..., None] if array.ndim == 2 else array


def predict_files(paths, predict, input_size, channels, policy, batch_size):
    """Yields (path, image, mask at the image's size)."""
    import numpy as np
    import tensorflow as tf

    from segdata import inference
    from segmodels.metrics import predicted_classes
    classes = lambda logits: np.asarray(predicted_classes(logits)).astype(np.uint8)  # noqa: E731
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images = [_read(p, channels) for p in chunk]
        if input_size is None:  # SavedModel: it resizes itself, one image per call
            for path, image in zip(chunk, images):
                logits = predict(tf.constant(image[None]))[0]
                yield path, image, classes(logits)
            continue
        prepared = [inference.to_model_input(tf.constant(im), input_size, policy) for im in images]
        logits = predict(tf.stack([model_input for model_input, _, _ in prepared]))
        for path, image, (_, _, matrix), item in zip(chunk, images, prepared, tf.unstack(logits)):
            back, _ = inference.to_original(item, matrix, image.shape[:2])
            yield path, image, classes(back)


def main(argv):
    del argv
    from segdata import validate, visualize
    from segtrain import export
    try:
        predict, input_size, channels = export.load_predictor(FLAGS.model)
        paths = list_inputs(FLAGS.input)
        palette = None
        if FLAGS.palette:
            mapping = validate.load_palette(FLAGS.palette)
            palette = [(0, 0, 0)] * (max(mapping.values()) + 1)
            for colour, index in mapping.items():
                palette[index] = colour
        os.makedirs(FLAGS.output, exist_ok=True)
        count = 0
        for path, image, mask in predict_files(paths, predict, input_size, channels, FLAGS.resize,
                                               FLAGS.batch_size):
            name = os.path.splitext(os.path.basename(path))[0]
            visualize.save_png(mask, os.path.join(FLAGS.output, f"{name}_mask.png"))
            colours = palette or visualize.default_palette(int(mask.max()) + 2)
            if FLAGS.palette:
                visualize.save_png(visualize.colourise(mask, colours),
                                   os.path.join(FLAGS.output, f"{name}_colour.png"))
            if FLAGS.overlay:
                visualize.save_png(visualize.overlay(image, mask, colours, FLAGS.alpha),
                                   os.path.join(FLAGS.output, f"{name}_overlay.png"))
            count += 1
            sys.stderr.write(f"\r{count}/{len(paths)} images")
        sys.stderr.write("\n")
    except ValueError as err:
        sys.stderr.write(f"predict: error: {err}\n")
        return 1
    print(f"wrote {count} masks to {FLAGS.output}")
    return 0


if __name__ == "__main__":
    app.run(main)
