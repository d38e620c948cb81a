"""Validates frame/mask pairs, splits them with a constant seed and writes
sharded TFRecords plus a manifest, atomically.

Order of work: find pairs -> split -> validate every pair (in worker
processes) -> stream into shards inside a temp folder -> manifest -> rename.
Nothing appears at the output path until everything succeeded.
"""

import collections
import dataclasses
import functools
import glob
import json
import math
import multiprocessing
import os
import shutil
import sys
import time

import numpy as np

from segdata import fingerprint, intensity, records, sources, validate


class PrepareError(ValueError):
    """Bad input or flags; the message has one line per problem, each naming a file."""


@dataclasses.dataclass
class PrepareConfig:
    input: str
    output: str
    layout: str = "auto"
    split: tuple = (70, 20, 10)
    seed: int = 42
    frame_glob: str = "frames/*"
    mask_glob: str = "masks/*"
    mask_kind: str = "auto"
    palette: str = ""
    num_classes: int = 0          # 0: infer from the masks (at least 2)
    ignore_label: int = 255
    class_names: tuple = ()
    on_error: str = "fail"        # fail | skip
    shard_mb: float = 100.0
    num_shards: int = 0           # per split; 0: derived from shard_mb
    compression: str = ""         # "" | GZIP
    resize: tuple = None          # (height, width) to store frames pre-resized
    workers: int = 0              # 0: all cores
    overwrite: bool = False
    progress: bool = True


def parse_ratios(text):
    """'70,20,10' -> (70, 20, 10), or PrepareError naming the flag."""
    try:
        ratios = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        raise PrepareError(f"--split={text!r}: expected three integers like 70,20,10")
    if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) != 100:
        raise PrepareError(f"--split={text!r}: need three non-negative ratios (train,val,test) "
                           "that sum to 100, e.g. 70,20,10 or 80,10,10")
    return ratios


def split_counts(total, ratios):
    """Largest-remainder counts; every non-zero ratio gets >= 1 pair when there are enough."""
    exact = [total * r / 100 for r in ratios]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(3), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in order[:total - sum(counts)]:
        counts[i] += 1
    wanted = [i for i in range(3) if ratios[i] > 0]
    if total >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                donor = max(range(3), key=lambda j: counts[j])
                counts[donor] -= 1
                counts[i] += 1
    return counts


def assign_splits(pairs, ratios, seed):
    """Sort by id, permute with default_rng(seed), cut at the ratios."""
    pairs = sorted(pairs, key=lambda pair: pair[0])
    order = np.random.default_rng(seed).permutation(len(pairs))
    counts = split_counts(len(pairs), ratios)
    out, start = [], 0
    for split, count in zip(sources.SPLITS, counts):
        chosen = sorted(order[start:start + count])  # keep id order inside a split
        out += [(pairs[i][0], pairs[i][1], pairs[i][2], split) for i in chosen]
        start += count
    return out


