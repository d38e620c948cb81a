"""Predict masks for images: class-index PNGs at each image's own size, plus overlays.

    python tools/predict.py --model=RUN_DIR/model.keras --input=FILE|DIR|GLOB --output=DIR \
        [--tile=model --tile_overlap=0.25] [--tta=hflip] [--palette=colours.json]

Works with RUN_DIR/export (the SavedModel) too. Each image is mapped to the model as
training mapped it (the model's input contract: size, resize policy, channels) and its
logits back onto its own pixels (segdata.serving). Pixels the model never saw (outside a
centre crop) get the ignore label. RGB images into a gray model are grayed as the
training pipeline grays them, gray into RGB repeated.
"""
import glob
import os
import sys

from absl import app, flags

if not __package__:  # run as a file (python tools/x.py), not as tools.x
    import _bootstrap  # noqa: F401  (puts the project on sys.path)

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "RUN_DIR/model.keras or RUN_DIR/export.")
flags.DEFINE_string("input", None, "An image file, a folder of images, or a glob.")
flags.DEFINE_string("output", None, "Folder for <name>_mask.png and <name>_overlay.png.")
flags.DEFINE_string("tile", "", "Tiled inference: 'model' (windows of the model's input size) "
                    "or H,W; images smaller than a window are mapped whole.")
flags.DEFINE_float("tile_overlap", 0.25, "Overlap of neighbouring windows, fraction of a side.")
flags.DEFINE_enum("tta", "none", ["none", "hflip", "hvflip"], "Test-time flips: logits "
                  "averaged over the flipped copies.")
flags.DEFINE_integer("batch_size", 8, "Windows per model call (--tile).", lower_bound=1)
flags.DEFINE_enum("on_error", "fail", ["fail", "skip"], "An unreadable image: stop (fail) or "
                  "carry on and list it (skip).")
flags.DEFINE_string("resize", "", "Only checked: the model's contract says how it resizes.")
flags.DEFINE_string("image_size", "", "Only checked: the model's contract says its size.")
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


def predict_files(paths, predictor, tile, overlap, tta, batch_size, on_error="fail"):
    """Yields (path, image, mask at the image's own size, error or None)."""
    import numpy as np

    from segdata import serving, validate
    for path in paths:
        try:
            # a 16-bit frame mapped to the model's pixels by its contract (also the overlay's)
            image = np.asarray(serving.model_pixels(validate.read_frame(path),
                                                    predictor.contract))
        except ValueError as err:
            err = err if path in str(err) else f"{path}: {err}"
            if on_error == "fail":
                raise ValueError(f"{err} (--on_error=skip carries on without it)")
            yield path, None, None, str(err)
            continue
        logits, seen = predictor.logits(image, tile, overlap, tta, batch_size)
        mask = serving.mask_of(logits, seen, predictor.contract.ignore_label)
        yield path, image, np.asarray(mask), None


def main(argv):
    del argv
    from segtrain import startup
    startup.quiet_python_logs()
    from segdata import validate, visualize
    from segtrain import cli
    try:
        # what needs no model first: these fail in a second, before TensorFlow loads
        if os.path.exists(FLAGS.output) and not os.path.isdir(FLAGS.output):
            raise ValueError(f"--output={FLAGS.output} is a file; pass a folder")
        tile = cli.parse_tile(FLAGS.tile)
        paths = list_inputs(FLAGS.input)
        from segdata import inference, serving
        if tile:
            serving.check_tile_overlap(FLAGS.tile_overlap)
        predictor = inference.load(FLAGS.model)
        predictor.contract.check(resize=FLAGS.resize, image_size=cli.parse_image_size(
            FLAGS.image_size) if FLAGS.image_size else None)
        palette = None
        if FLAGS.palette:
            mapping = validate.load_palette(FLAGS.palette)
            palette = [(0, 0, 0)] * (max(mapping.values()) + 1)
            for colour, index in mapping.items():
                palette[index] = colour
        os.makedirs(FLAGS.output, exist_ok=True)
        count, skipped = 0, []
        ignore = predictor.contract.ignore_label
        for path, image, mask, error in predict_files(paths, predictor, tile, FLAGS.tile_overlap,
                                                      FLAGS.tta, FLAGS.batch_size, FLAGS.on_error):
            if error:
                skipped.append(error)
                continue
            name = os.path.splitext(os.path.basename(path))[0]
            # each PNG is written to a temp name and renamed (visualize.save_png)
            visualize.save_png(mask, os.path.join(FLAGS.output, f"{name}_mask.png"))
            colours = palette or visualize.default_palette(max(int(mask[mask != ignore].max(
                initial=0)) + 2, predictor.contract.num_classes))
            if FLAGS.palette:
                visualize.save_png(visualize.colourise(mask, colours, ignore),
                                   os.path.join(FLAGS.output, f"{name}_colour.png"))
            if FLAGS.overlay:
                visualize.save_png(visualize.overlay(image, mask, colours, FLAGS.alpha, ignore),
                                   os.path.join(FLAGS.output, f"{name}_overlay.png"))
            count += 1
            sys.stderr.write(f"\r{count}/{len(paths)} images")
        sys.stderr.write("\n")
    except ValueError as err:
        sys.stderr.write(f"predict: error: {err}\n")
        return 1
    for line in skipped:
        sys.stderr.write(f"predict: skipped: {line}\n")
    print(f"wrote {count} masks to {FLAGS.output}" + (f"; skipped {len(skipped)} unreadable "
                                                       "image(s), listed above" if skipped else ""))
    return 0 if count else 1


if __name__ == "__main__":
    app.run(main)
