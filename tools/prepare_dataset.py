"""Validate frame/mask pairs, split them with a constant seed, write sharded TFRecords.

    python tools/prepare_dataset.py --input=DATA_PATH --output=RECORDS_DIR \
        [--layout=auto] [--split=70,20,10] [--seed=42]
"""
import sys

from absl import app, flags

if not __package__:  # run as a file (python tools/x.py), not as tools.x
    import _bootstrap  # noqa: F401  (puts the project on sys.path)
from segdata import prepare, sources, validate

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None,
                    "Dataset folder (frames/+masks/, pre-split folders or PASCAL VOC).")
flags.DEFINE_string("output", None, "Records folder to create (shards + manifest.json).")
flags.DEFINE_enum("layout", "auto", sources.LAYOUTS, "Input layout; auto detects it.")
flags.DEFINE_string("split", "70,20,10", "train,val,test percentages (sum 100) for frames/masks.")
flags.DEFINE_integer("seed", 42, "Seed of the split permutation (numpy default_rng).")
flags.DEFINE_string("frame_glob", "frames/*", "Frames glob under --input; '*' marks the id.")
flags.DEFINE_string("mask_glob", "masks/*", "Masks glob under --input; '*' marks the id.")
flags.DEFINE_enum("mask_kind", "auto", validate.MASK_KINDS,
                  "auto, decided once for the whole dataset: palette PNGs -> indices; "
                  "binary (0/255 -> 0/1) when every mask holds only 0 and 255; else class "
                  "indices (255: the ignore label).")
flags.DEFINE_string("palette", "", "JSON file mapping mask colours ('#rrggbb') to class indices.")
flags.DEFINE_integer("num_classes", 0, "Number of classes; 0 infers it from the masks.")
flags.DEFINE_integer("ignore_label", 255, "Mask value excluded from losses and metrics.")
flags.DEFINE_list("class_names", [], "Optional class names, in index order.")
flags.DEFINE_enum("on_error", "fail", ["fail", "skip"],
                  "fail: write nothing if any pair is bad; skip: leave bad pairs out (listed).")
flags.DEFINE_float("shard_mb", 100.0, "Target shard size in MB.")
flags.DEFINE_integer("num_shards", 0, "Shards per split (overrides --shard_mb).")
flags.DEFINE_enum("compression", "", ["", "GZIP"], "TFRecord compression.")
flags.DEFINE_list("resize", [], "Store frames resized to H,W (masks with nearest neighbour).")
flags.DEFINE_integer("workers", 0, "Validation processes; 0 uses every core.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")
flags.mark_flags_as_required(["input", "output"])


def main(argv):
    del argv
    from segtrain import startup
    startup.quiet_python_logs()
    try:
        resize = tuple(int(v) for v in FLAGS.resize) if FLAGS.resize else None
        if resize is not None and len(resize) != 2:
            raise prepare.PrepareError(f"--resize={FLAGS.resize}: expected H,W")
        config = prepare.PrepareConfig(
            input=FLAGS.input, output=FLAGS.output, layout=FLAGS.layout,
            split=prepare.parse_ratios(FLAGS.split), seed=FLAGS.seed,
            frame_glob=FLAGS.frame_glob, mask_glob=FLAGS.mask_glob, mask_kind=FLAGS.mask_kind,
            palette=FLAGS.palette, num_classes=FLAGS.num_classes,
            ignore_label=FLAGS.ignore_label, class_names=tuple(FLAGS.class_names),
            on_error=FLAGS.on_error, shard_mb=FLAGS.shard_mb, num_shards=FLAGS.num_shards,
            compression=FLAGS.compression, resize=resize, workers=FLAGS.workers,
            overwrite=FLAGS.overwrite)
        manifest = prepare.prepare(config)
    except (prepare.PrepareError, ValueError) as err:
        sys.stderr.write(f"prepare_dataset: error:\n{err}\n")
        return 1
    counts = {s: v["count"] for s, v in manifest["splits"].items()}
    print(f"wrote {FLAGS.output}: {counts}, num_classes={manifest['num_classes']}, "
          f"skipped={len(manifest['skipped'])}, mask_kind={manifest['mask_kind']} "
          f"({manifest['mask_kind_reason']})")
    return 0


if __name__ == "__main__":
    app.run(main)
