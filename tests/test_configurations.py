"""The configurations users run on GPUs, run through train.py on this CPU.

Axes: replicas {1, 2 logical CPUs with MirroredStrategy} x precision {float32,
mixed_float16, mixed_bfloat16} x augmentation {host, device} x LR schedule {constant,
cosine with warm-up} x run {fresh, killed mid-run and resumed}. The six cells below
are a covering array: every pair of values of two axes appears together in at least
one cell (the pairs are checked by test_cells_cover_every_pair). They also hold the
two triples behind past bugs: mixed_float16 + cosine + resume (cell 2) and 2 replicas
+ device augmentation (cells 4, 5).

    cell  replicas  precision       augment  schedule  run
    1     1         float32         host     constant  fresh
    2     1         mixed_float16   host     cosine    resumed
    3     1         mixed_bfloat16  device   constant  resumed
    4     2         float32         device   cosine    resumed
    5     2         mixed_float16   device   constant  fresh
    6     2         mixed_bfloat16  host     cosine    fresh

plus a 2-worker tools/launch_local.py cell (mixed_bfloat16, killed and resumed).
Each cell checks: the run finishes, the training loss went down, a resumed run
continues after the backup's epoch with each epoch's learning rate equal to the
schedule (an independent numpy formula) at the optimizer's step, and model.keras and
export/ load and predict the same masks.
"""
import csv
import itertools
import json
import math
import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from harness import ROOT, backup_epoch, python, start, wait_until
from harness import run as run_to_end
from segtrain import distribute

EPOCHS, STEPS, PEAK_LR = 3, 24, 0.01
COMMON = ["--plan=none", "--image_size=32", "--base_filters=4", "--depth=2", "--batch_size=4", "--dropout=0",
          "--loss=dice_ce", f"--learning_rate={PEAK_LR}", "--batch_norm",
          f"--epochs={EPOCHS}", f"--steps_per_epoch={STEPS}", "--patience=10"]
AXES = {"replicas": (1, 2), "precision": ("float32", "mixed_float16", "mixed_bfloat16"),
        "augment": ("host", "device"), "schedule": ("constant", "cosine"),
        "run": ("fresh", "resumed")}
CELLS = [
    (1, "float32", "host", "constant", "fresh"),
    (1, "mixed_float16", "host", "cosine", "resumed"),
    (1, "mixed_bfloat16", "device", "constant", "resumed"),
    (2, "float32", "device", "cosine", "resumed"),
    (2, "mixed_float16", "device", "constant", "fresh"),
    (2, "mixed_bfloat16", "host", "cosine", "fresh"),
]


def expected_learning_rate(schedule, step):
    """optim.learning_rate's value at `step`, written out: a 1-epoch linear warm-up, then
    cosine decay to 0 over the remaining epochs."""
    if schedule == "constant":
        return PEAK_LR
    warmup, decay = STEPS, (EPOCHS - 1) * STEPS
    if step < warmup:
        return PEAK_LR * (step + 1) / warmup
    return PEAK_LR * 0.5 * (1 + math.cos(math.pi * min(step - warmup, decay) / decay))


def cell_flags(replicas, precision, augment, schedule):
    flags = [f"--mixed_precision={precision}", f"--augment_on={augment}", "--aug_rotation=10"]
    if replicas == 2:
        flags += ["--strategy=mirrored", "--logical_cpus=2"]
    if schedule == "cosine":
        flags += ["--lr_schedule=cosine", "--warmup_epochs=1"]
    return flags


def kill_after_first_epoch(cmd, run_dir, timeout=240):
    """Starts `cmd`, SIGKILLs it (and its workers: the whole process group) once its backup
    holds an epoch; returns the epochs kept."""
    proc = start(cmd, start_new_session=True)
    assert wait_until(lambda: backup_epoch(run_dir) >= 1, timeout, proc, poll=0.02)
    assert proc.poll() is None, "the run ended before it could be killed mid-run"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = backup_epoch(run_dir)
    assert 1 <= kept < EPOCHS
    return kept


