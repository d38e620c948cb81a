"""Each CLI in tools/ on tiny synthetic data; outputs checked against independent numbers."""
import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from harness import TOOLS, tool, train
from segdata import records
from segtrain import submit

@pytest.fixture(scope="module")
def trained_run(binary_records, tmp_path_factory):
    run = tmp_path_factory.mktemp("tools") / "run"
    train(binary_records, run, "--epochs=3", "--steps_per_epoch=5")
    return run


def _numpy_scores(model, examples, size, region=None):
    """region: optional (H, W) bool array; only its pixels are scored."""
    import tensorflow as tf
    cm = np.zeros((2, 2))
    for example in examples:
        # 64 -> 32 stretch, as the pipeline: a 2x shrink, antialiased
        image = tf.image.resize(example["image"], size, antialias=True)
        image = np.clip(np.round(image.numpy()), 0, 255).astype("uint8")
        mask = tf.image.resize(example["mask"], size, method="nearest").numpy()[..., 0]
        pred = (np.asarray(model(image[None]))[0, ..., 0] > 0).astype(int)
        inside = np.ones(mask.shape, bool) if region is None else region
        np.add.at(cm, (mask[inside], pred[inside]), 1)
    tp = np.diag(cm)
    return 2 * tp / (cm.sum(0) + cm.sum(1)), tp / (cm.sum(0) + cm.sum(1) - tp), cm


def test_evaluate_matches_independent_confusion(trained_run, binary_records, tmp_path):
    out = tmp_path / "eval.json"
    tool("evaluate.py", f"--model={trained_run / 'model.keras'}", f"--data_dir={binary_records}",
         "--split=test", "--edge_px=3", f"--output={out}")
    scores = json.loads(out.read_text())
    model = keras.saving.load_model(str(trained_run / "model.keras"))
    dice, iou, cm = _numpy_scores(model, records.read_split(binary_records, "test"), (32, 32))
    np.testing.assert_allclose(scores["confusion_matrix"], cm)
    np.testing.assert_allclose(scores["per_class_dice"], dice, rtol=1e-5)
    np.testing.assert_allclose(scores["mean_iou"], iou.mean(), rtol=1e-5)
    # the 3-pixel band along the 32x32 frame's edges and the rest, each scored apart
    interior = np.zeros((32, 32), bool)
    interior[3:-3, 3:-3] = True
    for name, region in (("edge", ~interior), ("interior", interior)):
        dice, _, counts = _numpy_scores(model, records.read_split(binary_records, "test"),
                                        (32, 32), region)
        np.testing.assert_allclose(scores[name]["confusion_matrix"], counts, err_msg=name)
        np.testing.assert_allclose(scores[name]["per_class_dice"], dice, rtol=1e-5, err_msg=name)
    png = Image.open(tmp_path / "eval.png")
    assert png.size == (1100, 450)
    # at the original resolution (64x64): every original pixel is scored
    tool("evaluate.py", f"--model={trained_run / 'model.keras'}", f"--data_dir={binary_records}",
         "--split=test", "--original_size", f"--output={tmp_path / 'orig.json'}")
    original = json.loads((tmp_path / "orig.json").read_text())
    assert np.sum(original["confusion_matrix"]) == 4 * 64 * 64
    # tiled windows of the model's size with flips, from the SavedModel: still every pixel
    tool("evaluate.py", f"--model={trained_run / 'export'}", f"--data_dir={binary_records}",
         "--split=test", "--original_size", "--tile=model", "--tta=hflip",
         f"--output={tmp_path / 'tiled.json'}")
    tiled = json.loads((tmp_path / "tiled.json").read_text())
    assert np.sum(tiled["confusion_matrix"]) == 4 * 64 * 64 and tiled["tta"] == "hflip"
    bad = tool("evaluate.py", f"--model={trained_run / 'model.keras'}",
               f"--data_dir={binary_records}", "--resize=pad", check=False)
    assert bad.returncode == 1 and "--resize=pad contradicts" in bad.stderr


