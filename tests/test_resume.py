"""Training that continues correctly wherever it resumes, and the loop's other promises:
precision changes, schedule changes, a typo in --monitor, an unfrozen encoder's first
updates, split-level validation loss, a watchdog that follows steps, seeds on a tf.data
service and over local workers, and the automatic precision choice."""
import csv
import json
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from harness import ROOT, python, run, train
from segdata import pipeline, records, service, spec
from segtrain import distribute, optim


def _optimizer_arrays(checkpoint):
    """The optimizer's per-variable state (moments, velocities) in a backup, by key."""
    return {name: tf.train.load_variable(checkpoint, name)
            for name, shape in tf.train.list_variables(checkpoint)
            if name.startswith("optimizer/_variables/") and shape}


def test_resume_in_another_precision_carries_the_optimizer(binary_records, tmp_path):
    """A mixed_float16 run (a GPU host's `auto`) resumed in float32 (a CPU): one line says
    so, the optimizer step continues, and the SGD velocities carry over. With a learning
    rate of 0 on resume, each step only multiplies them by the momentum (0.9): after 3
    steps they must be 0.729 of the backup's, where a reset optimizer would hold zeros."""
    run_dir = tmp_path / "run"
    common = ["--optimizer=sgd", "--loss=ce", "--steps_per_epoch=3", "--export=false",
              "--noaug_hflip"]
    train(binary_records, run_dir, *common, "--mixed_precision=mixed_float16", "--epochs=1",
          "--learning_rate=0.1")
    result = train(binary_records, run_dir, *common, "--mixed_precision=float32", "--epochs=2",
                   "--learning_rate=0")
    assert ("resuming a mixed_float16 run in float32: the weights and the optimizer's step, "
            "moments and schedule position carry over; its float16 loss scale is dropped"
            ) in result.stdout
    rows = list(csv.DictReader(open(run_dir / "log.csv")))
    assert float(rows[1]["iterations"]) == float(rows[0]["iterations"]) + 3
    before = _optimizer_arrays(str(run_dir / "backup" / "ckpt-1"))
    after = _optimizer_arrays(str(run_dir / "backup" / "ckpt-2"))
    assert before and before.keys() == after.keys()
    assert max(np.abs(v).max() for v in before.values()) > 1e-4
    for name in before:
        np.testing.assert_allclose(after[name], 0.9 ** 3 * before[name], rtol=1e-4, atol=1e-9)
    # and back to float16: the loss scale starts again, the optimizer still carries over
    again = train(binary_records, run_dir, *common, "--mixed_precision=mixed_float16",
                  "--epochs=3", "--learning_rate=0")
    assert "resuming a float32 run in mixed_float16" in again.stdout
    assert "epoch 3/3" in again.stdout


