import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import MEMBRANE, ROOT
from segdata import prepare, records, synthetic


def _prepare(data, out, **kwargs):
    kwargs.setdefault("workers", 1)
    kwargs.setdefault("progress", False)
    return prepare.prepare(prepare.PrepareConfig(input=str(data), output=str(out), **kwargs))


def _write_pair(root, key, frame, mask, frame_ext="png", mask_mode=None):
    os.makedirs(root / "frames", exist_ok=True)
    os.makedirs(root / "masks", exist_ok=True)
    fmt = "JPEG" if frame_ext == "jpg" else "PNG"
    Image.fromarray(frame).save(root / "frames" / f"frame_{key}.{frame_ext}", fmt, quality=100)
    image = mask if isinstance(mask, Image.Image) else Image.fromarray(mask, mask_mode)
    image.save(root / "masks" / f"mask_{key}.png")


@pytest.mark.parametrize("channels,ext", [(1, "png"), (3, "png"), (1, "jpg"), (3, "jpg")])
def test_round_trip_pixels(tmp_path, channels, ext):
    rng = np.random.default_rng(channels)
    shape = (20, 24) if channels == 1 else (20, 24, 3)
    frames = {}
    for i in range(5):
        frame = rng.integers(0, 256, shape, dtype=np.uint8)
        if ext == "jpg":  # smooth content: JPEG decoders then agree to a grey level or two
            frame = np.broadcast_to(np.linspace(20, 230, 24, dtype=np.uint8)[None, :, None]
                                    if channels == 3 else
                                    np.linspace(20, 230, 24, dtype=np.uint8)[None, :], shape).copy()
        mask = rng.integers(0, 3, (20, 24), dtype=np.uint8)
        _write_pair(tmp_path / "d", f"{i:02d}", frame, mask, frame_ext=ext)
        stored = Image.open(tmp_path / "d" / "frames" / f"frame_{i:02d}.{ext}")
        frames[f"{i:02d}"] = (np.asarray(stored), mask)
    manifest = _prepare(tmp_path / "d", tmp_path / "r", split=(60, 20, 20))
    assert manifest["num_classes"] == 3
    seen = 0
    for split in ("train", "val", "test"):
        for example in records.read_split(str(tmp_path / "r"), split):
            frame, mask = frames[example["id"]]
            # JPEG bytes are stored as they were, so TF's decode equals PIL's up to IDCT rounding.
            tolerance = 0 if ext == "png" else 3
            decoded = example["image"][..., 0] if channels == 1 else example["image"]
            assert np.abs(decoded.astype(int) - frame.astype(int)).max() <= tolerance
            np.testing.assert_array_equal(example["mask"][..., 0], mask)
            seen += 1
    assert seen == 5


def test_mask_kinds_binary_palette_and_rgb(tmp_path):
    frame = np.zeros((16, 16), np.uint8)
    # a 0/255 dataset is binary: 255 -> 1
    for key in "01":
        _write_pair(tmp_path / "b", key, frame, np.where(np.eye(16) > 0, 255, 0).astype(np.uint8))
    manifest = _prepare(tmp_path / "b", tmp_path / "rb", split=(100, 0, 0))
    assert manifest["mask_kind"] == "binary" and "0 and 255" in manifest["mask_kind_reason"]
    for example in records.read_split(str(tmp_path / "rb"), "train"):
        np.testing.assert_array_equal(example["mask"][..., 0], np.eye(16, dtype=np.uint8))
    # a 0/255 mask among 0/1 masks is binary only when the user says so (255 may be ignore)
    _write_pair(tmp_path / "b", "2", frame, np.eye(16, dtype=np.uint8))
    _prepare(tmp_path / "b", tmp_path / "rb2", split=(100, 0, 0), mask_kind="binary")
    for example in records.read_split(str(tmp_path / "rb2"), "train"):
        np.testing.assert_array_equal(example["mask"][..., 0], np.eye(16, dtype=np.uint8))
    # palette PNG: indices are read, not colours; 255 stays the ignore label
    indices = np.tile(np.array([0, 1, 2, 255], np.uint8), (16, 4))
    palette_mask = Image.fromarray(indices, "P")
    palette_mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (3 * 252) + [224, 224, 192])
    _write_pair(tmp_path / "p", "0", frame, palette_mask)
    manifest = _prepare(tmp_path / "p", tmp_path / "rp", split=(100, 0, 0), num_classes=3)
    (example,) = records.read_split(str(tmp_path / "rp"), "train")
    np.testing.assert_array_equal(example["mask"][..., 0], indices)
    assert manifest["splits"]["train"]["ignore_pixels"] == 64
    assert manifest["splits"]["train"]["class_pixels"] == [64, 64, 64]
    # RGB colour masks through a palette file
    colours = np.zeros((16, 16, 3), np.uint8)
    colours[:8] = (255, 0, 0)
    _write_pair(tmp_path / "c", "0", frame, colours)
    palette_file = tmp_path / "palette.json"
    palette_file.write_text(json.dumps({"#000000": 0, "#ff0000": 2}))
    _prepare(tmp_path / "c", tmp_path / "rc", split=(100, 0, 0), palette=str(palette_file))
    (example,) = records.read_split(str(tmp_path / "rc"), "train")
    assert (example["mask"][:8] == 2).all() and (example["mask"][8:] == 0).all()


