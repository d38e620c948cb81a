"""pairs/s of tools/prepare_dataset.py against the decode floor and the classic copy.

    python tools/benchmark_prepare.py --input=DATA_PATH [--json]
    python tools/benchmark_prepare.py --synthetic=1000          # 1000 512x512 pairs

Measured side by side in one run, on the same files:
  prepare        the tool: validate + split + write shards + manifest (all cores)
  decode_floor   a plain Pillow decode of every frame and mask, all cores: the least
                 work validation needs
  classic_copy   the classic recipe: a serial loop copying files into train/val/test
Each also reports core-milliseconds per pair (user + system time of this process and its
worker processes), and `steps_ms` times, on the first pair, each per-pair step of the
tool next to the way it was done before or an alternative tried (BENCHMARKS.md §1).
"""
import functools
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import tempfile
import time

from absl import app, flags
from PIL import Image

if not __package__:  # run as a file (python tools/x.py), not as tools.x
    import _bootstrap  # noqa: F401  (puts the project on sys.path)
from segdata import prepare, sources, synthetic

FLAGS = flags.FLAGS
flags.DEFINE_string("input", "", "Dataset folder (frames/ + masks/).")
flags.DEFINE_integer("synthetic", 0, "Generate this many 512x512 pairs instead of --input.")
flags.DEFINE_integer("workers", 0, "Processes; 0: all cores.")
flags.DEFINE_integer("repeats", 3, "Runs of each method, interleaved; the median is reported.")
flags.DEFINE_bool("json", False, "Print one JSON object.")


def _decode(pair):
    _, frame, mask, _ = pair
    for path in (frame, mask):
        with Image.open(path) as image:
            image.load()
    return 1


def decode_floor(pairs, workers):
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return sum(pool.imap_unordered(_decode, pairs, chunksize=4))


def classic_copy(pairs, out):
    split = prepare.assign_splits(pairs, (70, 20, 10), 42)
    for key, frame, mask, name in split:
        for kind, path in (("frames", frame), ("masks", mask)):
            folder = os.path.join(out, name, kind)
            os.makedirs(folder, exist_ok=True)
            shutil.copy(path, folder)


def _cpu_seconds():
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                          resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(fn):
    """(wall seconds, CPU seconds of this process and its finished children)."""
    cpu, start = _cpu_seconds(), time.perf_counter()
    fn()
    return time.perf_counter() - start, _cpu_seconds() - cpu


def _ms(fn, repeats=200):
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def pair_steps(pairs):
    """ms of each per-pair step on the first pair (0/255 mask; frame decodes: per frame over
    up to 100 different frames): the tool's way and the other one."""
    import io
    import zlib

    import numpy as np
    import tensorflow as tf

    from segdata import png, records
    _, frame_path, mask_path, _ = pairs[0]
    frames = [pair[1] for pair in pairs[:100]]
    image = Image.open(mask_path)
    image.load()
    array = np.asarray(image)
    binary = array & 1
    lut = np.zeros(256, np.uint8)
    lut[1] = lut[255] = 1
    with open(frame_path, "rb") as handle:
        frame = handle.read()
    mask_png = png.encode_gray(binary)

    def decode_from_bytes():
        for path in frames:
            with open(path, "rb") as handle:
                data = handle.read()
            Image.open(io.BytesIO(data)).load()

    def decode_from_path():
        for path in frames:
            with Image.open(path) as frame_image:
                frame_image.load()

    def rle_png_payload():
        rows = np.zeros((binary.shape[0], binary.shape[1] + 1), np.uint8)
        rows[:, 1:] = binary
        squeeze = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
        return squeeze.compress(rows) + squeeze.flush()

    def pillow_png():
        Image.fromarray(binary, "L").save(io.BytesIO(), "PNG", compress_level=1)

    def example_via_features():
        feature = lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))  # noqa
        number = lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))  # noqa
        features = {"a": feature(frame), "b": feature(b"png"), "c": number(512),
                    "d": number(512), "e": number(1), "f": feature(mask_png), "g": feature(b"id")}
        tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()

    return {
        "frame decode, read whole + from memory (before)":
            _ms(decode_from_bytes, 3) / len(frames),
        "frame decode, from its path": _ms(decode_from_path, 3) / len(frames),
        "counts np.bincount (before)": _ms(lambda: np.bincount(array.ravel(), minlength=256)),
        "counts Image.histogram": _ms(image.histogram),
        "0/255 -> 0/1 lookup table (before)": _ms(lambda: lut[array]),
        "0/255 -> 0/1 mask & 1": _ms(lambda: array & 1),
        "mask PNG, Pillow compress_level=1 (before)": _ms(pillow_png),
        "mask PNG, segdata.png.encode_gray": _ms(lambda: png.encode_gray(binary)),
        "mask PNG, zlib Z_RLE instead (tried)": _ms(rle_png_payload),
        "mask PNG bytes, encode_gray / Z_RLE": [len(png.encode_gray(binary)),
                                                len(rle_png_payload())],
        "Example from Feature messages (before)": _ms(example_via_features),
        "Example, records.encode_example": _ms(lambda: records.encode_example(
            "id", frame, "png", 512, 512, 1, mask_png)),
    }