def test_a_decaying_schedule_refuses_other_schedule_flags_on_resume(binary_records, tmp_path):
    """A cosine run extended from 1 to 2 epochs would leap from ~0 back to half its peak:
    one line naming the flag and what to pass, exit 1, the run folder untouched. A
    constant learning rate may be extended (the precision test above does)."""
    run_dir = tmp_path / "run"
    train(binary_records, run_dir, "--lr_schedule=cosine", "--epochs=1", "--steps_per_epoch=2",
          "--export=false")
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    result = train(binary_records, run_dir, "--lr_schedule=cosine", "--epochs=2",
                   "--steps_per_epoch=2", "--export=false", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = [l for l in result.stderr.splitlines() if l.startswith("train.py: error:")]
    assert "--epochs=1 (now --epochs=2)" in line and "Resume with --epochs=1" in line
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_every_monitor_name_is_logged(binary_records, tmp_path):
    """What --monitor accepts is what log.csv holds; a typo fails before anything is built."""
    from segtrain.loop import MONITORS
    run_dir = tmp_path / "run"
    train(binary_records, run_dir, "--epochs=1", "--steps_per_epoch=1", "--export=false",
          "--monitor=val_mean_iou")
    header = next(csv.reader(open(run_dir / "log.csv")))
    assert set(MONITORS) <= set(header)
    assert json.loads((run_dir / "metrics.json").read_text())["best_val_mean_iou"] is not None
    result = train(binary_records, tmp_path / "typo", "--monitor=val_dic", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--monitor=val_dic" in result.stderr and "val_mean_iou" in result.stderr
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_unfrozen_variables_take_a_first_adam_step_of_the_learning_rate(schedule):
    """Adam on one variable 1000 times, then on a second: with its own state, the second's
    first step is the learning rate (at the main schedule's step) for every element; one
    optimizer for both steps it ~2.5x further (bias correction of step 1001 on zero
    moments), the bug a frozen encoder hit on unfreezing."""
    rate = optim.learning_rate(1e-3, schedule, 2000)
    expected = 1e-3 if schedule == "constant" else float(rate(1000))

    def first_step_of_second(fresh):
        first, second = keras.Variable(np.zeros(4, "float32")), keras.Variable(np.zeros(4, "float32"))
        optimizer = optim.build_optimizer("adam", rate,
                                          fresh_start_variables=[second] if fresh else ())
        optimizer.build([first, second])
        rng = np.random.default_rng(0)
        for _ in range(1000):
            optimizer.apply([tf.constant(rng.normal(size=4), tf.float32)], [first])
        optimizer.apply([tf.constant([1.0, -2.0, 0.5, 3.0]), tf.constant(rng.normal(size=4), tf.float32)],
                        [second, first])
        assert int(optimizer.iterations.numpy()) == 1001
        return np.abs(np.asarray(second))
    np.testing.assert_allclose(first_step_of_second(True), expected, rtol=1e-3)
    assert first_step_of_second(False).min() > 2 * expected


def test_validation_loss_is_the_splits_whatever_the_batch(binary_records, tmp_path):
    """With a zero learning rate (the initial weights), val_loss is one number per split:
    batch 6 and batch 4 (8 val examples: batches 6+2 and 4+4) give the same Dice loss, as
    does an independent numpy Dice over the whole split with the saved model."""
    losses = []
    for batch in (6, 4):
        run_dir = tmp_path / f"b{batch}"
        train(binary_records, run_dir, f"--batch_size={batch}", "--epochs=1",
              "--steps_per_epoch=1", "--learning_rate=0", "--loss=dice", "--noaug_hflip")
        losses.append(float(next(csv.DictReader(open(run_dir / "log.csv")))["val_loss"]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    model = keras.saving.load_model(str(tmp_path / "b6" / "model.keras"))
    inter, denom = np.zeros(2), np.zeros(2)
    for example in records.read_split(binary_records, "val"):
        image = tf.image.resize(example["image"], (32, 32))
        image = np.clip(np.round(image.numpy()), 0, 255).astype("uint8")
        mask = tf.image.resize(example["mask"], (32, 32), method="nearest").numpy()[..., 0]
        p = 1 / (1 + np.exp(-np.asarray(model(image[None]), np.float64)[0, ..., 0]))
        probs, onehot = np.stack([1 - p, p], -1), np.eye(2)[mask]
        inter += (probs * onehot).sum((0, 1))
        denom += probs.sum((0, 1)) + onehot.sum((0, 1))
    assert losses[0] == pytest.approx(1 - ((2 * inter + 1) / (denom + 1)).mean(), rel=1e-4)


WATCHDOG_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    import keras, numpy as np, tensorflow as tf
    import segmodels
    from segtrain import loop
    keras.utils.set_random_seed(0)
    model = segmodels.build_model("unet", (16, 16, 1), 2, base_filters=2, depth=1, dropout=0)
    optimizer = keras.optimizers.SGD(0.01)
    optimizer.build(model.trainable_variables)

    def pause():
        return tf.py_function(lambda: np.float32(time.sleep({step_s})), [], tf.float32)

    def slow_step(batch):
        with tf.control_dependencies([pause()]):
            return tf.identity(batch["image"]), tf.identity(batch["mask"])

    def slow_batch(batch):
        with tf.control_dependencies([pause()]):
            return {{k: tf.identity(v) for k, v in batch.items()}}

    batch = {{"image": np.zeros((2, 16, 16, 1), "uint8"), "mask": np.zeros((2, 16, 16, 1), "uint8")}}
    data = tf.data.Dataset.from_tensors(batch)
    trainer = loop.Trainer(tf.distribute.get_strategy(), model, optimizer,
                           segmodels.LOSSES["ce"].bound(), 2, preprocess=slow_step,
                           steps_per_loop={steps})
    callbacks = keras.callbacks.CallbackList([], model=model)
    backup = loop.Backup(sys.argv[1], model, optimizer)
    trainer.fit(data.repeat(), data.repeat({steps}).map(slow_batch), 1, {steps}, callbacks,
                backup, print, step_timeout_s={timeout_s})
    print("finished")
""")


def test_watchdog_follows_steps_not_loops(tmp_path):
    """10 steps of 0.9 s in one loop, then 9 validation batches of 0.9 s, under a 6 s step
    timeout: each step and batch finishes well inside it, so the run must finish (the
    watchdog used to beat once per loop and once per validation pass, and killed it)."""
    script = tmp_path / "slow.py"
    script.write_text(WATCHDOG_SCRIPT.format(root=ROOT, step_s=0.9, steps=10, timeout_s=6))
    result = run(python(str(script), str(tmp_path / "backup")), timeout=180, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "finished" in result.stdout and "no training step finished" not in result.stderr


def test_service_workers_never_share_a_seed(sharded_records, data_service_address):
    """2 tf.data service workers, each counting its own examples: one pass yields every
    training example once, and no seed twice, in one pass or over two."""
    def stream(repeat):
        dataset = pipeline.training_dataset(
            sharded_records, spec.InputSpec.for_records(sharded_records, (32, 32)), 4,
            repeat=repeat, with_ids=True, augment_on="device", on_service=True)
        return service.distribute(dataset, data_service_address).unbatch()
    expected = sorted(e["id"] for e in records.read_split(sharded_records, "train"))
    one_pass = [(e["id"].numpy().decode(), tuple(e["seed"].numpy())) for e in stream(False)]
    assert sorted(i for i, _ in one_pass) == expected
    assert len({s for _, s in one_pass}) == len(one_pass)
    two_passes = [tuple(e["seed"].numpy()) for e in stream(True).take(2 * len(expected))]
    assert len(set(two_passes)) == len(two_passes)


def test_local_workers_see_each_example_once_an_epoch(sharded_records):
    """3 train shards over 2 input pipelines (2 local workers): an epoch of each worker
    (steps x per-replica batch) covers every example once, with distinct seeds; sharding
    by file gave one worker 2 shards and the other 1, read twice in the epoch."""
    count = records.load_manifest(sharded_records)["splits"]["train"]["count"]
    per_replica, steps = 2, count // 4
    seen = []
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker,
                                             num_replicas_in_sync=2)
        dataset = pipeline.training_dataset(
            sharded_records, spec.InputSpec.for_records(sharded_records, (32, 32)), per_replica,
            seed=42, input_context=context, with_ids=True, augment_on="device")
        seen += [(e["id"].numpy().decode(), tuple(e["seed"].numpy()))
                 for e in dataset.unbatch().take(steps * per_replica)]
    assert len(records.load_manifest(sharded_records)["splits"]["train"]["shards"]) == 3
    assert sorted(i for i, _ in seen) == sorted(e["id"] for e in records.read_split(
        sharded_records, "train"))
    assert len({s for _, s in seen}) == len(seen)


@pytest.mark.parametrize("capabilities,expected", [
    ([], "float32"), ([(6, 1)], "float32"), ([(7, 0)], "mixed_float16"),
    ([(7, 5), (7, 5)], "mixed_float16"), ([(8, 0)], "mixed_bfloat16"),
    ([(9, 0), (9, 0)], "mixed_bfloat16"), ([(8, 6), (7, 5)], "mixed_float16")])
def test_auto_precision_from_the_gpus(capabilities, expected):
    assert distribute.choose_precision("auto", capabilities) == expected
    assert distribute.choose_precision("float32", capabilities) == "float32"
