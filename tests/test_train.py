"""train.py end to end, in subprocesses (absl flags are process-global)."""
import csv
import json
import os
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import MEMBRANE
from harness import ROOT, tool, train, train_cmd
from segdata import records
from segtrain.callbacks import monitor_mode

def _test_split_confusion(model, records_dir, size):
    """The test split scored by numpy: stretch-resized as the pipeline does, np.add.at."""
    cm = np.zeros((2, 2), np.int64)
    for example in records.read_split(records_dir, "test"):
        image = tf.image.resize(example["image"], size, antialias=False)
        image = np.clip(np.round(image.numpy()), 0, 255).astype("uint8")
        mask = tf.image.resize(example["mask"], size, method="nearest").numpy()[..., 0]
        pred = (np.asarray(model(image[None]))[0, ..., 0] > 0).astype(int)
        np.add.at(cm, (mask.ravel(), pred.ravel()), 1)
    return cm


def test_two_epochs_end_to_end(binary_records, tmp_path):
    run = tmp_path / "run"
    result = train(binary_records, run, "--epochs=2", "--steps_per_epoch=3", "--aug_rotation=10",
                   "--noprogress", "--progress_interval_s=0", "--steps_per_loop=1")
    for name in ("metrics.json", "model.keras", "best.keras", "flags.txt", "log.csv",
                 "export/saved_model.pb"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert "--model=unet" in (run / "flags.txt").read_text()
    assert "epoch 2/2:" in result.stdout
    assert " step " not in result.stdout  # --noprogress, though every loop would print
    # the test scores are the model's on the test split, counted independently
    model = keras.saving.load_model(str(run / "model.keras"))
    cm = _test_split_confusion(model, binary_records, (32, 32))
    np.testing.assert_array_equal(metrics["confusion_matrix"], cm)
    tp = np.diag(cm)
    dice, iou = 2 * tp / (cm.sum(0) + cm.sum(1)), tp / (cm.sum(0) + cm.sum(1) - tp)
    np.testing.assert_allclose(metrics["per_class_dice"], dice, rtol=1e-5)
    np.testing.assert_allclose(metrics["dice"], dice.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["mean_iou"], iou.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["pixel_accuracy"], tp.sum() / cm.sum(), rtol=1e-6)
    # model.keras (the best weights) and the SavedModel agree at the training size...
    images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 1)).astype("uint8")
    logits = np.asarray(model(images))
    served = tf.saved_model.load(str(run / "export")).signatures["serving_default"]
    out = served(images=tf.constant(images))
    np.testing.assert_array_equal(out["mask"].numpy()[..., 0], (logits[..., 0] > 0).astype("uint8"))
    # ...and at another size, as the Keras model through the training's own mapping
    from segdata import serving
    contract = serving.InputContract.load(str(run))
    assert contract == serving.InputContract((32, 32), "stretch", 1, 2, 255, None, True)
    other = np.random.default_rng(1).integers(0, 255, (50, 70, 1)).astype("uint8")
    logits, seen = serving.predict_logits(model, other, contract)
    served_mask = served(images=tf.constant(other[None]))["mask"].numpy()[0, ..., 0]
    decided = np.abs(logits.numpy()[..., 0]) > 1e-4
    np.testing.assert_array_equal(served_mask[decided], serving.classes(logits).numpy()[decided])
    assert decided.mean() > 0.99 and seen.numpy().all()


def _run_weights(run_dir):
    return keras.saving.load_model(str(run_dir / "best.keras")).get_weights()


def test_two_replicas_train_and_evaluate_as_one(binary_records, tmp_path):
    """Training: global batch 8 on 2 replicas (4 each) and on 1 give the same weights after 3
    SGD steps, within float32 rounding. CE is a per-pixel mean, so per-replica means /
    replicas, summed, are the global mean; SGD, not Adam, whose update does not change when
    every gradient is scaled and would hide a wrong loss scaling or reduction.
    Evaluation: with a zero learning rate both runs hold the initial weights, and batch 6
    divides neither val (8 examples) nor test (4): 2 replicas must give the single device's
    confusion matrices exactly (padding adds nothing, no example is dropped or doubled)."""
    sgd = ["--batch_size=8", "--epochs=1", "--steps_per_epoch=3", "--noaug_hflip",
           "--deterministic", "--loss=ce", "--optimizer=sgd", "--learning_rate=0.1",
           "--export=false"]
    frozen = ["--batch_size=6", "--epochs=1", "--steps_per_epoch=1", "--learning_rate=0",
              "--export=false"]
    mirrored = ["--strategy=mirrored", "--logical_cpus=2"]
    train(binary_records, tmp_path / "one", *sgd)
    result = train(binary_records, tmp_path / "two", *sgd, *mirrored)
    assert '"replicas": 2' in result.stdout
    train(binary_records, tmp_path / "frozen_one", *frozen)  # --loss=dice, the default
    train(binary_records, tmp_path / "frozen_two", *frozen, *mirrored)
    one, two = _run_weights(tmp_path / "one"), _run_weights(tmp_path / "two")
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # the steps moved the weights far more than the tolerance: a gradient off by the
    # replica count would show
    moved = max(np.abs(a - b).max() for a, b in zip(one, _run_weights(tmp_path / "frozen_one")))
    assert moved > 1e-3
    metrics = [json.loads((tmp_path / n / "metrics.json").read_text())
               for n in ("frozen_one", "frozen_two")]
    assert metrics[0]["confusion_matrix"] == metrics[1]["confusion_matrix"]
    assert np.sum(metrics[0]["confusion_matrix"]) == 4 * 32 * 32
    rows = [next(csv.DictReader(open(tmp_path / n / "log.csv"))) for n in ("frozen_one", "frozen_two")]
    for key in ("val_dice", "val_mean_iou", "val_pixel_accuracy"):
        assert rows[0][key] == rows[1][key], key
    # the split's Dice loss, not a mean of batch losses (batches 6+2 on one replica, 3+1
    # on each of two): the same up to the order of float sums
    assert float(rows[0]["val_loss"]) == pytest.approx(float(rows[1]["val_loss"]), rel=1e-5)