def test_auto_mask_kind_is_decided_for_the_dataset_not_per_file(tmp_path):
    """A class-index set (0, 1, 2) whose one mask holds only background and an ignore
    border (0 and 255): the border stays ignore; it must not become class 1."""
    rng = np.random.default_rng(0)
    frame = np.zeros((16, 16), np.uint8)
    for i in range(9):
        _write_pair(tmp_path / "d", f"{i}", frame, rng.integers(0, 3, (16, 16), dtype=np.uint8))
    border = np.full((16, 16), 255, np.uint8)
    border[2:-2, 2:-2] = 0
    _write_pair(tmp_path / "d", "9", frame, border)
    manifest = _prepare(tmp_path / "d", tmp_path / "r", split=(100, 0, 0))
    assert manifest["mask_kind"] == "index" and "[0, 1, 2, 255]" in manifest["mask_kind_reason"]
    assert manifest["num_classes"] == 3
    train = manifest["splits"]["train"]
    assert train["ignore_pixels"] == int((border == 255).sum()) == 16 * 16 - 12 * 12
    (example,) = [e for e in records.read_split(str(tmp_path / "r"), "train") if e["id"] == "9"]
    np.testing.assert_array_equal(example["mask"][..., 0], border)


def test_split_counts_and_determinism(tmp_path):
    assert prepare.split_counts(30, (70, 20, 10)) == [21, 6, 3]
    assert prepare.split_counts(10, (60, 30, 10)) == [6, 3, 1]
    assert prepare.split_counts(3, (80, 10, 10)) == [1, 1, 1]
    assert prepare.split_counts(5, (100, 0, 0)) == [5, 0, 0]
    pairs = [(f"{i:03d}", "f", "m", None) for i in range(50)]
    first = prepare.assign_splits(pairs, (70, 20, 10), seed=3)
    again = prepare.assign_splits(list(reversed(pairs)), (70, 20, 10), seed=3)
    other = prepare.assign_splits(pairs, (70, 20, 10), seed=4)
    assert first == again
    assert first != other
    assert sorted(p[0] for p in first) == [p[0] for p in pairs]  # every pair exactly once
    with pytest.raises(prepare.PrepareError, match="--split"):
        prepare.parse_ratios("70,20,20")


def test_byte_identical_and_sharded(tmp_path):
    data = synthetic.generate(str(tmp_path / "d"), count=24, size=(32, 32))
    a = _prepare(data, tmp_path / "a", num_shards=3, compression="GZIP")
    b = _prepare(data, tmp_path / "b", num_shards=3, compression="GZIP", workers=2)
    assert [s["sha256"] for s in a["splits"]["train"]["shards"]] == \
           [s["sha256"] for s in b["splits"]["train"]["shards"]]
    assert len(a["splits"]["train"]["shards"]) == 3
    assert sum(s["count"] for s in a["splits"]["train"]["shards"]) == a["splits"]["train"]["count"]
    assert len(records.read_split(str(tmp_path / "a"), "train")) == a["splits"]["train"]["count"]
    with pytest.raises(prepare.PrepareError, match="already exists"):
        _prepare(data, tmp_path / "a")


