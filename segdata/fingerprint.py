"""The dataset fingerprint prepare writes into the manifest: what a training plan needs to
know about the data (nnU-Net's idea), measured once from every pair.

Per pair, in the validation workers (numpy + scipy only, no TensorFlow): the frame's grey
level histogram (8-bit frames), which classes it holds, and on a sample of pairs the area
of each connected object of each class. `summarise` turns them into the manifest's
"fingerprint": frame sizes (the distribution, not only the range), channels, bit depth and
intensity statistics, class pixel frequencies, how many frames hold each class, and the
median object area per class.
"""
import collections

import numpy as np

MAX_SIZES_LISTED = 50     # distinct frame sizes written out, most frequent first
SAMPLE_FRAMES = 200       # pairs whose objects are measured (connected components)


def frame_statistics(image, mask, counts, ignore_label, measure_objects):
    """One pair's share: `image` a decoded 8-bit PIL frame (None for deeper ones, whose
    values the intensity rule samples), `mask` uint8 class indices, `counts` its 256 value
    counts; with `measure_objects`, the areas of its connected objects per class."""
    stats = {"classes": [int(v) for v in np.flatnonzero(counts) if v != ignore_label]}
    if image is not None:
        histogram = np.asarray(image.histogram(), np.int64)
        # RGB: the three channels' histograms summed, a grey-level distribution of all
        stats["histogram"] = histogram.reshape(-1, 256).sum(0)
    if measure_objects:
        from scipy import ndimage
        areas = {}
        for value in stats["classes"]:
            labelled, found = ndimage.label(mask == value)
            if found:
                areas[value] = np.bincount(labelled.ravel())[1:].tolist()
        stats["object_areas"] = areas
    return stats


def summarise(results, num_classes, splits, bits, channels):
    """The manifest's fingerprint from every kept pair's (height, width, statistics) and
    the manifest's split entries (class pixel counts)."""
    sizes = collections.Counter((h, w) for h, w, _ in results)
    frames_with = np.zeros(num_classes, np.int64)
    areas = collections.defaultdict(list)
    histogram = np.zeros(256, np.int64)
    for _, _, stats in results:
        for value in stats["classes"]:
            if value < num_classes:
                frames_with[value] += 1
        for value, found in stats.get("object_areas", {}).items():
            areas[int(value)] += found
        if "histogram" in stats:
            histogram += stats["histogram"]
    pixels = np.sum([split["class_pixels"] for split in splits.values()], axis=0)
    heights = np.repeat([h for h, _ in sizes], list(sizes.values()))
    widths = np.repeat([w for _, w in sizes], list(sizes.values()))
    fingerprint = {
        "frames": len(results),
        "distinct_sizes": len(sizes),
        "sizes": [[h, w, n] for (h, w), n in sizes.most_common(MAX_SIZES_LISTED)],
        "median_size": [int(np.median(heights)), int(np.median(widths))] if results else None,
        "channels": channels,
        "bits": bits,
        "class_frequency": (pixels / max(pixels.sum(), 1)).round(6).tolist(),
        "frames_with_class": frames_with.tolist(),
        "median_object_area": [float(np.median(areas[c])) if areas[c] else None
                               for c in range(num_classes)],
        "objects_measured_in": min(len(results), SAMPLE_FRAMES),
    }
    if histogram.sum():
        levels = np.arange(256)
        mean = float((histogram * levels).sum() / histogram.sum())
        cumulative = np.cumsum(histogram) / histogram.sum()
        fingerprint["intensity"] = {
            "mean": round(mean, 3),
            "std": round(float(np.sqrt((histogram * (levels - mean) ** 2).sum()
                                       / histogram.sum())), 3),
            "p0_5": int(np.searchsorted(cumulative, 0.005)),
            "p99_5": int(np.searchsorted(cumulative, 0.995)),
        }
    return fingerprint