def test_steps_per_loop_gives_the_same_weights_and_metrics(binary_records, tmp_path):
    """6 steps an epoch as loops of 4 + 2 and as 6 single steps, with augmentation: the
    same weights bit for bit (which also holds --deterministic to its word: two processes,
    one result) and the same epoch metrics."""
    common = ["--epochs=2", "--steps_per_epoch=6", "--aug_rotation=15", "--deterministic",
              "--export=false"]
    train(binary_records, tmp_path / "single", *common, "--steps_per_loop=1")
    train(binary_records, tmp_path / "looped", *common, "--steps_per_loop=4")
    for a, b in zip(_run_weights(tmp_path / "single"), _run_weights(tmp_path / "looped")):
        np.testing.assert_array_equal(a, b)
    single, looped = (list(csv.DictReader(open(tmp_path / n / "log.csv")))
                      for n in ("single", "looped"))
    assert len(single) == len(looped) == 2
    for a, b in zip(single, looped):
        for key in ("loss", "dice", "mean_iou", "val_loss", "val_dice", "iterations"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-6), key


def test_a_run_that_learns_nothing_says_so(binary_records, tmp_path):
    """A zero learning rate with CE over whole epochs (the same examples each epoch, no
    augmentation): the epoch loss cannot move, which the run must report."""
    run = tmp_path / "frozen"
    result = train(binary_records, run, "--epochs=3", "--learning_rate=0", "--loss=ce",
                   "--noaug_hflip", "--patience=5", "--export=false")
    warnings = [line for line in result.stdout.splitlines() if line.startswith("WARNING: epoch")]
    assert len(warnings) == 1 and "likely collapsed" in warnings[0]
    assert "the training loss has not moved for 2 epochs" in result.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["collapse"] == warnings[0][len("WARNING: "):]
    # a run that learns is not flagged: tests/test_tools.py's sweep has one beside a frozen one


def test_progress_bar_on_a_terminal(binary_records, tmp_path):
    """On a terminal (a pty here) Keras's Progbar draws steps, ETA, images/s and the loss."""
    import pty
    outputs = {}
    for name, extra in (("bar", []),):
        leader, follower = pty.openpty()
        cmd = train_cmd(binary_records, tmp_path / name, "--epochs=1", "--steps_per_epoch=20",
                        "--steps_per_loop=5", "--export=false", *extra)
        proc = subprocess.Popen(cmd, stdout=follower, stderr=subprocess.DEVNULL)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the pty closes when the process ends
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=120) == 0
        os.close(leader)
        outputs[name] = b"".join(chunks).decode(errors="replace")
    bar = outputs["bar"]
    for piece in ("5/20", "20/20", "━", "images/s", "loss:"):
        assert piece in bar, piece
    assert "\r" in bar  # (--noprogress: tests/test_train.py::test_two_epochs_end_to_end)


def test_early_stopping_with_zero_learning_rate(binary_records, tmp_path):
    run = tmp_path / "es"
    result = train(binary_records, run, "--epochs=10", "--steps_per_epoch=1", "--patience=2",
                   "--learning_rate=0", "--export=false", "--noaug_hflip")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stopped_epoch"] == 3 and metrics["epochs_run"] == 3  # patience + 1
    assert metrics["best_epoch"] == 1
    assert "epoch 4/10" not in result.stdout


def test_monitor_mode_derivation():
    assert monitor_mode("val_loss") == "min"
    assert monitor_mode("val_dice") == "max"
    assert monitor_mode("val_mean_iou") == "max"
    assert monitor_mode("val_dice", "min") == "min"