def check_run(run_dir, stdout, schedule, kept=None, replicas=1, precision="float32"):
    rows = list(csv.DictReader(open(run_dir / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))  # each epoch once
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0], losses
    if kept is not None:
        assert f"resumed from backup: {kept} epoch(s) already done" in stdout
        assert f"epoch {kept}/{EPOCHS}:" not in stdout and f"epoch {kept + 1}/{EPOCHS}:" in stdout
    steps_done = [int(float(r["iterations"])) for r in rows]
    if precision == "mixed_float16":
        # loss scaling skips the steps whose gradients overflowed: never more steps, in order
        assert all(0 < a < b for a, b in zip(steps_done, steps_done[1:]))
        assert all(s <= (e + 1) * STEPS for e, s in enumerate(steps_done))
    else:
        assert steps_done == [(e + 1) * STEPS for e in range(EPOCHS)]
    for row, step in zip(rows, steps_done):
        assert float(row["learning_rate"]) == pytest.approx(expected_learning_rate(schedule, step),
                                                            rel=1e-5, abs=1e-9)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == EPOCHS
    assert metrics["resumed_from_epoch"] == (kept or 0)
    model = keras.saving.load_model(str(run_dir / "model.keras"))
    images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 1)).astype("uint8")
    logits = np.asarray(model(images), np.float32)
    served = tf.saved_model.load(str(run_dir / "export")).signatures["serving_default"]
    masks = served(images=tf.constant(images))["mask"].numpy()[..., 0]
    assert masks.shape == (2, 32, 32)
    # both compute in the run's precision, in other op orders: half-precision rounding is
    # relative to the values (bfloat16: 8 bits), and was seen to move a logit by 1.6% of the
    # largest, which can flip pixels near the boundary
    margin = 0.03 * np.abs(logits[..., 0]).max() if precision != "float32" else 0
    decided = np.abs(logits[..., 0]) > margin
    np.testing.assert_array_equal(masks[decided], (logits[..., 0] > 0)[decided])
    assert decided.mean() > 0.9


def test_cells_cover_every_pair():
    names = list(AXES)
    for (i, a), (j, b) in itertools.combinations(enumerate(names), 2):
        for pair in itertools.product(AXES[a], AXES[b]):
            assert any((cell[i], cell[j]) == pair for cell in CELLS), (a, b, pair)


@pytest.mark.parametrize("replicas,precision,augment,schedule,run", CELLS,
                         ids=["-".join(map(str, cell)) for cell in CELLS])
def test_configuration(binary_records, tmp_path, replicas, precision, augment, schedule, run):
    run_dir = tmp_path / "run"
    cmd = python(os.path.join(ROOT, "train.py"), f"--data_dir={binary_records}",
                 f"--model_dir={run_dir}", *COMMON, *cell_flags(replicas, precision, augment, schedule))
    kept = kill_after_first_epoch(cmd, run_dir) if run == "resumed" else None
    stdout = run_to_end(cmd).stdout
    assert f'"replicas": {replicas}' in stdout and f"precision={precision}" in stdout
    if precision == "mixed_bfloat16":
        # a user on a CPU without bfloat16 hardware is told; one with it is not
        emulated = distribute.cpu_has_native_bfloat16() is False
        assert ("without bfloat16 hardware" in stdout) == emulated, stdout[:2000]
    check_run(run_dir, stdout, schedule, kept, replicas, precision)


def test_two_workers_mixed_bfloat16_killed_and_resumed(binary_records, tmp_path):
    run_dir = tmp_path / "mw"
    cmd = python(os.path.join(ROOT, "tools", "launch_local.py"), "--workers=2",
                 "--grace_s=5", "--", f"--data_dir={binary_records}", f"--model_dir={run_dir}",
                 *COMMON, "--mixed_precision=mixed_bfloat16", "--aug_rotation=10",
                 "--progress_interval_s=0")
    kept = kill_after_first_epoch(cmd, run_dir)
    stdout = run_to_end(cmd, timeout=400).stdout
    assert "exit codes: [0, 0]" in stdout and '"replicas": 2' in stdout
    check_run(run_dir, stdout, "constant", kept, precision="mixed_bfloat16")
    # only the chief prints progress and writes files
    assert "[worker 0] epoch 3/3 step" in stdout and "[worker 1] epoch 3/3 step" not in stdout
    assert not list(run_dir.glob(".worker*")) and not list((run_dir / "backup").glob("*/model.keras"))
