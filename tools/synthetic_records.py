"""A synthetic records folder for benchmarks (segdata.synthetic, then prepare), once.

    python tools/synthetic_records.py --output=DIR --count=200 --size=256 --num_classes=4 \
        --object_size=0.023,0.047 --objects=2,6 [--seed=5] \
        [--shapes=ellipse,rectangle,line,triangle --class_probabilities=0.4,0.4,0.15,0.05]

Writes DIR/files (frames and masks) and DIR/records; does nothing when DIR/records exists.
"""
import os

from absl import app, flags

if not __package__:  # run as a file (python tools/x.py), not as tools.x
    import _bootstrap  # noqa: F401  (puts the project on sys.path)

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Folder for files/ and records/.")
flags.DEFINE_integer("count", 200, "Pairs.", lower_bound=1)
flags.DEFINE_integer("size", 128, "Frame side.", lower_bound=8)
flags.DEFINE_integer("num_classes", 2, "Classes, background included.", lower_bound=2)
flags.DEFINE_integer("seed", 0, "Generator seed.")
flags.DEFINE_list("object_size", ["0.1667", "0.4"], "Object side, fractions of the frame's: "
                  "LOW,HIGH.")
flags.DEFINE_list("objects", ["1", "3"], "Objects a frame: LOW,HIGH (inclusive).")
flags.DEFINE_list("shapes", ["ellipse", "rectangle", "triangle"], "Shape of class 1, 2, ... "
                  "in turn: ellipse, rectangle, triangle or line (thin).")
flags.DEFINE_list("class_probabilities", [], "How often an object is of class 1, 2, ...; "
                  "empty: uniform.")
flags.mark_flag_as_required("output")


def main(argv):
    del argv
    from segdata import prepare, records, synthetic
    out = os.path.join(FLAGS.output, "records")
    if os.path.isfile(os.path.join(out, records.MANIFEST_NAME)):
        return 0
    files = synthetic.generate(
        os.path.join(FLAGS.output, "files"), count=FLAGS.count, size=(FLAGS.size, FLAGS.size),
        num_classes=FLAGS.num_classes, seed=FLAGS.seed,
        object_size=tuple(float(v) for v in FLAGS.object_size),
        objects=tuple(int(v) for v in FLAGS.objects), shapes=FLAGS.shapes,
        class_probabilities=[float(v) for v in FLAGS.class_probabilities] or None)
    prepare.prepare(prepare.PrepareConfig(input=files, output=out, overwrite=True,
                                          progress=False))
    return 0


if __name__ == "__main__":
    app.run(main)