def main(argv):
    del argv
    workers = FLAGS.workers or os.cpu_count()
    with tempfile.TemporaryDirectory() as scratch:
        data = FLAGS.input
        if FLAGS.synthetic:
            data = synthetic.generate(os.path.join(scratch, "data"), count=FLAGS.synthetic,
                                      size=(512, 512))
        _, pairs, problems = sources.find_pairs(data)
        if problems:
            raise SystemExit("\n".join(problems))
        config = prepare.PrepareConfig(input=data, output=os.path.join(scratch, "records"),
                                       workers=workers, progress=False, overwrite=True)
        decode_floor(pairs[:8], workers)  # warm the page cache so no row pays for first reads
        import tensorflow  # noqa: F401,F811  (its ~3 s import is paid once per run: not a rate)
        methods = {
            "decode_floor": functools.partial(decode_floor, pairs, workers),
            "prepare": functools.partial(prepare.prepare, config),
            "classic_copy": functools.partial(classic_copy, pairs,
                                              os.path.join(scratch, "classic")),
        }
        # Interleaved rounds, median per method: one slow moment on a shared machine then
        # lands in one sample of each method instead of deciding the ratio.
        samples = {name: [] for name in methods}
        cpu = {name: [] for name in methods}
        for _ in range(FLAGS.repeats):
            for name, method in methods.items():
                wall, used = _timed(method)
                samples[name].append(wall)
                cpu[name].append(used)
                shutil.rmtree(os.path.join(scratch, "classic"), ignore_errors=True)
        times = {name: statistics.median(values) for name, values in samples.items()}
        core_ms = {name: statistics.median(values) / len(pairs) * 1e3
                   for name, values in cpu.items()}
        steps = pair_steps(pairs)
    rates = {k: len(pairs) / v for k, v in times.items()}
    report = {"pairs": len(pairs), "workers": workers, "repeats": FLAGS.repeats,
              "seconds": times, "samples_s": samples, "pairs_per_s": rates,
              "core_ms_per_pair": core_ms, "steps_ms": steps,
              "prepare_vs_decode_floor": rates["prepare"] / rates["decode_floor"]}
    if FLAGS.json:
        print(json.dumps(report))
        return 0
    print(f"{len(pairs)} pairs, {workers} workers, median of {FLAGS.repeats} interleaved runs")
    for name in ("decode_floor", "prepare", "classic_copy"):
        print(f"  {name:13} {times[name]:7.2f} s  {rates[name]:8.1f} pairs/s  "
              f"{core_ms[name]:5.2f} core-ms/pair")
    print(f"  prepare / decode_floor = {report['prepare_vs_decode_floor']:.2f}")
    print("per-pair steps, one core:")
    for name, value in steps.items():
        print(f"  {name:50} {value}" if isinstance(value, list) else
              f"  {name:50} {value:6.3f} ms")
    return 0


if __name__ == "__main__":
    app.run(main)
