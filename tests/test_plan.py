"""The training plan (--plan=auto): decisions for a few fingerprints and machines, the budget,
overrides, and plan.json through train.py as a user runs it."""
import json
import time

import pytest

from harness import TINY, train
from segtrain import plan as planning

CPU = planning.Machine("cpu", 1, host_memory_gib=16.0, native_bfloat16=True)
OLD_CPU = planning.Machine("cpu", 1, host_memory_gib=16.0, native_bfloat16=False)
FOUR_GPUS = planning.Machine("gpu", 4, host_memory_gib=256.0, gpu_memory_gib=80.0)


def manifest(sizes, frequency, frames_with, channels=1, bits=8, train=140, val=40, test=20,
             object_area=200.0):
    """A manifest with a fingerprint: `sizes` [(h, w, frames)], per-class pixel `frequency`
    and `frames_with` (frames holding each class)."""
    frames = sum(n for _, _, n in sizes)
    largest = [max(h for h, _, _ in sizes), max(w for _, w, _ in sizes)]
    ordered = sorted(sizes, key=lambda s: s[0] * s[1])
    middle, seen = None, 0
    for h, w, n in ordered:
        seen += n
        if middle is None and seen * 2 >= frames:
            middle = [h, w]
    return {"num_classes": len(frequency), "ignore_label": 255,
            "splits": {name: {"count": count, "max_size": largest}
                       for name, count in (("train", train), ("val", val), ("test", test))},
            "fingerprint": {"frames": frames, "distinct_sizes": len(sizes),
                            "sizes": [list(s) for s in sizes], "median_size": middle,
                            "channels": channels, "bits": bits, "class_frequency": frequency,
                            "frames_with_class": frames_with,
                            "median_object_area": [None] + [object_area] * (len(frequency) - 1)}}


BALANCED_BINARY = manifest([(64, 64, 200)], [0.6, 0.4], [200, 200])
RARE_BINARY = manifest([(64, 64, 200)], [0.99, 0.01], [200, 40])


def size_of(text):
    return tuple(int(v) for v in text.split(","))


def test_budget_spellings():
    assert (planning.Budget.parse("2000steps").amount, planning.Budget.parse("2000steps").unit) \
        == (2000, "steps")
    assert planning.Budget.parse("10min").unit == "min"
    assert planning.Budget.parse("2.5min").amount == 2.5
    assert str(planning.Budget.parse("50epochs")) == "50epochs"
    for bad in ("2000", "10 minutes", "-3steps", "0epochs", "steps"):
        with pytest.raises(planning.PlanError, match="--budget"):
            planning.Budget.parse(bad)


def test_tiny_frames_train_whole_and_large_frames_in_windows():
    tiny = planning.make_plan(BALANCED_BINARY, CPU).values
    assert size_of(tiny["image_size"]) == (64, 64) and tiny["resize"] == "stretch"
    assert "train_crop" not in tiny
    assert 64 / 2 ** tiny["depth"] >= 8 and tiny["depth"] >= 2

    scenes = manifest([(2048, 2048, 50)], [0.7, 0.3], [50, 50], train=35, val=10, test=5)
    on_cpu = planning.make_plan(scenes, CPU).values
    on_gpu = planning.make_plan(scenes, FOUR_GPUS).values
    assert "image_size" not in on_cpu and size_of(on_cpu["train_crop"]) == (256, 256)
    assert size_of(on_gpu["train_crop"]) == (512, 512)
    assert on_cpu["data_scale"] == 1.0

    # frames of many sizes: windows, no wider than the smaller median side
    mixed = manifest([(300, 500, 60), (480, 640, 60), (200, 220, 80)], [0.7, 0.3], [200, 200])
    crop = size_of(planning.make_plan(mixed, CPU).values["train_crop"])
    assert crop[0] <= 256 and crop[1] <= 256 and crop[0] % 16 == 0


