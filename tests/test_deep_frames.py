"""Frames with more than 8 bits: kept at full depth in the records, mapped to the model
input by one dataset rule, the same in the pipeline, serving, predict and the SavedModel."""
import dataclasses
import os
import shutil
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from harness import tool, train
from segdata import inference, pipeline, records, serving, spec, synthetic, validate


def _deepen(root, low=100, step=16, hot_pixels=True):
    """Rewrites the synthetic 8-bit frames as 16-bit PNGs: v -> low + v * step (12-bit
    microscopy-like values 100..4180), and a few saturated pixels in the first frame."""
    frames = sorted(os.listdir(os.path.join(root, "frames")))
    for index, name in enumerate(frames):
        path = os.path.join(root, "frames", name)
        values = low + np.asarray(Image.open(path), np.uint16) * step
        if hot_pixels and index == 0:
            values[:2, :2] = 65535
        Image.fromarray(values.astype(np.uint16)).save(path)
    return frames


def _expected(values, rule):
    scaled = (values.astype(np.float64) - rule["low"]) * 255.0 / (rule["high"] - rule["low"])
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def deep_records(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("deep"))
    files = synthetic.generate(os.path.join(root, "files"), count=24, size=(32, 32))
    _deepen(files)
    out = os.path.join(root, "records")
    tool("prepare_dataset.py", f"--input={files}", f"--output={out}")
    return files, out


def test_prepare_keeps_the_depth_and_decides_the_rule_from_all_frames(deep_records):
    files, out = deep_records
    rule = records.load_manifest(out)["intensity"]
    assert rule["bits"] == 16 and rule["rule"] == "percentile_clip"
    every = np.concatenate([np.asarray(Image.open(os.path.join(files, "frames", n))).ravel()
                            for n in sorted(os.listdir(os.path.join(files, "frames")))])
    # from a quarter of the pixels; the hot pixels (65535) do not set the range
    assert abs(rule["low"] - np.percentile(every, 0.5)) <= 3 * 16
    assert abs(rule["high"] - np.percentile(every, 99.5)) <= 3 * 16
    assert rule["high"] < 5000
    assert records.load_manifest(out)["fingerprint"]["bits"] == 16
    # the records hold the 16-bit values; the pipeline's model input follows the rule
    batch = next(iter(pipeline.evaluation_dataset(
        out, "val", spec.InputSpec.for_records(out, (32, 32)), 100, with_ids=True)))
    for image, example_id in zip(batch["image"].numpy(), batch["id"].numpy()):
        name = example_id.decode()
        raw = np.asarray(Image.open(os.path.join(files, "frames", f"frame_{name}.png")))
        np.testing.assert_array_equal(image[..., 0], _expected(raw, rule))
    assert len(np.unique(batch["image"].numpy())) > 100  # a >> 8 kept 17 grey levels


@pytest.fixture(scope="module")
def deep_run(deep_records, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("deep_run") / "run")
    train(deep_records[1], run_dir, "--epochs=1", "--steps_per_epoch=2")
    return run_dir


def test_serving_maps_raw_frames_as_the_pipeline_did(deep_records, deep_run, tmp_path):
    files, out = deep_records
    contract = serving.InputContract.load(deep_run)
    assert contract.intensity == records.load_manifest(out)["intensity"]
    name = sorted(os.listdir(os.path.join(files, "frames")))[3]
    raw = np.asarray(Image.open(os.path.join(files, "frames", name)))[..., None]
    model_input, _, _ = serving.to_model_input(tf.constant(raw), contract)
    np.testing.assert_array_equal(model_input.numpy()[..., 0], _expected(raw[..., 0],
                                                                         contract.intensity))
    # the SavedModel takes the raw 16-bit frame; its mask is what predict writes for the file
    served = tf.saved_model.load(os.path.join(deep_run, "export"))
    mask = served.signatures["serving_default"](images=tf.constant(raw[None]))["mask"]
    predicted = tmp_path / "predicted"
    tool("predict.py", f"--model={deep_run}/model.keras",
         f"--input={os.path.join(files, 'frames', name)}", f"--output={predicted}")
    written = np.asarray(Image.open(predicted / (os.path.splitext(name)[0] + "_mask.png")))
    np.testing.assert_array_equal(written, mask.numpy()[0, ..., 0])