class _Progress:
    """One line on stderr with rate and ETA, at most twice a second."""

    def __init__(self, total, enabled, label="pairs"):
        self.total, self.enabled, self.label = total, enabled, label
        self.start = self.last = time.monotonic()
        self.done = 0

    def update(self, count=1):
        self.done += count
        now = time.monotonic()
        if self.enabled and (now - self.last > 0.5 or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else 0
            sys.stderr.write(f"\r{self.done}/{self.total} {self.label}  {rate:.0f}/s  "
                             f"ETA {eta:.0f}s ")
            if self.done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def _check_all(pairs, options, workers):
    """Yields check results in the order of `pairs`, validated in parallel."""
    check = functools.partial(validate.check_pair, options=options)
    if workers <= 1 or len(pairs) < 8:
        yield from map(check, pairs)
        return
    # fork: workers inherit imports and never touch TensorFlow (validate.py is PIL-only).
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        # Chunks of up to 16 pairs halve the parent's share of the IPC; small inputs get
        # smaller chunks so every worker still has some.
        chunksize = max(1, min(16, len(pairs) // (4 * workers)))
        yield from pool.imap(check, pairs, chunksize=chunksize)


def _decide_bit_depth(pairs):
    """The dataset's bit depth: most frames' (from their headers; 8 on a tie), so the odd
    frames are the ones named."""
    counts = collections.Counter(validate.frame_bits(pair[1]) for pair in pairs)
    counts.pop(None, None)
    return 16 if counts[16] > counts[8] else 8


def _decide_mask_kind(config, pairs, palette):
    """(kind, why): --mask_kind unless auto; auto is decided once from every mask's values,
    never per file (a per-file guess turned a class-index set's background+ignore masks
    into class 1). The reason goes to the log and the manifest."""
    if config.mask_kind != "auto":
        return config.mask_kind, f"--mask_kind={config.mask_kind}"
    if palette is not None:
        return "rgb", "auto: --palette given"
    workers = config.workers or os.cpu_count()
    paths = [pair[2] for pair in pairs]
    if workers <= 1 or len(paths) < 8:
        value_sets = list(map(validate.mask_values, paths))
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            value_sets = pool.map(validate.mask_values, paths,
                                  chunksize=max(1, min(16, len(paths) // (4 * workers))))
    kind, seen = validate.dataset_mask_kind(value_sets)
    if kind == "binary":
        why = ("auto: every mask holds only 0 and 255, read as binary 0/1 (pass "
               "--mask_kind=index if 255 marks ignored pixels)")
    else:
        shown = seen if len(seen) <= 12 else seen[:12] + ["..."]
        why = (f"auto: gray values are class indices (values seen: {shown}; "
               f"{config.ignore_label} is the ignore label)")
    if config.progress:
        sys.stderr.write(f"mask kind: {kind} ({why})\n")
    return kind, why


def _shard_counts(pairs_by_split, config):
    """Shards per split: --num_shards, else input bytes / --shard_mb (estimated from files)."""
    counts = {}
    for split, pairs in pairs_by_split.items():
        if not pairs:
            counts[split] = 0
        elif config.num_shards:
            counts[split] = min(config.num_shards, len(pairs))
        else:
            size = sum(os.path.getsize(f) + os.path.getsize(m) for _, f, m, _ in pairs)
            counts[split] = max(1, min(len(pairs), math.ceil(size / (config.shard_mb * 2**20))))
    return counts


def _remove_stale_temps(output):
    for stale in glob.glob(output.rstrip("/") + ".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def prepare(config):
    """Runs the whole preparation; returns the manifest dict. Raises PrepareError."""
    output = os.path.abspath(config.output)
    if os.path.exists(output) and not config.overwrite:
        raise PrepareError(f"{output}: already exists; pass --overwrite to replace it")
    try:
        layout, pairs, problems = sources.find_pairs(config.input, config.layout,
                                                     config.frame_glob, config.mask_glob)
    except sources.SourceError as err:
        raise PrepareError(str(err))
    if problems and config.on_error == "fail":
        raise PrepareError("\n".join(problems))
    if not pairs:
        raise PrepareError(f"{config.input}: no frame/mask pairs found\n" + "\n".join(problems))
    if layout == "frames_masks":
        pairs = assign_splits(pairs, config.split, config.seed)
    try:
        palette = validate.load_palette(config.palette) if config.palette else None
    except (OSError, ValueError) as err:
        raise PrepareError(f"--palette={config.palette}: {err}")
    mask_kind, mask_note = _decide_mask_kind(config, pairs, palette)
    bits = _decide_bit_depth(pairs)
    options = {"mask_kind": mask_kind, "palette": palette,
               "num_classes": config.num_classes, "ignore_label": config.ignore_label,
               "resize": tuple(config.resize) if config.resize else None}
    # the fingerprint's objects are measured on a seeded sample of pairs
    ids = sorted(pair[0] for pair in pairs)
    sample = np.random.default_rng(config.seed).permutation(len(ids))[:fingerprint.SAMPLE_FRAMES]
    options["measure_objects"] = frozenset(ids[i] for i in sample)

    pairs_by_split = {s: [p for p in pairs if p[3] == s] for s in sources.SPLITS}
    shard_counts = _shard_counts(pairs_by_split, config)
    ordered = [p for s in sources.SPLITS for p in pairs_by_split[s]]
    position = {p[0]: i for s in sources.SPLITS for i, p in enumerate(pairs_by_split[s])}

    _remove_stale_temps(output)
    temp = f"{output}.tmp-{os.getpid()}"
    os.makedirs(temp)
    try:
        summary = _write_shards(temp, ordered, position, pairs_by_split, shard_counts,
                                options, config, bits)
        skipped = summary.pop("skipped")
        deep = summary.pop("intensity")
        frame_stats, bits = summary.pop("frame_stats"), summary.pop("bits")
        if skipped and config.on_error == "fail":
            raise PrepareError("\n".join(entry["reason"] for entry in skipped))
        skipped += [{"file": line.split(": ")[0], "reason": line} for line in problems]
        manifest = _manifest(config, layout, summary, skipped)
        manifest["mask_kind"], manifest["mask_kind_reason"] = mask_kind, mask_note
        manifest["fingerprint"] = fingerprint.summarise(
            frame_stats, manifest["num_classes"], manifest["splits"], bits, manifest["channels"])
        if deep:
            manifest["intensity"] = deep
            if config.progress:
                sys.stderr.write(f"intensity: {deep['why']}\n")
        with open(os.path.join(temp, records.MANIFEST_NAME), "w") as handle:
            json.dump(manifest, handle, indent=2, sort_keys=True)
        _replace(temp, output)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return manifest


def _write_shards(temp, ordered, position, pairs_by_split, shard_counts, options, config, bits):
    import tensorflow as tf  # imported here so validation workers never fork a TF runtime

    writer_options = tf.io.TFRecordOptions(compression_type=config.compression or None)
    state = {s: {"writer": None, "index": -1, "shards": [], "count": 0, "counts": None,
                 "min": None, "max": None, "channels": 0} for s in sources.SPLITS}
    skipped = []
    progress = _Progress(len(ordered), config.progress)
    frame_paths = {pair[0]: pair[1] for pair in ordered}
    deep_samples = []
    frame_stats = []

    def close(split):
        entry = state[split]
        if entry["writer"] is not None:
            entry["writer"].close()
            entry["writer"] = None

    for result in _check_all(ordered, options, config.workers or os.cpu_count()):
        progress.update()
        if "error" in result:
            skipped.append({"id": result["id"], "reason": result["error"]})
            continue
        if result["bits"] != bits:
            # a bad pair like any other, listed with the rest
            skipped.append({"id": result["id"], "reason": (
                f"{result['frame']}: {result['bits']}-bit, but most frames are {bits}-bit: "
                "one dataset needs one bit depth (one rule maps its frames to the model); "
                "convert the odd frames to the others' depth")})
            continue
        if result["intensity_sample"] is not None:
            deep_samples.append(result["intensity_sample"])
        frame_stats.append((result["height"], result["width"], result["statistics"]))
        split = result["split"]
        entry = state[split]
        total = len(pairs_by_split[split])
        shard = position[result["id"]] * shard_counts[split] // total
        if shard != entry["index"]:
            close(split)
            entry["index"] = shard
            name = f"{split}-{shard:05d}.partial"
            entry["writer"] = tf.io.TFRecordWriter(os.path.join(temp, name), writer_options)
            entry["shards"].append({"partial": name, "count": 0})
        image_bytes = result["image_bytes"]
        if image_bytes is None:
            with open(frame_paths[result["id"]], "rb") as handle:
                image_bytes = handle.read()
        entry["writer"].write(records.encode_example(
            result["id"], image_bytes, result["format"], result["height"],
            result["width"], result["channels"], result["mask_png"]))
        entry["shards"][-1]["count"] += 1
        entry["count"] += 1
        counts = result["counts"].astype(np.int64)
        entry["counts"] = counts if entry["counts"] is None else entry["counts"] + counts
        entry["channels"] = max(entry["channels"], result["channels"])
        size = [result["height"], result["width"]]
        entry["min"] = size if entry["min"] is None else np.minimum(entry["min"], size).tolist()
        entry["max"] = size if entry["max"] is None else np.maximum(entry["max"], size).tolist()

    summary = {"skipped": skipped,
               "intensity": intensity.decide(deep_samples) if deep_samples else None,
               "frame_stats": frame_stats, "bits": bits}
    for split in sources.SPLITS:
        close(split)
        entry = state[split]
        shards = []
        for i, shard in enumerate(entry["shards"]):
            final = f"{split}-{i:05d}-of-{len(entry['shards']):05d}.tfrecord"
            os.replace(os.path.join(temp, shard["partial"]), os.path.join(temp, final))
            shards.append({"file": final, "count": shard["count"],
                           "sha256": records.sha256_of(os.path.join(temp, final))})
        summary[split] = {"count": entry["count"], "shards": shards,
                          "value_counts": entry["counts"],
                          "min_size": entry["min"], "max_size": entry["max"],
                          "channels": entry["channels"]}
    return summary


def _manifest(config, layout, summary, skipped):
    totals = sum((s["value_counts"] for s in summary.values() if s["value_counts"] is not None),
                 np.zeros(256, np.int64))
    present = [v for v in np.flatnonzero(totals) if v != config.ignore_label]
    num_classes = config.num_classes or max(2, (max(present) + 1) if present else 2)
    # A mixed gray/RGB dataset is read as RGB; an all-gray one stays 1 channel (cheaper warps).
    channels = max(entry.pop("channels") for entry in summary.values()) or 1
    splits = {}
    for split, entry in summary.items():
        counts = entry.pop("value_counts")
        counts = counts if counts is not None else np.zeros(256, np.int64)
        entry["class_pixels"] = counts[:num_classes].tolist()
        entry["ignore_pixels"] = (int(counts[config.ignore_label])
                                  if config.ignore_label < 256 else 0)
        splits[split] = entry
    return {
        "schema_version": records.SCHEMA_VERSION,
        "source": os.path.abspath(config.input),
        "layout": layout,
        "seed": config.seed,
        "ratios": list(config.split) if layout == "frames_masks" else None,
        "num_classes": int(num_classes),
        "class_names": list(config.class_names) or None,
        "ignore_label": config.ignore_label,
        "compression": config.compression,
        "channels": channels,
        "resized_to": list(config.resize) if config.resize else None,
        "splits": splits,
        "skipped": skipped,
        "command": " ".join(sys.argv),
    }


def _replace(temp, output):
    """Swaps the finished temp folder in; an old output is removed only after the swap."""
    old = None
    if os.path.exists(output):
        old = f"{output}.old-{os.getpid()}"
        os.replace(output, old)
    os.replace(temp, output)
    if old:
        shutil.rmtree(old, ignore_errors=True)
