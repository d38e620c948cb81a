"""The one place that knows the TFRecord schema and the manifest layout.

Everything else reads and writes examples through `encode_example`,
`parse_example` and `load_manifest`, so a feature key never appears twice.

Data contract after parsing (until the batch reaches Keras):
    {"image": uint8[H, W, C], "mask": uint8[H, W, 1], "id": string}
"""

import hashlib
import json
import os

import tensorflow as tf

from segdata import intensity

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"

# Feature keys: defined here and nowhere else.
_IMAGE = "image/encoded"
_IMAGE_FORMAT = "image/format"
_HEIGHT = "image/height"
_WIDTH = "image/width"
_CHANNELS = "image/channels"
_MASK = "mask/encoded"
_ID = "example/id"

# What SegFlow reads back. Format, height, width and channels are written for other readers
# of the records (the usual image-record fields); the pipeline decodes them from the bytes.
_FEATURES = {
    _IMAGE: tf.io.FixedLenFeature([], tf.string),
    _MASK: tf.io.FixedLenFeature([], tf.string),
    _ID: tf.io.FixedLenFeature([], tf.string),
}


class RecordsError(ValueError):
    """Raised for a missing, corrupt or unsafe records folder; names the file."""


def encode_example(example_id, image_bytes, image_format, height, width, channels, mask_png):
    """Serialises one pair. The frame keeps its original encoding (no re-encode).

    Fields are appended in place: building Feature messages first and handing them to
    Features(feature=...) copied the frame bytes twice more, a third of the writer's time.
    """
    example = tf.train.Example()
    feature = example.features.feature
    feature[_IMAGE].bytes_list.value.append(image_bytes)
    feature[_IMAGE_FORMAT].bytes_list.value.append(image_format.encode())
    feature[_HEIGHT].int64_list.value.append(int(height))
    feature[_WIDTH].int64_list.value.append(int(width))
    feature[_CHANNELS].int64_list.value.append(int(channels))
    feature[_MASK].bytes_list.value.append(mask_png)
    feature[_ID].bytes_list.value.append(example_id.encode())
    return example.SerializeToString(deterministic=True)  # sorted map keys: same bytes every run


def parse_raw(serialized):
    """Serialized example -> dict of still-encoded fields (the decoder stage's input)."""
    parsed = tf.io.parse_single_example(serialized, _FEATURES)
    return {"image_bytes": parsed[_IMAGE], "mask_bytes": parsed[_MASK], "id": parsed[_ID]}


def decode(raw, channels=0, deep=None):
    """Encoded fields -> {"image": uint8[H,W,C], "mask": uint8[H,W,1], "id"}.

    `channels=0` keeps the stored channel count; 1 or 3 converts. `deep`: the manifest's
    "intensity" rule of a 16-bit dataset (16-bit PNG frames, mapped to uint8 by it).
    """
    if deep:
        image = intensity.apply(tf.io.decode_png(raw["image_bytes"], channels=channels,
                                                 dtype=tf.uint16), deep)
    else:
        image = tf.io.decode_image(raw["image_bytes"], channels=channels, dtype=tf.uint8,
                                   expand_animations=False)
    mask = tf.io.decode_png(raw["mask_bytes"], channels=1, dtype=tf.uint8)
    return {"image": image, "mask": mask, "id": raw["id"]}


def parse_example(serialized, channels=0, deep=None):
    """Serialized example -> uint8 image and mask plus id."""
    return decode(parse_raw(serialized), channels, deep)


# ---------------------------------------------------------------------------
# Manifest


def sha256_of(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(records_dir):
    path = os.path.join(records_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise RecordsError(
            f"{path}: no manifest. Point --data_dir at a folder written by "
            "tools/prepare_dataset.py.")
    try:
        with open(path) as handle:
            manifest = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise RecordsError(f"{path}: unreadable manifest ({err}). Re-run tools/prepare_dataset.py.")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise RecordsError(
            f"{path}: schema_version {manifest.get('schema_version')!r}, this SegFlow reads "
            f"{SCHEMA_VERSION}. Re-run tools/prepare_dataset.py.")
    return manifest


def _safe_shard_path(records_dir, name):
    # A manifest is data, not a command: never let it point outside its folder.
    if os.path.isabs(name) or os.path.normpath(name) != name or name.startswith(".."):
        raise RecordsError(
            f"{os.path.join(records_dir, MANIFEST_NAME)}: shard name {name!r} is not a plain "
            "file name inside the records folder; refusing to read it.")
    return os.path.join(records_dir, name)


def list_shards(records_dir, split, manifest=None, verify=False):
    """Shard paths of one split, checked to exist (and, with verify, their sha256)."""
    manifest = manifest or load_manifest(records_dir)
    splits = manifest["splits"]
    if split not in splits:
        raise RecordsError(
            f"{os.path.join(records_dir, MANIFEST_NAME)}: no split {split!r}; it has "
            f"{sorted(splits)}.")
    paths = []
    for shard in splits[split]["shards"]:
        path = _safe_shard_path(records_dir, shard["file"])
        if not os.path.isfile(path):
            raise RecordsError(f"{path}: listed in the manifest but missing. Re-run "
                               "tools/prepare_dataset.py.")
        paths.append(path)
    if verify:
        corrupt = find_corrupt_shards(records_dir, split, manifest)
        if corrupt:
            raise RecordsError(f"{corrupt[0]}: sha256 does not match the manifest (corrupt or "
                               "changed shard). Re-run tools/prepare_dataset.py.")
    return paths


def find_corrupt_shards(records_dir, split, manifest=None):
    """Shards of a split missing or whose sha256 differs from the manifest."""
    manifest = manifest or load_manifest(records_dir)
    bad = []
    for shard in manifest["splits"][split]["shards"]:
        path = _safe_shard_path(records_dir, shard["file"])
        if not os.path.isfile(path) or sha256_of(path) != shard["sha256"]:
            bad.append(path)
    return bad


def compression_of(manifest):
    return manifest.get("compression") or ""


def iter_split(records_dir, split, channels=0):
    """Eager convenience for tools: decoded numpy examples one by one, in stored order."""
    manifest = load_manifest(records_dir)
    paths = list_shards(records_dir, split, manifest)
    dataset = tf.data.TFRecordDataset(paths, compression_type=compression_of(manifest))
    for serialized in dataset:
        example = parse_example(serialized, channels, manifest.get("intensity"))
        yield {"image": example["image"].numpy(), "mask": example["mask"].numpy(),
               "id": example["id"].numpy().decode()}


def read_split(records_dir, split, channels=0):
    """The whole split as a list (tests, small splits)."""
    return list(iter_split(records_dir, split, channels))