def test_predict_mixed_sizes_keras_and_savedmodel(trained_run, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"a": (40, 50), "b": (64, 64), "c": (33, 90)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(inputs / f"{name}.png")
    # an RGB photo into the gray model is grayed as the training pipeline grays RGB records
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(inputs / "rgb.png")
    sizes["rgb"] = (30, 40)
    for model in ("model.keras", "export"):
        out = tmp_path / model
        tool("predict.py", f"--model={trained_run / model}", f"--input={inputs}", f"--output={out}")
        for name, (h, w) in sizes.items():
            mask = np.asarray(Image.open(out / f"{name}_mask.png"))
            assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 1}
            assert Image.open(out / f"{name}_overlay.png").size == (w, h)
        assert not list(out.glob("*.partial*"))
    # the Keras model and the SavedModel go through one mapping: the same masks
    for name in sizes:
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "model.keras" / f"{name}_mask.png")),
                                      np.asarray(Image.open(tmp_path / "export" / f"{name}_mask.png")))
    tiled = tool("predict.py", f"--model={trained_run / 'export'}", f"--input={inputs / 'c.png'}",
                 f"--output={tmp_path / 'tiled'}", "--tile=model", "--tta=hvflip")
    assert "wrote 1 masks" in tiled.stdout
    assert np.asarray(Image.open(tmp_path / "tiled" / "c_mask.png")).shape == (33, 90)