def test_frames_not_a_multiple_of_the_stride_are_padded_not_stretched():
    values = planning.make_plan(manifest([(100, 150, 100)], [0.6, 0.4], [100, 100]), CPU).values
    height, width = size_of(values["image_size"])
    multiple = 2 ** values["depth"]
    assert values["resize"] == "pad"
    assert height % multiple == 0 and width % multiple == 0
    assert 100 <= height < 100 + multiple and 150 <= width < 150 + multiple


def test_cpu_batch_carries_a_fixed_pixel_load_and_gpu_batch_follows_memory():
    for side in (64, 128, 256, 512):
        data = manifest([(side, side, 200)], [0.6, 0.4], [200, 200])
        batch = planning.make_plan(data, CPU).values["batch_size"]
        assert batch >= 2
        if 2 <= planning.CPU_STEP_PIXELS / side ** 2 <= 16:
            assert batch * side * side == pytest.approx(planning.CPU_STEP_PIXELS, rel=0.5)
    data = manifest([(512, 512, 200)], [0.6, 0.4], [200, 200])
    gpu = planning.make_plan(data, FOUR_GPUS).values
    small_gpu = planning.make_plan(data, planning.Machine("gpu", 4, 256.0, gpu_memory_gib=16.0)).values
    assert gpu["batch_size"] % 4 == 0 and small_gpu["batch_size"] % 4 == 0
    assert gpu["batch_size"] > small_gpu["batch_size"]
    assert gpu["base_filters"] > planning.make_plan(data, CPU).values["base_filters"]
    assert gpu["batch_norm"] and "mixed_precision" not in gpu  # --mixed_precision=auto's GPU rule
    assert planning.make_plan(data, CPU).values["mixed_precision"] == "mixed_bfloat16"
    assert planning.make_plan(data, OLD_CPU).values["mixed_precision"] == "float32"


def test_a_rare_class_turns_frames_that_fit_into_half_frame_windows_seeking_it():
    common = planning.make_plan(manifest([(256, 256, 200)], [0.7, 0.2, 0.1],
                                         [200, 180, 150]), CPU).values
    rare = planning.make_plan(manifest([(256, 256, 200)], [0.7, 0.29, 0.01],
                                       [200, 180, 40]), CPU).values
    assert "train_crop" not in common and size_of(common["image_size"]) == (256, 256)
    assert size_of(rare["train_crop"]) == (128, 128) and rare["crop_foreground"] > 0
    assert "image_size" not in rare


def test_imbalance_and_rare_classes():
    assert planning.make_plan(RARE_BINARY, CPU).values["class_weights"] == "manifest_sqrt"
    assert planning.make_plan(BALANCED_BINARY, CPU).values["class_weights"] == "none"
    twenty = manifest([(1024, 1024, 200)], [0.5] + [0.025] * 19, [200] + [30] * 19)
    windows = planning.make_plan(twenty, CPU).values
    assert windows["crop_foreground"] > 0  # a class in 15% of frames: windows seek it
    common = manifest([(1024, 1024, 200)], [0.5] + [0.025] * 19, [200] * 20)
    assert planning.make_plan(common, CPU).values["crop_foreground"] == 0
    for data in (RARE_BINARY, twenty):
        chosen = planning.make_plan(data, CPU).values
        assert chosen["monitor"] == "val_mean_iou" and chosen["mode"] == "max"


def test_augmentation_follows_the_data():
    few_grey = planning.make_plan(manifest([(512, 512, 30)], [0.3, 0.7], [30, 30], train=21,
                                           val=6, test=3), CPU).values
    many_rgb = planning.make_plan(manifest([(256, 256, 2000)], [0.7, 0.3], [2000, 2000],
                                           channels=3, train=1400, val=400, test=200), CPU).values
    assert few_grey["aug_elastic_alpha"] > 0 and many_rgb["aug_elastic_alpha"] == 0
    assert few_grey["aug_vflip"] and not many_rgb["aug_vflip"]
    assert many_rgb["aug_brightness"] > 0 and "aug_brightness" not in few_grey