def test_presplit_and_voc_layouts(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            (tmp_path / "ps" / f"{split}_frames").mkdir(parents=True, exist_ok=True)
            (tmp_path / "ps" / f"{split}_masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(
                tmp_path / "ps" / f"{split}_frames" / f"frame_{i}.png")
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(
                tmp_path / "ps" / f"{split}_masks" / f"mask_{i}.png")
    manifest = _prepare(tmp_path / "ps", tmp_path / "rps")
    assert manifest["layout"] == "presplit"
    assert {s: v["count"] for s, v in manifest["splits"].items()} == {"train": 3, "val": 2, "test": 0}

    voc = tmp_path / "voc"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True)
    for i, name in enumerate(["2007_000032", "2007_000033", "2007_000039"]):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
            voc / "JPEGImages" / f"{name}.jpg")
        m = Image.fromarray(np.full((8, 8), i, np.uint8), "P")
        m.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
        m.save(voc / "SegmentationClass" / f"{name}.png")
    (voc / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n2007_000039\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n")
    manifest = _prepare(voc, tmp_path / "rvoc", num_classes=21)
    assert manifest["layout"] == "voc"
    assert [e["id"] for e in records.read_split(str(tmp_path / "rvoc"), "train")] == \
        ["2007_000032", "2007_000039"]
    (example,) = records.read_split(str(tmp_path / "rvoc"), "val")
    assert (example["mask"] == 1).all()


def test_custom_globs(tmp_path):
    (tmp_path / "x" / "images").mkdir(parents=True)
    for i in (3, 12):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x/images" / f"img_{i}.jpg")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x/images" / f"img_{i}_mask.png")
    manifest = _prepare(tmp_path / "x", tmp_path / "r", frame_glob="images/img_*.jpg",
                        mask_glob="images/img_*_mask.png", split=(50, 50, 0))
    ids = {e["id"] for s in ("train", "val") for e in records.read_split(str(tmp_path / "r"), s)}
    assert ids == {"3", "12"} and manifest["skipped"] == []


def _bad_dataset(tmp_path, case):
    data = tmp_path / case
    frame = np.zeros((16, 16), np.uint8)
    _write_pair(data, "000", frame, np.zeros((16, 16), np.uint8))
    bad = None
    if case == "missing_partner":
        Image.fromarray(frame).save(data / "frames" / "frame_001.png")
        bad = data / "frames" / "frame_001.png"
    elif case == "truncated":
        _write_pair(data, "001", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8),
                    np.zeros((64, 64), np.uint8))
        bad = data / "frames" / "frame_001.png"
        bad.write_bytes(bad.read_bytes()[:200])
    elif case == "size_mismatch":
        _write_pair(data, "001", frame, np.zeros((16, 20), np.uint8))
        bad = data / "masks" / "mask_001.png"
    elif case == "values_out_of_range":
        _write_pair(data, "001", frame, np.full((16, 16), 7, np.uint8))
        bad = data / "masks" / "mask_001.png"
    elif case == "duplicate_id":
        Image.fromarray(frame).save(data / "frames" / "frame_000.jpg")
        bad = data / "frames" / "frame_000.png"
    elif case == "empty_file":
        _write_pair(data, "001", frame, np.zeros((16, 16), np.uint8))
        bad = data / "masks" / "mask_001.png"
        bad.write_bytes(b"")
    return data, bad


@pytest.mark.parametrize("case", ["missing_partner", "truncated", "size_mismatch",
                                  "values_out_of_range", "duplicate_id", "empty_file"])
def test_bad_input_named_and_nothing_written(tmp_path, case):
    data, bad = _bad_dataset(tmp_path, case)
    out = tmp_path / "out"
    with pytest.raises(prepare.PrepareError) as err:
        _prepare(data, out, num_classes=2, split=(100, 0, 0))
    assert os.path.basename(str(bad)) in str(err.value)
    assert not out.exists()
    assert not list(tmp_path.glob("out.tmp-*"))