def test_predict_bad_input_one_clear_line(trained_run, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(inputs / "good.png")
    noise = np.random.default_rng(1).integers(0, 255, (40, 40), dtype=np.uint8)
    Image.fromarray(noise).save(inputs / "cut.png")
    data = (inputs / "cut.png").read_bytes()
    (inputs / "cut.png").write_bytes(data[:len(data) // 2])  # truncated
    model = f"--model={trained_run / 'model.keras'}"
    cases = [
        (["--input=" + str(inputs), f"--output={tmp_path / 'o1'}"], "cut.png"),
        (["--input=" + str(tmp_path / "none" / "*.png"), f"--output={tmp_path / 'o2'}"],
         "no images found"),
        (["--input=" + str(inputs), f"--output={inputs / 'good.png'}"], "is a file"),
        (["--input=" + str(inputs), f"--output={tmp_path / 'o3'}", "--resize=crop"],
         "--resize=crop contradicts"),
        (["--input=" + str(inputs), f"--output={tmp_path / 'o4'}", "--tile=big"], "--tile="),
        # a stride of 1% of the window: millions of windows on a large image
        (["--input=" + str(inputs), f"--output={tmp_path / 'o6'}", "--tile=model",
          "--tile_overlap=0.99"], "--tile_overlap=0.99"),
    ]
    for args, message in cases:
        result = tool("predict.py", model, *args, check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr, args
        (line,) = [l for l in result.stderr.splitlines() if l.startswith("predict: error:")]
        assert message in line, (args, line)
    assert not list((tmp_path / "o1").glob("*_mask.png"))  # cut.png comes first: nothing written
    skipped = tool("predict.py", model, f"--input={inputs}", f"--output={tmp_path / 'o5'}",
                   "--on_error=skip")
    assert "wrote 1 masks" in skipped.stdout and "skipped 1" in skipped.stdout
    assert "cut.png" in skipped.stderr and (tmp_path / "o5" / "good_mask.png").exists()


def test_tflite_export_agrees_with_keras(trained_run, binary_records, tmp_path):
    """float32 TFLite masks equal the Keras masks on >= 99.9% of the test split's pixels;
    int8 (calibrated on the run's own training records, found through its flags.txt) on
    >= 98%, with a mean IoU within 0.02 of the Keras model's."""
    import tensorflow as tf

    from segdata import inference, serving
    from segmodels import metrics
    model = keras.saving.load_model(str(trained_run / "model.keras"))
    contract = serving.InputContract.load(str(trained_run))
    outputs = {}
    for quantize in ("none", "int8"):
        out = tmp_path / f"{quantize}.tflite"
        result = tool("export.py", f"--model={trained_run / 'model.keras'}", "--format=tflite",
                      f"--quantize={quantize}", f"--output={out}", "--calibration_examples=20")
        assert "wrote" in result.stdout and out.stat().st_size > 1000
        outputs[quantize] = inference.TFLiteModel(str(out))
    cms = {name: np.zeros((2, 2), np.int64) for name in ("keras", "none", "int8")}
    agree = {"none": 0, "int8": 0}
    pixels = 0
    for example in records.read_split(binary_records, "test"):
        x, truth, _ = serving.to_model_input(tf.constant(example["image"]), contract,
                                             tf.constant(example["mask"]))
        reference = np.asarray(model(x[None]))
        cms["keras"] += np.asarray(metrics.confusion_matrix(truth[None], reference, 2))
        for name, interpreter in outputs.items():
            logits = interpreter(x.numpy()[None])
            agree[name] += int(((logits > 0) == (reference > 0)).sum())
            cms[name] += np.asarray(metrics.confusion_matrix(truth[None], logits, 2))
        pixels += reference[..., 0].size
    assert agree["none"] >= 0.999 * pixels and agree["int8"] >= 0.98 * pixels, (agree, pixels)
    miou = {name: float(metrics.scores(cm)["mean_iou"]) for name, cm in cms.items()}
    assert abs(miou["int8"] - miou["keras"]) <= 0.02, miou
    bad = tool("export.py", f"--model={trained_run / 'model.keras'}", "--quantize=int8",
               check=False)
    assert bad.returncode == 1 and "--quantize is for --format=tflite" in bad.stderr
    # ONNX holds float32 weights only: a quantize request is refused, not silently dropped
    bad = tool("export.py", f"--model={trained_run / 'model.keras'}", "--format=onnx",
               "--quantize=float16", f"--output={tmp_path / 'x.onnx'}", check=False)
    assert bad.returncode == 1 and "--quantize is for --format=tflite" in bad.stderr
    assert "--format=onnx" in bad.stderr and not (tmp_path / "x.onnx").exists()


def test_show_dataset_grid(binary_records, tmp_path):
    out = tmp_path / "grid.png"
    tool("show_dataset.py", f"--data_dir={binary_records}", "--num=3", "--image_size=48",
         "--aug_rotation=30", "--aug_hflip", f"--output={out}")
    picture = np.asarray(Image.open(out))
    assert picture.shape == (3 * 52 - 4, 3 * 52 - 4, 3)
    mask_panel = picture[:48, 52:100]
    assert len(np.unique(mask_panel.reshape(-1, 3), axis=0)) >= 2
    # train.py's native-resolution windows: 32 px panels cut from the 64 px frames
    tool("show_dataset.py", f"--data_dir={binary_records}", "--num=2", "--train_crop=32",
         "--aug_scale=0.8,1.25", "--crop_foreground=1", f"--output={out}")
    assert np.asarray(Image.open(out)).shape == (2 * 36 - 4, 3 * 36 - 4, 3)


def test_slurm_script_golden():
    text = submit.slurm_script(["--data_dir=/d", "--model_dir=/r x"], nodes=4, gpus_per_node=8,
                               cpus_per_task=16, time="12:00:00", partition="gpu", account="proj",
                               job_name="seg", output_dir="logs", setup=["module load cuda"])
    assert text.splitlines()[:12] == [
        "#!/bin/bash",
        "#SBATCH --job-name=seg",
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --time=12:00:00",
        "#SBATCH --output=logs/%x-%j.out",
        "#SBATCH --error=logs/%x-%j.err",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "",
    ]
    assert "module load cuda" in text
    assert text.rstrip().endswith(
        "srun --kill-on-bad-exit=1 python train.py --strategy=multi_worker --data_dir=/d "
        "'--model_dir=/r x'")
    cpu = submit.slurm_script([], nodes=1, gpus_per_node=0)
    assert "--gpus-per-node" not in cpu and "--partition" not in cpu


def test_submit_cli_dry_run_and_missing_sbatch(tmp_path):
    result = tool("submit.py", "--dry_run", "--nodes=2", "--", "--epochs=3")
    assert "#SBATCH --nodes=2" in result.stdout and "--epochs=3" in result.stdout
    env = dict(os.environ, PATH="/nonexistent")
    failed = subprocess.run([sys.executable, os.path.join(TOOLS, "submit.py"),
                             f"--script={tmp_path / 'job.sbatch'}",
                             f"--output_dir={tmp_path / 'logs'}"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert failed.returncode != 0 and "sbatch not found" in failed.stderr
    assert (tmp_path / "job.sbatch").exists()  # the script is kept for the user


def test_kubernetes_manifests():
    text = submit.kubernetes_manifests(["--epochs=3"], workers=3, gpus_per_worker=2,
                                       image="reg/seg:1", job_name="seg")
    assert "completions: 3" in text and "nvidia.com/gpu: 2" in text and "image: reg/seg:1" in text
    assert "seg-0.seg:2222" in text and "seg-2.seg:2222" in text
    assert "$JOB_COMPLETION_INDEX" in text and "--strategy=multi_worker --epochs=3" in text


def test_slurm_cluster_resolver_from_fake_environment(monkeypatch):
    from segtrain import distribute
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for key, value in {"SLURM_JOB_ID": "77", "SLURM_PROCID": "2",
                       "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_TASKS_PER_NODE": "1(x4)",
                       "SLURM_STEP_NODELIST": "node[01-03,07]", "SLURM_JOB_NODELIST": "node[01-03,07]",
                       "SLURM_STEP_GPUS": "0,1", "SEGFLOW_SLURM_PORT": "9100"}.items():
        monkeypatch.setenv(key, value)
    resolver = distribute.cluster_resolver()
    spec = resolver.cluster_spec().as_dict()
    assert spec == {"worker": ["node01:9100", "node02:9100", "node03:9100", "node07:9100"]}
    assert resolver.task_type == "worker" and resolver.task_id == 2


def test_sweep_runs_grid_and_skips_finished(binary_records, tmp_path):
    """A learning run and a frozen one (learning rate 0: its loss over whole passes of the
    unaugmented split cannot move), which the sweep marks collapsed. Frames at their own
    64 px: shrunk to 32 (antialiased), CE at 0.03 learned or collapsed by the seed."""
    sweep_dir = tmp_path / "sweep"
    args = ["--sweep_dir=" + str(sweep_dir), "--grid=learning_rate=0.03,0.0", "--parallel=2", "--",
            f"--data_dir={binary_records}", "--plan=none", "--image_size=64", "--base_filters=8",
            "--depth=2", "--batch_size=4", "--epochs=3", "--steps_per_epoch=21", "--patience=5",
            "--export=false", "--loss=ce", "--mixed_precision=float32", "--noaug_hflip",
            "--dropout=0"]
    first = tool("sweep.py", *args, timeout=600)
    rows = list(csv.DictReader(open(sweep_dir / "results.csv")))
    assert sorted(r["learning_rate"] for r in rows) == ["0.0", "0.03"]
    frozen = next(r for r in rows if r["learning_rate"] == "0.0")
    learning = next(r for r in rows if r["learning_rate"] == "0.03")
    assert frozen["stopped_epoch"] == "3" and frozen["early_stopped"] == "False"
    assert frozen["status"] == "collapsed" and learning["status"] == "ok"
    assert "| collapsed |" in (sweep_dir / "results.md").read_text()
    assert f"collapsed (learned nothing, see its metrics.json): {frozen['run']}" in first.stdout
    assert Image.open(sweep_dir / "sweep_learning_rate.png").size[0] > 100
    assert "best: learning_rate=0.03 " in first.stdout  # a collapsed run is never the best
    second = tool("sweep.py", *args, timeout=300)
    assert second.stdout.count("skip (finished)") == 2


@pytest.mark.benchmark
def test_benchmark_train_mirrored_two_logical_cpus(tmp_path):
    out = tmp_path / "bench.json"
    tool("benchmark_train.py", "--image_size=32", "--base_filters=4", "--depth=2",
         "--batch_size=4", "--steps=2", "--warmup=1", "--channels=1", f"--output={out}",
         "--mode=train", "--strategy=mirrored", "--logical_cpus=2", "--jit=off")
    (result,) = json.loads(out.read_text())["results"]
    assert result["strategy"] == "mirrored" and result["images_per_s"] > 0


@pytest.mark.benchmark
def test_benchmark_train_cpu_json(tmp_path):
    out = tmp_path / "bench.json"
    tool("benchmark_train.py", "--image_size=32", "--base_filters=4", "--depth=2",
         "--batch_size=2", "--steps=2", "--warmup=1", "--channels=1", f"--output={out}",
         "--mode=train")
    report = json.loads(out.read_text())
    (result,) = report["results"]
    assert result["images_per_s"] > 0 and result["p50_ms"] > 0
    assert report["backend"] == "tensorflow"
    # the model it timed is the one the flags describe
    import segmodels
    model = segmodels.build_model("unet", (32, 32, 1), 2, base_filters=4, depth=2)
    assert result["parameters"] == model.count_params()
    # built for any size, as --train_crop builds it: the same network, the same work per image
    tool("benchmark_train.py", "--image_size=32", "--base_filters=4", "--depth=2",
         "--batch_size=2", "--steps=2", "--warmup=1", "--channels=1", f"--output={out}",
         "--mode=train", "--any_size")
    (any_size,) = json.loads(out.read_text())["results"]
    assert any_size["any_size"] and not result["any_size"]
    assert any_size["parameters"] == result["parameters"]
    assert any_size["tflop_per_image"] == result["tflop_per_image"] > 0


@pytest.mark.benchmark
def test_benchmark_loop_times_each_setting_in_every_round():
    result = tool("benchmark_loop.py", "--steps_per_loop=1,3", "--steps=6", "--rounds=2",
                  "--json")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(report["ms_per_step"]) == ["1", "3"]
    assert all(len(v) == 2 and min(v) > 0 for v in report["samples"].values())
    bad = tool("benchmark_loop.py", "--steps_per_loop=0", check=False)
    assert bad.returncode == 1 and "--steps_per_loop" in bad.stderr


def test_tools_refuse_lambda_layers(tmp_path):
    """safe_mode: a .keras file with a Lambda layer (arbitrary code) is refused, clearly."""
    inputs = keras.Input((32, 32, 1), dtype="uint8")
    outputs = keras.layers.Lambda(lambda x: keras.ops.cast(x, "float32") * 2)(inputs)
    path = str(tmp_path / "evil.keras")
    keras.Model(inputs, outputs).save(path)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "image.png")
    result = tool("predict.py", f"--model={path}", f"--input={tmp_path}",
                  f"--output={tmp_path / 'o'}", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "safe_mode" in result.stderr


@pytest.mark.benchmark
def test_benchmark_input_json_with_child_rows(binary_records):
    """Every row is measured over whole batches of images (18 asked, batches
    of 4: 20 timed; a count of batches or of dict keys would stop elsewhere), the 1-core
    rows in a child that really sees one CPU, and every row reports CPU time per image."""
    result = tool("benchmark_input.py", f"--data_dir={binary_records}", "--image_size=32",
                  "--batch_size=4", "--images=18", "--repeats=1", "--noclassic",
                  "--rows=decode_limit,pipeline,pipeline_windows", "--nocores", "--json")
    windows = json.loads(result.stdout.strip().splitlines()[-1])
    assert windows["samples"]["pipeline_windows"][0] > 0  # --train_crop's windows
    assert windows["pipeline_windows_vs_decode_limit"] > 0
    result = tool("benchmark_input.py", f"--data_dir={binary_records}", "--image_size=32",
                  "--batch_size=4", "--images=18", "--repeats=1", "--noclassic",
                  "--rows=decode_limit,pipeline", "--json")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    samples = report["samples"]
    for name in ("decode_limit", "pipeline", "decode_limit_1core", "pipeline_1core",
                 "pipeline_intra1"):
        assert len(samples[name]) == 1 and min(samples[name]) > 0
    # children time --images // 2 = 9 images: 3 batches of 4
    assert report["images_timed"] == {"decode_limit": 20, "pipeline": 20, "decode_limit_1core": 12,
                                      "pipeline_1core": 12, "pipeline_intra1": 12}
    assert report["child_cores"]["1core"] == 1
    assert report["child_cores"]["intra1"] == report["cores"]
    assert "pipeline_light" not in report
    assert set(report["cpu_ms_per_image"]) == set(samples)
    assert all(value > 0 for value in report["cpu_ms_per_image"].values())
    assert 100 < report["max_rss_mb"] < 64 * 1024  # TensorFlow alone takes more than 100 MB


@pytest.mark.benchmark
def test_benchmark_warp_prints_every_row_once_with_a_median():
    """Rows are compiled first and timed in turns: each named row appears once, in order,
    with a positive time, for both kernels and the op."""
    result = tool("benchmark_warp.py", "--size=32", "--repeats=2", "--rounds=2")
    timed = [line for line in result.stdout.strip().splitlines() if line.endswith(" ms")]
    names = [line.rsplit(None, 2)[0] for line in timed]
    assert len(timed) == 22 and len(set(names)) == len(names)
    assert all(float(line.rsplit(None, 2)[1]) > 0 for line in timed)
    for channels in (1, 3):
        for kernel in ("reference", "xla"):
            assert f"{channels}ch elastic + affine, kernels.{kernel}" in names
    assert names.index("1ch affine, ImageProjectiveTransformV3 x2") < names.index(
        "3ch affine, ImageProjectiveTransformV3 x2")


def test_mask_alignment_finds_labels_drawn_beside_the_lines(tmp_path):
    """Dark lines labelled one pixel up and right of where they are: the labels moved by
    (1, -1) sit exactly on the lines; a model that marks the dark pixels agrees with the
    labels only when its prediction is moved by (-1, 1)."""
    from segdata import spec
    data = tmp_path / "data"
    frames, masks = data / "frames", data / "masks"
    frames.mkdir(parents=True)
    masks.mkdir()
    rng = np.random.default_rng(5)
    for i in range(6):
        lines = np.zeros((40, 40), bool)
        lines[rng.choice(np.arange(6, 33, 4), 2, replace=False)] = True
        lines[:, rng.choice(np.arange(6, 33, 4), 2, replace=False)] = True
        Image.fromarray(np.where(lines, 40, 200).astype(np.uint8)).save(frames / f"frame_{i}.png")
        labels = np.roll(lines, (-1, 1), (0, 1))  # lines are class 0, as membranes
        Image.fromarray(np.where(labels, 0, 255).astype(np.uint8)).save(masks / f"mask_{i}.png")
    records_dir = tmp_path / "records"
    tool("prepare_dataset.py", f"--input={data}", f"--output={records_dir}")
    # dark (< half of 255) -> class 0
    inputs = keras.Input((None, None, 1))
    logits = keras.layers.Conv2D(1, 1, kernel_initializer=keras.initializers.Constant(10 / 255),
                                 bias_initializer=keras.initializers.Constant(-5))(inputs)
    run = tmp_path / "run"
    run.mkdir()
    keras.Model(inputs, logits).save(run / "model.keras")
    spec.InputSpec.for_records(str(records_dir), (40, 40)).save(str(run))
    out = tool("mask_alignment.py", f"--data_dir={records_dir}", "--class_id=0",
               f"--model={run / 'model.keras'}").stdout
    rows = {line[:14].strip(): line[14:].split() for line in out.splitlines()[1:10]}
    assert float(rows["(1, -1)"][0]) == 40.0  # every moved label on a line
    assert min(float(row[0]) for shift, row in rows.items() if shift != "(1, -1)") > 40.0
    assert float(rows["(-1, 1)"][1]) == 1.0
    assert max(float(row[1]) for shift, row in rows.items() if shift != "(-1, 1)") < 0.75
    assert "darkest: (1, -1)" in out and "model best at (-1, 1)" in out
    bad = tool("mask_alignment.py", f"--data_dir={records_dir}", "--class_id=2", check=False)
    assert bad.returncode == 1 and "--class_id=2: the records have 2 classes" in bad.stderr
    assert "Traceback" not in bad.stderr
