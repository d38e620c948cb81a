"""Finds frame/mask pairs in the dataset layouts SegFlow understands.

Each finder returns (pairs, problems): pairs are (id, frame_path, mask_path,
split_or_None) sorted by id; problems are one line per bad file (unmatched,
duplicate id) so the caller can report all of them at once.
"""

import glob
import os
import re

LAYOUTS = ("auto", "frames_masks", "presplit", "voc")
SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
_PREFIXES = ("frame_", "mask_", "image_", "img_", "label_")
_SUFFIXES = ("_mask", "_label", "_gt")


class SourceError(ValueError):
    """The input folder is not a dataset SegFlow can read; says what it expected."""


def default_id(path):
    """frame_007.png, mask_007.png, 007_mask.png -> '007'."""
    stem = os.path.splitext(os.path.basename(path))[0]
    for prefix in _PREFIXES:
        if stem.startswith(prefix):
            stem = stem[len(prefix):]
            break
    for suffix in _SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[:-len(suffix)]
            break
    return stem


def glob_id_function(pattern):
    """'images/img_*_mask.png' -> function(path) giving what '*' matched ('12')."""
    name = os.path.basename(pattern)
    if "*" not in name:
        raise SourceError(f"glob {pattern!r} needs a '*' in its file name to mark the id")
    head, _, tail = name.partition("*")
    regex = re.compile(re.escape(head) + "(.+?)" + re.escape(tail).replace(r"\*", ".*") + "$")
    strip_extension = tail == "" or tail.endswith("*")

    def id_of(path):
        match = regex.match(os.path.basename(path))
        found = match.group(1) if match else default_id(path)
        return os.path.splitext(found)[0] if strip_extension else found
    return id_of


def _images(pattern):
    return sorted(p for p in glob.glob(pattern)
                  if os.path.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS))


def _index(paths, id_of, problems):
    by_id = {}
    for path in paths:
        key = id_of(path)
        if key in by_id:
            problems.append(f"{path}: duplicate id {key!r} (also {by_id[key]})")
            continue
        by_id[key] = path
    return by_id


def match(frame_paths, mask_paths, frame_id, mask_id, split=None):
    problems = []
    frames = _index(frame_paths, frame_id, problems)
    masks = _index(mask_paths, mask_id, problems)
    for key in sorted(set(frames) - set(masks)):
        problems.append(f"{frames[key]}: no mask with id {key!r}")
    for key in sorted(set(masks) - set(frames)):
        problems.append(f"{masks[key]}: no frame with id {key!r}")
    pairs = [(key, frames[key], masks[key], split) for key in sorted(set(frames) & set(masks))]
    return pairs, problems


def find_frames_masks(root, frame_glob="frames/*", mask_glob="masks/*"):
    frame_paths = _images(os.path.join(root, frame_glob))
    mask_paths = _images(os.path.join(root, mask_glob))
    frame_id = default_id if frame_glob == "frames/*" else glob_id_function(frame_glob)
    mask_id = default_id if mask_glob == "masks/*" else glob_id_function(mask_glob)
    return match(frame_paths, mask_paths, frame_id, mask_id)


def find_presplit(root):
    pairs, problems = [], []
    for split in SPLITS:
        frame_dir = os.path.join(root, f"{split}_frames")
        if not os.path.isdir(frame_dir):
            continue
        found, bad = match(_images(os.path.join(frame_dir, "*")),
                           _images(os.path.join(root, f"{split}_masks", "*")),
                           default_id, default_id, split)
        pairs += [(f"{split}/{key}", f, m, s) for key, f, m, s in found]
        problems += bad
    return pairs, problems


def find_voc(root):
    """PASCAL VOC: ImageSets/Segmentation/{split}.txt lists the ids of each split."""
    sets_dir = os.path.join(root, "ImageSets", "Segmentation")
    pairs, problems = [], []
    for split in SPLITS:
        list_file = os.path.join(sets_dir, f"{split}.txt")
        if not os.path.isfile(list_file):
            continue
        with open(list_file) as handle:
            ids = sorted({line.strip() for line in handle if line.strip()})
        for key in ids:
            frame = os.path.join(root, "JPEGImages", key + ".jpg")
            mask = os.path.join(root, "SegmentationClass", key + ".png")
            missing = [p for p in (frame, mask) if not os.path.isfile(p)]
            if missing:
                problems += [f"{p}: listed in {list_file} but missing" for p in missing]
            else:
                pairs.append((key, frame, mask, split))
    if not pairs and not problems:
        problems.append(f"{sets_dir}: no train.txt, val.txt or test.txt")
    return pairs, problems


def detect_layout(root):
    if not os.path.isdir(root):
        raise SourceError(f"{root}: not a folder. Pass --input=DATA_PATH with frames/ and masks/ "
                          "(or pre-split folders, or a PASCAL VOC root).")
    has = lambda name: os.path.isdir(os.path.join(root, name))  # noqa: E731
    if has("JPEGImages") and has("SegmentationClass"):
        return "voc"
    if any(has(f"{split}_frames") for split in SPLITS):
        return "presplit"
    if has("frames") and has("masks"):
        return "frames_masks"
    raise SourceError(
        f"{root}: cannot tell the layout. Expected frames/ + masks/, or train_frames/ + "
        "train_masks/ (and val_, test_), or JPEGImages/ + SegmentationClass/ + ImageSets/ "
        "(PASCAL VOC); or pass --layout and --frame_glob/--mask_glob.")


def find_pairs(root, layout="auto", frame_glob="frames/*", mask_glob="masks/*"):
    """Returns (layout, pairs, problems)."""
    if layout == "auto":
        custom_globs = frame_glob != "frames/*" or mask_glob != "masks/*"
        layout = "frames_masks" if custom_globs and os.path.isdir(root) else detect_layout(root)
    if layout == "frames_masks":
        pairs, problems = find_frames_masks(root, frame_glob, mask_glob)
    elif layout == "presplit":
        pairs, problems = find_presplit(root)
    elif layout == "voc":
        pairs, problems = find_voc(root)
    else:
        raise SourceError(f"--layout={layout!r}: expected one of {LAYOUTS}")
    if not pairs and not problems:
        problems.append(f"{root}: no image files found for layout {layout}")
    return layout, pairs, problems