def test_skip_mode_lists_bad_pairs(tmp_path):
    data, bad = _bad_dataset(tmp_path, "size_mismatch")
    manifest = _prepare(data, tmp_path / "out", on_error="skip", split=(100, 0, 0))
    assert manifest["splits"]["train"]["count"] == 1
    assert any(os.path.basename(str(bad)) in entry["reason"] for entry in manifest["skipped"])


def test_cli_bad_input_one_message_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "prepare_dataset.py"),
         f"--input={tmp_path / 'nothing'}", f"--output={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "nothing: not a folder" in result.stderr


@pytest.mark.skipif(not os.path.isdir(MEMBRANE), reason="shared membrane data not present")
def test_membrane_acceptance(tmp_path):
    manifest = _prepare(MEMBRANE, tmp_path / "mem", workers=2)
    assert {s: v["count"] for s, v in manifest["splits"].items()} == \
        {"train": 21, "val": 6, "test": 3}
    assert manifest["num_classes"] == 2
    example = records.read_split(str(tmp_path / "mem"), "test")[0]
    assert set(np.unique(example["mask"]).tolist()) == {0, 1}
    assert example["image"].shape == (512, 512, 1)


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 33)])
def test_mask_png_encoder_round_trips_through_pillow_and_tf(shape):
    import io

    import tensorflow as tf

    from segdata import png
    rng = np.random.default_rng(sum(shape))
    array = rng.integers(0, 256, shape).astype(np.uint8)
    array[: shape[0] // 2] = 3  # runs as well as noise
    data = png.encode_gray(array)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), array)
    np.testing.assert_array_equal(tf.io.decode_png(data, channels=1)[..., 0].numpy(), array)
    Image.open(io.BytesIO(data)).verify()  # chunk CRCs are right
    assert png.encode_gray(array) == data
    with pytest.raises(ValueError, match="2-D uint8"):
        png.encode_gray(array.astype(np.int32))


def test_fingerprint_of_a_set_with_known_statistics(tmp_path):
    """6 pairs in 3 sizes; class 1 a 10x10 square in frames 0-3, class 2 two 3x3 squares
    in frames 0-1; random 8-bit frames. The manifest's fingerprint against numpy."""
    sizes = [(20, 30), (20, 30), (24, 24), (24, 24), (24, 24), (40, 16)]
    rng = np.random.default_rng(7)
    os.makedirs(tmp_path / "d" / "frames")
    os.makedirs(tmp_path / "d" / "masks")
    frames, masks = [], []
    for index, (h, w) in enumerate(sizes):
        frame = rng.integers(20, 230, (h, w), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        if index < 4:
            mask[1:11, 1:11] = 1
        if index < 2:
            mask[14:17, 2:5] = 2
            mask[14:17, 10:13] = 2
        Image.fromarray(frame).save(tmp_path / "d" / "frames" / f"frame_{index:03d}.png")
        Image.fromarray(mask).save(tmp_path / "d" / "masks" / f"mask_{index:03d}.png")
        frames.append(frame)
        masks.append(mask)
    manifest = prepare.prepare(prepare.PrepareConfig(
        input=str(tmp_path / "d"), output=str(tmp_path / "r"), progress=False, workers=1,
        mask_kind="index"))
    fp = manifest["fingerprint"]
    assert fp["frames"] == 6 and fp["distinct_sizes"] == 3 and fp["bits"] == 8
    assert sorted(map(tuple, fp["sizes"])) == [(20, 30, 2), (24, 24, 3), (40, 16, 1)]
    assert fp["frames_with_class"] == [6, 4, 2]
    assert fp["median_object_area"][1:] == [100.0, 9.0]
    pixels = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=3)
    np.testing.assert_allclose(fp["class_frequency"], pixels / pixels.sum(), atol=1e-6)
    values = np.concatenate([f.ravel() for f in frames]).astype(np.float64)
    assert fp["intensity"]["mean"] == pytest.approx(values.mean(), abs=1e-3)
    assert fp["intensity"]["std"] == pytest.approx(values.std(), abs=1e-3)
    assert abs(fp["intensity"]["p0_5"] - np.percentile(values, 0.5)) <= 1
    assert abs(fp["intensity"]["p99_5"] - np.percentile(values, 99.5)) <= 1