@pytest.mark.parametrize("extra,message", [
    (["--batch_size=0"], "--batch_size"),
    (["--model=segnet"], "--model"),
    (["--image_size=30"], "--image_size"),
    (["--strategy=mirrored", "--logical_cpus=2", "--batch_size=3"], "--batch_size=3"),
    (["--num_classes=5"], "--num_classes=5"),
    (["--data_dir=/nonexistent/records"], "manifest"),
    # each recipe's every flag exists and passes its validators: the run gets as far as the data
    ([f"--flagfile={os.path.join(ROOT, 'recipes', 'membrane.flags')}",
      "--data_dir=/nonexistent/records"], "manifest"),
    ([f"--flagfile={os.path.join(ROOT, 'recipes', 'membrane_448.flags')}",
      "--data_dir=/nonexistent/records"], "manifest"),
])
def test_bad_flags_one_clear_line(binary_records, tmp_path, extra, message):
    result = train(binary_records, tmp_path / "bad", *extra, timeout=120, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert not (tmp_path / "bad").exists()  # nothing written


def test_model_dir_that_is_a_file_is_one_clear_line(binary_records, tmp_path):
    path = tmp_path / "taken"
    path.write_text("not a folder")
    result = train(binary_records, path, "--epochs=1", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"--model_dir={path} is a file" in result.stderr
    assert path.read_text() == "not a folder"


def test_resuming_with_another_model_names_the_flags(binary_records, tmp_path):
    run = tmp_path / "run"
    train(binary_records, run, "--epochs=1", "--steps_per_epoch=1", "--export=false")
    before = {p.name: p.stat().st_mtime_ns for p in run.rglob("*")}
    result = train(binary_records, run, "--epochs=2", "--steps_per_epoch=1", "--model=fcn8s",
                   "--fc_filters=8", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = [l for l in result.stderr.splitlines() if l.startswith("train.py: error:")]
    assert "--model=unet (now --model=fcn8s)" in line and "--fc_filters" in line
    assert "new --model_dir" in line and "flags.txt" in line
    assert {p.name: p.stat().st_mtime_ns for p in run.rglob("*")} == before


@pytest.mark.skipif(not os.path.isdir(MEMBRANE), reason="shared membrane data not present")
def test_membrane_acceptance(tmp_path):
    """Real EM data: the model must beat the trivial all-cell answer on the membrane class.

    Predicting "all cell" scores membrane Dice 0 and mIoU ~0.39. Thresholds: membrane
    Dice > 0.45 and mIoU > 0.5 need real membrane detection, yet leave room below what a
    width-8 UNet reaches at 192 px in these 100 steps (0.57-0.64 / 0.61-0.64 over seeds
    42 and 1, 2 cores).
    """
    records = tmp_path / "mem"
    tool("prepare_dataset.py", f"--input={MEMBRANE}", f"--output={records}")
    run_dir = tmp_path / "run"
    train(records, run_dir, "--image_size=192", "--base_filters=8", "--depth=4",
          "--batch_size=4", "--epochs=10", "--steps_per_epoch=10", "--learning_rate=2e-3",
          "--loss=ce", "--aug_vflip", "--dropout=0", "--patience=20", "--cache",
          "--mixed_precision=float32", "--export=false", timeout=900)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    membrane_dice = metrics["per_class_dice"][0]
    assert membrane_dice > 0.45, metrics
    assert metrics["mean_iou"] > 0.5, metrics


def test_best_checkpoint_is_the_early_stops_best_epoch(tmp_path):
    """best.keras holds the epoch early stopping counts as best (an improvement by more
    than min_delta): an epoch better by less is not saved, so the checkpoint, metrics.json's
    best_epoch and a resume agree."""
    from segtrain import callbacks
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    run_callbacks = keras.callbacks.CallbackList(
        callbacks.make_callbacks(str(tmp_path), "val_mean_iou", "auto", patience=5,
                                 min_delta=0.01, is_chief=True), model=model)
    best = tmp_path / "best.keras"

    def saved_marker():
        return float(keras.saving.load_model(str(best)).get_weights()[1][0])

    run_callbacks.on_train_begin()
    for epoch, score in enumerate([0.5, 0.505, 0.52, 0.515]):
        model.layers[0].bias.assign([float(epoch)])  # which epoch a checkpoint holds
        run_callbacks.on_epoch_begin(epoch)
        run_callbacks.on_epoch_end(epoch, {"val_mean_iou": score})
        if epoch == 1:  # 0.505 is not 0.01 better than 0.5
            assert saved_marker() == 0
    assert saved_marker() == 2
    early_stopping = run_callbacks.callbacks[0]
    assert early_stopping.best_epoch == 2 and early_stopping.best == 0.52
    assert sorted(p.name for p in tmp_path.iterdir() if "partial" in p.name) == []
