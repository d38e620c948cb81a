"""Score a trained model on a split: Dice and IoU per class, mean IoU, pixel accuracy,
confusion matrix; writes JSON and a PNG figure.

    python tools/evaluate.py --model=RUN_DIR/model.keras --data_dir=RECORDS --split=test \
        [--original_size] [--output=RUN_DIR/eval_test.json]

--original_size scores every prediction at the image's own resolution (the resize
is undone on the logits), which is what published numbers use.
"""
import json
import os
import sys

from absl import app, flags

import _bootstrap  # noqa: F401  (puts the project on sys.path)

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "RUN_DIR/model.keras or RUN_DIR/export (SavedModel).")
flags.DEFINE_string("data_dir", None, "Records folder.")
flags.DEFINE_string("split", "test", "Split to score.")
flags.DEFINE_enum("resize", "stretch", ["stretch", "pad", "crop"], "Resize policy (as trained).")
flags.DEFINE_string("image_size", "", "Model input H,W for a SavedModel (a .keras knows its own).")
flags.DEFINE_bool("original_size", False, "Score at each image's original resolution.")
flags.DEFINE_string("output", "", "JSON path; default next to the model: eval_<split>.json.")
flags.DEFINE_string("figure", "", "PNG path; default the JSON path with .png.")
flags.mark_flags_as_required(["model", "data_dir"])


def evaluate(predict, input_size, channels, data_dir, split, policy, original_size):
    """Returns the scores dict; the confusion matrix accumulates over the whole split."""
    import numpy as np
    import tensorflow as tf

    from segdata import inference, records
    from segmodels import metrics
    manifest = records.load_manifest(data_dir)
    num_classes, ignore = manifest["num_classes"], manifest["ignore_label"]
    cm = np.zeros((num_classes, num_classes), np.float64)
    for example in records.iter_split(data_dir, split, channels=channels):
        image, mask = tf.constant(example["image"]), tf.constant(example["mask"])
        size = input_size or tuple(image.shape[:2])
        model_input, truth, matrix = inference.to_model_input(image, size, policy, mask, ignore)
        logits = predict(model_input[None])[0]
        if original_size:
            logits, seen = inference.to_original(logits, matrix, tuple(image.shape[:2]))
            truth = tf.where(seen[..., None], mask, tf.cast(ignore, tf.uint8))
        cm += np.asarray(metrics.confusion_matrix(truth[None], logits[None], num_classes, ignore))
    scores = {k: np.asarray(v).tolist() for k, v in metrics.scores(cm.astype(np.float32)).items()}
    scores.update(confusion_matrix=cm.tolist(), split=split, original_size=original_size,
                  class_names=manifest.get("class_names") or [str(i) for i in range(num_classes)])
    return scores


def figure(scores, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    names = scores["class_names"]
    fig, (bars, matrix) = plt.subplots(1, 2, figsize=(11, 4.5))
    x = np.arange(len(names))
    bars.bar(x - 0.2, scores["per_class_dice"], 0.4, label="Dice")
    bars.bar(x + 0.2, scores["per_class_iou"], 0.4, label="IoU")
    bars.set_xticks(x, names)
    bars.set_ylim(0, 1)
    bars.set_title(f"{scores['split']}: Dice {scores['dice']:.3f}, mIoU {scores['mean_iou']:.3f}")
    bars.legend()
    cm = np.asarray(scores["confusion_matrix"])
    normalised = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    matrix.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    matrix.set_xticks(x, names)
    matrix.set_yticks(x, names)
    matrix.set_xlabel("predicted")
    matrix.set_ylabel("true")
    for i in range(len(names)):
        for j in range(len(names)):
            matrix.text(j, i, f"{normalised[i, j]:.2f}", ha="center", va="center")
    matrix.set_title("confusion matrix (row-normalised)")
    fig.tight_layout()
    temp = path + ".partial.png"
    fig.savefig(temp, dpi=100)
    plt.close(fig)
    os.replace(temp, path)


def main(argv):
    del argv
    from segtrain import cli, export
    try:
        predict, input_size, channels = export.load_predictor(FLAGS.model)
        if FLAGS.image_size:
            input_size = cli.parse_image_size(FLAGS.image_size)
        scores = evaluate(predict, input_size, channels, FLAGS.data_dir, FLAGS.split,
                          FLAGS.resize, FLAGS.original_size)
    except ValueError as err:
        sys.stderr.write(f"evaluate: error: {err}\n")
        return 1
    output = FLAGS.output or os.path.join(os.path.dirname(os.path.abspath(FLAGS.model.rstrip("/"))),
                                          f"eval_{FLAGS.split}.json")
    with open(output + ".partial", "w") as handle:
        json.dump(scores, handle, indent=2)
    os.replace(output + ".partial", output)
    figure(scores, FLAGS.figure or os.path.splitext(output)[0] + ".png")
    print(f"{FLAGS.split}: dice={scores['dice']:.4f} mean_iou={scores['mean_iou']:.4f} "
          f"pixel_accuracy={scores['pixel_accuracy']:.4f} per_class_dice="
          f"{[round(v, 4) for v in scores['per_class_dice']]} -> {output}")
    return 0


if __name__ == "__main__":
    app.run(main)