def test_a_16_bit_frame_to_an_8_bit_model_is_refused(deep_records, deep_run, tmp_path):
    """The same model with a contract that has no intensity rule: an 8-bit model."""
    files, _ = deep_records
    eight_bit = tmp_path / "run8"
    eight_bit.mkdir()
    shutil.copy(os.path.join(deep_run, "model.keras"), eight_bit / "model.keras")
    contract = serving.InputContract.load(deep_run)
    dataclasses.replace(contract, intensity=None).save(str(eight_bit))
    result = tool("predict.py", f"--model={eight_bit}/model.keras",
                  f"--input={os.path.join(files, 'frames', 'frame_000.png')}",
                  f"--output={tmp_path / 'out'}", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "frame_000.png: a 16-bit frame, but the model was trained on 8-bit" in result.stderr


def test_mixed_bit_depths_are_refused_in_one_line(tmp_path):
    files = synthetic.generate(str(tmp_path / "files"), count=6, size=(16, 16))
    name = sorted(os.listdir(os.path.join(files, "frames")))[2]
    path = os.path.join(files, "frames", name)
    Image.fromarray(np.asarray(Image.open(path), np.uint16) * 200).save(path)
    out = tmp_path / "records"
    result = tool("prepare_dataset.py", f"--input={files}", f"--output={out}", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    line = [line for line in result.stderr.splitlines() if "one bit depth" in line]
    assert len(line) == 1 and name in line[0]  # the odd one out: 5 of the 6 are 8-bit
    assert "16-bit, but most frames are 8-bit" in line[0]
    assert not out.exists()


def _write_16_bit_colour(files, alpha_every=4):
    """Rewrites the synthetic frames as 16-bit colour PNGs (TensorFlow's encoder, not the
    code under test): channel c is 100 + 50 c + 16 v, 12-bit-like values; every
    `alpha_every`-th frame gets an alpha channel. Returns {name: uint16 RGB pixels}."""
    written = {}
    for index, name in enumerate(sorted(os.listdir(os.path.join(files, "frames")))):
        path = os.path.join(files, "frames", name)
        gray = np.asarray(Image.open(path).convert("L"), np.uint16)[..., None]
        rgb = 100 + np.array([0, 50, 100], np.uint16) + gray * 16
        pixels = rgb
        if index % alpha_every == 0:
            pixels = np.concatenate([rgb, np.full_like(gray, 65535)], -1)
        with open(path, "wb") as handle:
            handle.write(tf.io.encode_png(tf.constant(pixels)).numpy())
        written[os.path.splitext(name)[0].split("_")[-1]] = rgb
    return written


def test_16_bit_colour_frames_keep_their_depth_in_records_and_serving(tmp_path):
    """Pillow reads a 16-bit RGB PNG as its upper bytes: 12-bit values became 0..16."""
    files = synthetic.generate(str(tmp_path / "files"), count=12, size=(24, 24))
    written = _write_16_bit_colour(files)
    out = str(tmp_path / "records")
    tool("prepare_dataset.py", f"--input={files}", f"--output={out}", "--split=50,50,0")
    manifest = records.load_manifest(out)
    rule = manifest["intensity"]
    every = np.concatenate([rgb.ravel() for rgb in written.values()])
    assert abs(rule["low"] - np.percentile(every, 0.5)) <= 3 * 16
    assert abs(rule["high"] - np.percentile(every, 99.5)) <= 3 * 16
    assert manifest["channels"] == 3
    input_spec = spec.InputSpec.for_records(out, (24, 24))
    seen = []
    for split in ("train", "val"):
        batch = next(iter(pipeline.evaluation_dataset(out, split, input_spec, 100,
                                                      with_ids=True)))
        for image, example_id in zip(batch["image"].numpy(), batch["id"].numpy()):
            np.testing.assert_array_equal(image, _expected(written[example_id.decode()], rule))
            seen.append(example_id.decode())
    assert sorted(seen) == sorted(written)  # RGBA frames too: alpha dropped, depth kept
    assert len(np.unique(batch["image"].numpy())) > 100
    # what predict and evaluate read from the file, mapped by serving, is the pipeline's input
    name = sorted(os.listdir(os.path.join(files, "frames")))[0]  # one with alpha
    frame = validate.read_frame(os.path.join(files, "frames", name))
    model_input, _, _ = serving.to_model_input(tf.constant(frame), input_spec)
    np.testing.assert_array_equal(model_input.numpy(), _expected(written["000"], rule))
    # through train.py: the SavedModel takes the raw 16-bit RGB frame, as predict reads the file
    run_dir = tmp_path / "run"
    train(out, run_dir, "--epochs=1", "--steps_per_epoch=2", "--image_size=24")
    served = tf.saved_model.load(str(run_dir / "export"))
    outputs = served.signatures["serving_default"](images=tf.constant(written["000"][None]))
    model = inference.load_keras(str(run_dir / "model.keras"))
    np.testing.assert_allclose(outputs["logits"].numpy()[0], np.asarray(
        model(_expected(written["000"], rule)[None]), np.float32)[0], rtol=1e-5, atol=1e-5)
    mask = outputs["mask"]
    tool("predict.py", f"--model={run_dir}/model.keras",
         f"--input={os.path.join(files, 'frames', name)}", f"--output={tmp_path / 'predicted'}")
    predicted = np.asarray(Image.open(tmp_path / "predicted" / "frame_000_mask.png"))
    np.testing.assert_array_equal(predicted, mask.numpy()[0, ..., 0])


def test_16_bit_colour_frames_resized_by_prepare_keep_their_depth(tmp_path):
    """prepare --resize on 16-bit RGB(A) frames: each channel resized at full depth; a ramp
    stays a ramp (against tf.image.resize with antialias, up to the filters' difference)."""
    files = synthetic.generate(str(tmp_path / "files"), count=4, size=(32, 32))
    ramp = (np.arange(32, dtype=np.uint16) * 120 + 100)[None, :, None]
    rgb = np.broadcast_to(ramp + np.array([0, 7, 13], np.uint16), (32, 32, 3))
    for index, name in enumerate(sorted(os.listdir(os.path.join(files, "frames")))):
        alpha = np.full((32, 32, 1), 9, np.uint16)
        pixels = rgb if index % 2 else np.concatenate([rgb, alpha], -1)
        with open(os.path.join(files, "frames", name), "wb") as handle:
            handle.write(tf.io.encode_png(tf.constant(pixels)).numpy())
    out = str(tmp_path / "records")
    tool("prepare_dataset.py", f"--input={files}", f"--output={out}", "--resize=16,16",
         "--split=100,0,0")
    shards = tf.data.TFRecordDataset(records.list_shards(out, "train"), compression_type=(
        records.compression_of(records.load_manifest(out))))
    stored = [np.asarray(tf.io.decode_png(records.parse_raw(serialized)["image_bytes"],
                                          dtype=tf.uint16)) for serialized in shards]
    expected = tf.image.resize(rgb.astype(np.float32), (16, 16), antialias=True).numpy()
    assert len(stored) == 4
    for image in stored:
        assert image.shape == (16, 16, 3)
        np.testing.assert_allclose(image, expected, atol=0.02 * 3820)


def test_a_16_bit_gray_frame_with_alpha_is_refused_in_one_line(tmp_path):
    files = synthetic.generate(str(tmp_path / "files"), count=4, size=(16, 16))
    _deepen(files, hot_pixels=False)
    name = sorted(os.listdir(os.path.join(files, "frames")))[1]
    path = os.path.join(files, "frames", name)
    gray = np.asarray(Image.open(path), np.uint16)[..., None]
    with open(path, "wb") as handle:
        handle.write(tf.io.encode_png(np.concatenate([gray, np.full_like(gray, 65535)], -1))
                     .numpy())
    out = tmp_path / "records"
    result = tool("prepare_dataset.py", f"--input={files}", f"--output={out}", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    line = [line for line in result.stderr.splitlines() if name in line]
    assert len(line) == 1 and "16-bit" in line[0] and "no alpha" in line[0], result.stderr
    assert not out.exists()


def _tiff_16_bit_rgb(pixels, order):
    """An uncompressed 16-bit RGB TIFF in either byte order (no writer here makes one)."""
    height, width, _ = pixels.shape
    data = pixels.astype(order + "u2").tobytes()
    bits_offset = 8 + 2 + 12 * 10 + 4
    tags = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, bits_offset), (259, 3, 1, 1),
            (262, 3, 1, 2), (273, 4, 1, bits_offset + 6), (277, 3, 1, 3), (278, 3, 1, height),
            (279, 4, 1, len(data)), (284, 3, 1, 1)]
    out = (b"II*\x00" if order == "<" else b"MM\x00*") + struct.pack(order + "IH", 8, len(tags))
    for tag, kind, count, value in tags:
        short = kind == 3 and count == 1
        out += struct.pack(order + ("HHIHH" if short else "HHII"), tag, kind, count, value,
                           *([0] if short else []))
    return out + struct.pack(order + "IHHH", 0, 16, 16, 16) + data


@pytest.mark.parametrize("order", ["<", ">"])
def test_16_bit_rgb_tiff_is_read_at_full_depth(tmp_path, order):
    pixels = np.random.default_rng(0).integers(0, 65536, (5, 7, 3)).astype(np.uint16)
    path = tmp_path / "frame.tif"
    path.write_bytes(_tiff_16_bit_rgb(pixels, order))
    frame = validate.read_frame(str(path))
    assert frame.dtype == np.uint16
    np.testing.assert_array_equal(frame, pixels)