def test_given_flags_win_and_are_listed():
    data = manifest([(256, 256, 200)], [0.6, 0.4], [200, 200])
    plan = planning.make_plan(data, CPU, {"batch_size": 3, "loss": "ce", "image_size": "128"})
    # the batch the plan would give 128 px frames: it plans around the given size
    at_128 = planning.make_plan(manifest([(128, 128, 200)], [0.6, 0.4], [200, 200]), CPU)
    assert plan.overridden["batch_size"] == (at_128.values["batch_size"], 3)
    assert plan.overridden["loss"] == ("dice_ce", "ce")
    assert "image_size" in plan.overridden
    # the given size and batch drive what follows from them: depth, and the steps of an epoch
    assert 128 / 2 ** plan.values["depth"] >= 8
    planning.schedule(plan, data, planning.Budget.parse("2epochs"))
    assert plan.facts["total_steps"] == 2 * (140 // 3)
    text = "\n".join(plan.summary_lines())
    assert "--batch_size=3 (plan: " in text and "--loss=ce (plan: dice_ce)" in text
    # a given --train_crop chooses windows even for frames that fit whole
    windows = planning.make_plan(data, CPU, {"train_crop": "64"}).values
    assert "image_size" not in windows and windows["train_crop"] == "256,256"


@pytest.mark.parametrize("budget,steps", [("2000steps", 2000), ("7steps", 7), ("3epochs", 3 * 17)])
def test_schedule_spends_the_budget(budget, steps):
    data = manifest([(256, 256, 200)], [0.6, 0.4], [200, 200])  # batch 8: 17 steps a pass
    plan = planning.schedule(planning.make_plan(data, CPU), data, planning.Budget.parse(budget))
    values = plan.values
    run = values["epochs"] * values["steps_per_epoch"]
    assert plan.facts["total_steps"] == steps
    assert steps <= run < steps + values["steps_per_epoch"]
    assert values["patience"] >= values["epochs"]  # no early stop inside the budget
    assert 0 < values["warmup_epochs"] * values["steps_per_epoch"] <= max(1, 0.1 * steps)


def test_minutes_budget_from_a_step_time():
    data = manifest([(256, 256, 200)], [0.6, 0.4], [200, 200])
    plan = planning.schedule(planning.make_plan(data, CPU), data, planning.Budget.parse("10min"),
                             step_seconds=0.5, seconds_left=540)
    total = plan.facts["total_steps"]
    validations = plan.values["epochs"]
    # steps plus validations (a third of a step a validation frame, plus checkpoints) fill it
    spent = 0.5 * total + validations * (0.5 * 40 * 256 ** 2 / (8 * 256 ** 2) / 3
                                         + planning.EPOCH_END_SECONDS)
    assert 0.9 * 540 <= spent <= 540
    with pytest.raises(planning.PlanError, match="larger budget"):
        planning.schedule(planning.make_plan(data, CPU), data, planning.Budget.parse("1min"),
                          step_seconds=5.0, seconds_left=10)


def test_records_without_a_fingerprint_are_refused():
    old = manifest([(64, 64, 10)], [0.5, 0.5], [10, 10])
    del old["fingerprint"]
    with pytest.raises(planning.PlanError, match="prepare_dataset.py"):
        planning.make_plan(old, CPU)


# -- through train.py -------------------------------------------------------------------

# TINY without --plan=none and without the values the plan is to choose
GIVEN = [flag for flag in TINY if flag.split("=")[0] not in (
    "--plan", "--image_size", "--batch_size", "--learning_rate", "--dropout")]


def test_plan_through_train_py_written_overridden_and_kept_on_resume(binary_records, tmp_path):
    run_dir = tmp_path / "run"
    result = train(binary_records, run_dir, *GIVEN, "--budget=6steps", "--batch_size=4",
                   "--export=false", base=[])
    plan = json.loads((run_dir / planning.FILENAME).read_text())
    assert plan["budget"] == "6steps" and plan["machine"]["accelerator"] == "cpu"
    assert all(entry["why"] for entry in plan["values"].values())
    assert plan["overridden"]["batch_size"]["given"] == 4
    assert plan["overridden"]["base_filters"] == {"planned": 16, "given": 4}
    assert "plan (--plan=auto --budget=6steps" in result.stdout
    assert "overridden by flags: " in result.stdout and "--batch_size=4 (plan: " in result.stdout
    flags = (run_dir / "flags.txt").read_text()
    assert "--monitor=val_mean_iou" in flags and "--base_filters=4" in flags
    rows = (run_dir / "log.csv").read_text().splitlines()[1:]
    assert len(rows) * plan["values"]["steps_per_epoch"]["value"] >= 6
    assert plan["values"]["epochs"]["value"] == len(rows)

    # resumed without --budget: the stored plan (6 steps), not the default budget's
    again = train(binary_records, run_dir, *GIVEN, "--batch_size=4", "--export=false", base=[])
    assert f"resuming with the plan in {run_dir}/{planning.FILENAME}" in again.stdout
    assert (run_dir / "flags.txt").read_text() == flags
    # another budget cannot resume this run
    refused = train(binary_records, run_dir, *GIVEN, "--batch_size=4", "--budget=50steps",
                    "--export=false", base=[], check=False)
    assert refused.returncode == 1
    (line,) = [l for l in refused.stderr.splitlines() if l.startswith("train.py: error:")]
    assert "--budget=6steps (now 50steps)" in line and "Traceback" not in refused.stderr


def test_minutes_budget_through_train_py(binary_records, tmp_path):
    run_dir = tmp_path / "run"
    start = time.time()
    result = train(binary_records, run_dir, *GIVEN, "--budget=0.5min", "--export=false",
                   base=[])
    wall = time.time() - start
    plan = json.loads((run_dir / planning.FILENAME).read_text())
    assert "a measured" in plan["values"]["steps_per_epoch"]["why"]
    # start-up, timing, training, validation and the test split inside the 30 s, give or
    # take the interpreter's own start and exit
    assert wall < 30 * 1.25, result.stdout[-2000:]
    assert plan["facts"]["total_steps"] > plan["values"]["epochs"]["value"]


@pytest.mark.parametrize("flags,named", [
    (["--budget=10minutes"], "--budget='10minutes'"),
    (["--plan=none", "--budget=100steps"], "--budget=100steps"),
])
def test_bad_budget_is_one_line(binary_records, tmp_path, flags, named):
    result = train(binary_records, tmp_path / "run", *flags, check=False, base=GIVEN)
    assert result.returncode == 1
    (line,) = [l for l in result.stderr.splitlines() if l.startswith("train.py: error:")]
    assert named in line and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_plan_picks_windows_for_frames_of_many_sizes_through_train_py(tmp_path):
    """Frames of three sizes: the plan trains native-resolution windows and the run's input
    contract says so (the plan's values reach the input spec like given flags)."""
    from conftest import make_records
    records = make_records(str(tmp_path), "mixed", count=24, num_classes=3,
                           size=[(48, 64), (64, 80), (40, 56)])
    run_dir = tmp_path / "run"
    result = train(records, run_dir, "--budget=2steps", "--base_filters=4", base=[])
    plan = json.loads((run_dir / planning.FILENAME).read_text())
    crop = size_of(plan["values"]["train_crop"]["value"])
    assert "3 frame sizes" in plan["values"]["train_crop"]["why"]
    contract = json.loads((run_dir / "input_contract.json").read_text())
    assert tuple(contract["train_crop"]) == crop
    assert f"train_crop={crop}" in result.stdout
    # whole-frame evaluation: the canvas holds the largest frame
    assert contract["image_size"][0] >= 64 and contract["image_size"][1] >= 80
