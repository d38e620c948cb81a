"""Score a trained model on a split: Dice and IoU per class, mean IoU, pixel accuracy,
confusion matrix; writes JSON and a PNG figure.

    python tools/evaluate.py --model=RUN_DIR/model.keras --data_dir=RECORDS --split=test \
        [--original_size [--tile=model --tile_overlap=0.25]] [--tta=hflip] [--output=...]

Images are mapped to the model as its input contract says (segdata.serving, the same path
as predict and the SavedModel). Without --original_size the scores are at the model's input
resolution, with the mask resized by the same mapping (what training's metrics are);
--original_size scores every prediction at the image's own resolution (the resize undone
on the logits), which is what published numbers use; tiling needs it.
"""
import json
import os
import sys

from absl import app, flags

if not __package__:  # run as a file (python tools/x.py), not as tools.x
    import _bootstrap  # noqa: F401  (puts the project on sys.path)
from segdata import atomic

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "RUN_DIR/model.keras or RUN_DIR/export (SavedModel).")
flags.DEFINE_string("data_dir", None, "Records folder.")
flags.DEFINE_string("split", "test", "Split to score.")
flags.DEFINE_bool("original_size", False, "Score at each image's original resolution.")
flags.DEFINE_string("tile", "", "With --original_size: tiled inference, 'model' or H,W.")
flags.DEFINE_float("tile_overlap", 0.25, "Overlap of neighbouring windows, fraction of a side.")
flags.DEFINE_enum("tta", "none", ["none", "hflip", "hvflip"], "Test-time flips.")
flags.DEFINE_integer("batch_size", 8, "Windows per model call (--tile).", lower_bound=1)
flags.DEFINE_string("resize", "", "Only checked: the model's contract says how it resizes.")
flags.DEFINE_string("image_size", "", "Only checked: the model's contract says its size.")
flags.DEFINE_integer("edge_px", 0, "Also score the band of this many pixels along each "
                     "frame's edges and the rest apart (JSON keys 'edge', 'interior'): what "
                     "the convolutions' zero padding costs where a frame ends.", lower_bound=0)
flags.DEFINE_string("output", "", "JSON path; default next to the model: eval_<split>.json.")
flags.DEFINE_string("figure", "", "PNG path; default the JSON path with .png.")
flags.mark_flags_as_required(["model", "data_dir"])


def evaluate(predictor, data_dir, split, original_size, tile=None, overlap=0.25, tta="none",
             batch_size=8, edge_px=0):
    """Returns the scores dict; the confusion matrix accumulates over the whole split.
    edge_px > 0 adds the scores of each frame's edge band and of its interior."""
    import numpy as np
    import tensorflow as tf

    from segdata import records, serving
    from segmodels import metrics
    manifest = records.load_manifest(data_dir)
    contract = predictor.contract
    if manifest["num_classes"] != contract.num_classes:
        raise ValueError(f"--data_dir={data_dir} has {manifest['num_classes']} classes, the "
                         f"model {contract.num_classes}")
    if tile is not None and not original_size:
        raise ValueError("--tile needs --original_size: windows are cut from the original pixels")
    num_classes, ignore = contract.num_classes, contract.ignore_label
    cm = np.zeros((num_classes, num_classes), np.int64)
    edge_cm = cm.copy()
    for example in records.iter_split(data_dir, split):
        image, mask = tf.constant(example["image"]), tf.constant(example["mask"])
        if original_size:
            logits, seen = predictor.logits(image, tile, overlap, tta, batch_size)
            truth = tf.where(seen[..., None], mask, tf.cast(ignore, tf.uint8))
        else:
            model_input, truth, _ = serving.to_model_input(image, contract, mask)
            logits = serving.flip_averaged(
                lambda x: tf.cast(predictor.model_fn(x[None]), tf.float32)[0], model_input, tta)
        cm += np.asarray(metrics.confusion_matrix(truth[None], logits[None], num_classes, ignore))
        if edge_px:
            height, width = truth.shape[:2]
            rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
            edge = ((rows < edge_px) | (rows >= height - edge_px)
                    | (cols < edge_px) | (cols >= width - edge_px))[..., None]
            edge_cm += np.asarray(metrics.confusion_matrix(
                tf.where(edge, truth, tf.cast(ignore, truth.dtype))[None], logits[None],
                num_classes, ignore))

    def scores_of(counts):
        return {k: np.asarray(v).tolist()
                for k, v in metrics.scores(counts.astype(np.float32)).items()}
    scores = scores_of(cm)
    if edge_px:
        # the interior's counts are the rest of the frame's
        regions = {"edge": edge_cm, "interior": cm - edge_cm}
        scores.update(edge_px=edge_px, **{name: dict(scores_of(counts),
                                                     confusion_matrix=counts.tolist())
                                          for name, counts in regions.items()})
    scores.update(confusion_matrix=cm.tolist(), split=split, original_size=original_size,
                  tile=tile, tile_overlap=overlap if tile else None, tta=tta,
                  class_names=list(contract.class_names or [str(i) for i in range(num_classes)]))
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
    with atomic.replacing(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)


def main(argv):
    del argv
    from segtrain import startup
    startup.quiet_python_logs()
    from segdata import inference, serving
    from segtrain import cli
    try:
        if FLAGS.tile:
            serving.check_tile_overlap(FLAGS.tile_overlap)
        predictor = inference.load(FLAGS.model)
        predictor.contract.check(resize=FLAGS.resize, image_size=cli.parse_image_size(
            FLAGS.image_size) if FLAGS.image_size else None)
        scores = evaluate(predictor, FLAGS.data_dir, FLAGS.split, FLAGS.original_size,
                          cli.parse_tile(FLAGS.tile), FLAGS.tile_overlap, FLAGS.tta,
                          FLAGS.batch_size, FLAGS.edge_px)
    except ValueError as err:
        sys.stderr.write(f"evaluate: error: {err}\n")
        return 1
    output = FLAGS.output or os.path.join(os.path.dirname(os.path.abspath(FLAGS.model.rstrip("/"))),
                                          f"eval_{FLAGS.split}.json")
    with atomic.replacing(output) as handle:
        json.dump(scores, handle, indent=2)
    figure(scores, FLAGS.figure or os.path.splitext(output)[0] + ".png")
    print(f"{FLAGS.split}: dice={scores['dice']:.4f} mean_iou={scores['mean_iou']:.4f} "
          f"pixel_accuracy={scores['pixel_accuracy']:.4f} per_class_dice="
          f"{[round(v, 4) for v in scores['per_class_dice']]} -> {output}")
    for name in ("edge", "interior") if FLAGS.edge_px else ():
        part = scores[name]
        print(f"  {name} ({FLAGS.edge_px} px band{'' if name == 'edge' else ' left out'}): "
              f"dice={part['dice']:.4f} mean_iou={part['mean_iou']:.4f} per_class_dice="
              f"{[round(v, 4) for v in part['per_class_dice']]}")
    return 0


if __name__ == "__main__":
    app.run(main)
