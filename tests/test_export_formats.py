"""Every export checked in the runtime that serves it: ONNX in onnxruntime, TFLite in the
standalone LiteRT interpreter (float32, float16, int8), model.keras under Keras's JAX
backend; each model family, tiny sizes. Quantized exports are checked on models trained a
few steps, so that their masks are decisions rather than near-ties of random logits."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import segmodels
from harness import ROOT, tool
from segdata import inference, serving
from segtrain import export

FAMILIES = {
    "unet": ("unet", {"base_filters": 4, "depth": 2}),
    "fcn32s": ("fcn32s", {"width": 4, "fc_filters": 8, "dropout": 0.0}),
    "fcn16s": ("fcn16s", {"width": 4, "fc_filters": 8, "dropout": 0.0}),
    "fcn8s": ("fcn8s", {"width": 4, "fc_filters": 8, "dropout": 0.0}),
    "unet_resnet50": ("unet", {"encoder": "resnet50", "base_filters": 4}),
    "unet_mobilenetv2": ("unet", {"encoder": "mobilenetv2", "base_filters": 4}),
    "unet_efficientnetb0": ("unet", {"encoder": "efficientnetb0", "base_filters": 4}),
    "deeplabv3plus": ("deeplabv3plus", {"encoder": "mobilenetv2", "aspp_filters": 8}),
}
# one of each kind of network for the slower checks
KINDS = ("unet", "fcn8s", "unet_mobilenetv2", "deeplabv3plus")
SIZE, CLASSES = 64, 3


def _blocks(seed, count=8):
    """Noisy images whose class is constant over 16x16 cells, brighter per class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, (count, SIZE // 16, SIZE // 16, 1))
    masks = labels.repeat(16, 1).repeat(16, 2).astype("uint8")
    return (masks * 90 + rng.integers(0, 60, masks.shape)).astype("uint8"), masks


_TRAINED = {}


def built(family):
    keras.utils.set_random_seed(0)
    name, options = FAMILIES[family]
    return segmodels.build_model(name, (SIZE, SIZE, 1), CLASSES, **options)


def trained(family):
    """A tiny model of `family` after 20 steps on block images (cached per process)."""
    if family not in _TRAINED:
        model = built(family)
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=segmodels.build_loss("dice_ce"))
        images, masks = _blocks(0)
        for _ in range(20):
            model.train_on_batch(images, masks)
        _TRAINED[family] = model
    return _TRAINED[family]


def _agreement(logits, expected):
    return float((np.argmax(logits, -1) == np.argmax(expected, -1)).mean())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_onnx_in_onnxruntime_agrees_with_keras(family, tmp_path):
    model = built(family)
    path = export.export_onnx(model, str(tmp_path / "model.onnx"))
    images, _ = _blocks(1)
    got = inference.OnnxModel(path)(images)
    expected = np.asarray(model(images))
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert _agreement(got, expected) >= 0.999


@pytest.mark.parametrize("family", KINDS)
def test_tflite_in_litert_agrees_with_keras(family, tmp_path):
    """float32 and float16 masks >= 99.9% of pixels, int8 (calibrated on the training
    images) >= 98%: the thresholds of the trained-run test in test_tools.py. Builtin ops
    only: the LiteRT interpreter has no select-TF ops to fall back on. float16 rounds the
    weights only, a step that does not depend on the network: it is checked on one kind
    (each conversion costs ~10 s here)."""
    model = trained(family)
    images, _ = _blocks(1)
    expected = np.asarray(model(images))
    calibration = [image[None] for image in _blocks(0)[0]]
    checks = [("none", 0.999), ("int8", 0.98)] + ([("float16", 0.999)] if family == KINDS[0]
                                                   else [])
    for quantize, threshold in checks:
        path = export.export_tflite(model, str(tmp_path / f"{quantize}.tflite"), quantize,
                                    calibration if quantize == "int8" else None)
        got = inference.TFLiteModel(path)(images)
        assert _agreement(got, expected) >= threshold, quantize


JAX_SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import keras, segmodels  # noqa: F401  (registers SegFlow's layers)
assert keras.backend.backend() == "jax"
images = np.load(sys.argv[2])
for model_path, output in zip(sys.argv[3::2], sys.argv[4::2]):
    np.save(output, np.asarray(keras.saving.load_model(model_path)(images)))
"""


def test_model_keras_runs_under_jax(tmp_path):
    """segmodels is Keras-only: a model.keras saved under TensorFlow loads under the JAX
    backend and gives the same logits; each kind of network, one JAX process for all (its
    start-up was most of each check's time)."""
    pytest.importorskip("jax")
    images, _ = _blocks(1, count=2)
    np.save(tmp_path / "images.npy", images)
    paths, expected = [], {}
    for family in KINDS:
        model = built(family)
        model.save(tmp_path / f"{family}.keras")
        paths += [str(tmp_path / f"{family}.keras"), str(tmp_path / f"{family}.npy")]
        expected[family] = np.asarray(model(images))
    result = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, ROOT, str(tmp_path / "images.npy"), *paths],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, KERAS_BACKEND="jax"))
    assert result.returncode == 0, result.stderr[-3000:]
    for family in KINDS:
        np.testing.assert_allclose(np.load(tmp_path / f"{family}.npy"), expected[family],
                                   rtol=1e-4, atol=1e-4, err_msg=family)


def test_predict_and_evaluate_read_every_format(binary_records, tmp_path):
    """tools/export.py writes ONNX and TFLite into another folder (the contract beside them);
    predict.py gives the same masks from model.keras, the SavedModel, the .onnx and the
    .tflite; evaluate.py scores the .onnx as it scores model.keras."""
    from harness import train
    run_dir = tmp_path / "run"
    train(binary_records, run_dir, "--epochs=1", "--steps_per_epoch=5")
    out = tmp_path / "deploy"
    tool("export.py", f"--model={run_dir / 'model.keras'}", "--format=onnx",
         f"--output={out / 'model.onnx'}")
    tool("export.py", f"--model={run_dir / 'model.keras'}", "--format=tflite",
         f"--output={out / 'model.tflite'}")
    assert serving.InputContract.load(str(out)) == serving.InputContract.load(str(run_dir))
    from PIL import Image
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    rng = np.random.default_rng(2)
    for index, shape in enumerate([(50, 70), (32, 32)]):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(pictures / f"p{index}.png")
    masks = {}
    for name, model in (("keras", run_dir / "model.keras"), ("saved_model", run_dir / "export"),
                        ("onnx", out / "model.onnx"), ("tflite", out / "model.tflite")):
        tool("predict.py", f"--model={model}", f"--input={pictures}",
             f"--output={tmp_path / name}")
        masks[name] = [np.asarray(Image.open(tmp_path / name / f"p{i}_mask.png")) for i in (0, 1)]
    for name in ("saved_model", "onnx", "tflite"):
        for got, expected in zip(masks[name], masks["keras"]):
            assert (got == expected).mean() >= 0.999, name
    scores = {}
    for name, model in (("keras", run_dir / "model.keras"), ("onnx", out / "model.onnx")):
        tool("evaluate.py", f"--model={model}", f"--data_dir={binary_records}",
             f"--output={tmp_path / name}.json")
        scores[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert scores["onnx"]["mean_iou"] == pytest.approx(scores["keras"]["mean_iou"], abs=1e-3)
