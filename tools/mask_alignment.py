"""Where a class's labels sit on the image, and a model's prediction on the labels, to a pixel:
a check for labels drawn beside the structure they mark.

    python tools/mask_alignment.py --data_dir=RECORDS --class_id=0 [--split=train] \
        [--model=RUN/best.keras]

Prints, for each shift (dy, dx) of at most one pixel, the mean image value under the class's
mask moved by it: for a class drawn on dark lines (membranes) the darkest shift says where
the lines are against the labels, (0, 0) when they agree. With --model, also the class's
Dice of the model's prediction moved by each shift: a model that learned where the labels
sit scores best unmoved and loses alike on either side. Flips mirror an offset between
labels and lines, so a model trained with them is shown it both ways and learns neither.
"""
import sys

from absl import app, flags

if not __package__:  # run as a file (python tools/x.py), not as tools.x
    import _bootstrap  # noqa: F401  (puts the project on sys.path)

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Records folder.")
flags.DEFINE_string("split", "train", "Split.")
flags.DEFINE_integer("class_id", None, "The class whose labels are checked.", lower_bound=0)
flags.DEFINE_string("model", "", "Optional: RUN/best.keras, model.keras or a SavedModel.")
flags.mark_flags_as_required(["data_dir", "class_id"])

SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
BORDER = 2  # pixels left out on each side: np.roll wraps around


def alignment(examples, class_id, ignore_label, predict=None):
    """{shift: mean image value under the shifted class mask}, and with `predict` (image ->
    class indices) {shift: the class's Dice of the shifted prediction}; both summed over
    every example before dividing."""
    import numpy as np
    inner = (slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    under, count = dict.fromkeys(SHIFTS, 0.0), dict.fromkeys(SHIFTS, 0)
    overlap, predicted, labelled = dict.fromkeys(SHIFTS, 0), dict.fromkeys(SHIFTS, 0), 0
    for example in examples:
        image = example["image"].astype(np.float64).mean(-1)
        mask = example["mask"][..., 0]
        truth, valid = mask == class_id, mask != ignore_label
        prediction = predict(example["image"]) == class_id if predict else None
        labelled += (truth & valid)[inner].sum()
        for shift in SHIFTS:
            moved = np.roll(truth, shift, (0, 1))[inner]
            under[shift] += image[inner][moved].sum()
            count[shift] += moved.sum()
            if predict:
                moved = np.roll(prediction, shift, (0, 1))[inner] & valid[inner]
                overlap[shift] += (moved & truth[inner]).sum()
                predicted[shift] += moved.sum()
    if not count[(0, 0)]:
        raise ValueError(f"--class_id={class_id}: no labelled pixel of it in the split")
    intensity = {shift: under[shift] / count[shift] for shift in SHIFTS}
    dice = {shift: 2 * overlap[shift] / (predicted[shift] + labelled) for shift in SHIFTS} \
        if predict else None
    return intensity, dice


def main(argv):
    del argv
    from segtrain import startup
    startup.quiet_python_logs()
    import tensorflow as tf

    from segdata import inference, records, serving
    try:
        manifest = records.load_manifest(FLAGS.data_dir)
        if FLAGS.class_id >= manifest["num_classes"]:
            raise ValueError(f"--class_id={FLAGS.class_id}: the records have "
                             f"{manifest['num_classes']} classes")
        predict = None
        if FLAGS.model:
            predictor = inference.load(FLAGS.model)
            predict = lambda image: serving.classes(  # noqa: E731
                predictor.logits(tf.constant(image))[0]).numpy()
        intensity, dice = alignment(records.iter_split(FLAGS.data_dir, FLAGS.split),
                                    FLAGS.class_id, manifest["ignore_label"], predict)
    except ValueError as err:
        sys.stderr.write(f"mask_alignment: error: {err}\n")
        return 1
    print("shift (dy, dx)   mean image under the labels" + ("   model Dice" if dice else ""))
    for shift in SHIFTS:
        print(f"{str(shift):>14}   {intensity[shift]:27.2f}" +
              (f"   {dice[shift]:10.4f}" if dice else ""))
    print(f"darkest: {min(SHIFTS, key=intensity.get)}, brightest: "
          f"{max(SHIFTS, key=intensity.get)}" +
          (f"; model best at {max(SHIFTS, key=dice.get)}" if dice else ""))
    return 0


if __name__ == "__main__":
    app.run(main)
