"""A PNG grid of examples exactly as the training pipeline yields them: image, mask, overlay.

    python tools/show_dataset.py --data_dir=RECORDS --split=train --num=8 --output=grid.png \
        [--image_size=256] [--aug_rotation=20 --aug_hflip ...]
    python tools/show_dataset.py --data_dir=RECORDS --train_crop=256 --aug_scale=0.7,1.4 \
        --crop_foreground=0.5     # train.py's native-resolution windows

Look at it to see that augmentation moved image and mask together.
"""
import sys

from absl import app, flags

if not __package__:  # run as a file (python tools/x.py), not as tools.x
    import _bootstrap  # noqa: F401  (puts the project on sys.path)

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Records folder.")
flags.DEFINE_string("split", "train", "Split.")
flags.DEFINE_integer("num", 8, "Examples (rows).")
flags.DEFINE_integer("image_size", 256, "Side of each panel (the pipeline's output size).")
flags.DEFINE_string("output", "dataset.png", "PNG path.")
flags.DEFINE_enum("resize", "stretch", ["stretch", "pad", "crop"], "Resize policy.")
flags.DEFINE_integer("seed", 0, "Pipeline seed.")
flags.DEFINE_integer("train_crop", 0, "Windows of this side cut at --data_scale (train.py "
                     "--train_crop) instead of --image_size and --resize; 0: off.", lower_bound=0)
flags.DEFINE_float("data_scale", 1.0, "--train_crop: model pixels per source pixel.")
flags.DEFINE_list("aug_scale", ["1", "1"], "--train_crop: random scale MIN,MAX.")
flags.DEFINE_float("crop_foreground", 0.0, "--train_crop: P(window centred on foreground).")
flags.DEFINE_float("aug_elastic_alpha", 0.0, "Elastic deformation (as train.py).")
flags.DEFINE_integer("aug_elastic_grid", 3, "Elastic deformation grid (as train.py).")
for _name in ("hflip", "vflip"):
    flags.DEFINE_bool(f"aug_{_name}", False, f"Random {_name}.")
for _name in ("rotation", "shear", "zoom", "shift", "crop", "brightness", "contrast",
              "saturation", "hue", "noise"):
    flags.DEFINE_float(f"aug_{_name}", 0.0, f"Augmentation {_name} (as train.py).")
flags.mark_flag_as_required("data_dir")


def render(data_dir, split, num, size, config, policy, seed, train_crop=0, data_scale=1.0):
    """Returns the grid as a uint8 array (num rows x 3 panels)."""
    import numpy as np

    from segdata import augment, pipeline, records, spec, visualize
    manifest = records.load_manifest(data_dir)
    palette = visualize.default_palette(manifest["num_classes"])
    if train_crop:  # windows in training; other splits: the frame at data_scale, top left
        window = (train_crop, train_crop)
        input_spec = spec.InputSpec.for_records(data_dir, window, augment.SCALE, 3, config.xla,
                                                data_scale, window)
    else:
        input_spec = spec.InputSpec.for_records(data_dir, (size, size), policy, channels=3,
                                                xla=config.xla)
    if split == "train":
        dataset = pipeline.training_dataset(data_dir, input_spec, 1, config, seed=seed)
    else:
        dataset = pipeline.evaluation_dataset(data_dir, split, input_spec, 1)
    rows = []
    for batch in dataset.take(num):
        image, mask = batch["image"][0].numpy(), batch["mask"][0].numpy()[..., 0]
        rows.append([image, visualize.colourise(mask, palette, manifest["ignore_label"]),
                     visualize.overlay(image, mask, palette,
                                       ignore_label=manifest["ignore_label"])])
    if not rows:
        raise ValueError(f"{data_dir}: split {split!r} is empty")
    return np.asarray(visualize.grid(rows))


def main(argv):
    del argv
    from segdata import augment, records, visualize
    try:
        config = augment.AugmentConfig.from_flags(FLAGS)
        picture = render(FLAGS.data_dir, FLAGS.split, FLAGS.num, FLAGS.image_size, config,
                         FLAGS.resize, FLAGS.seed, FLAGS.train_crop, FLAGS.data_scale)
    except (ValueError, records.RecordsError) as err:
        sys.stderr.write(f"show_dataset: error: {err}\n")
        return 1
    visualize.save_png(picture, FLAGS.output)
    print(f"wrote {FLAGS.output} ({picture.shape[1]}x{picture.shape[0]})")
    return 0


if __name__ == "__main__":
    app.run(main)
