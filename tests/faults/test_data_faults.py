"""Faults in the data: bad shards and manifests, bad input files, killed writers and services."""
import json
import os
import shutil
import signal
import struct
import subprocess
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import ROOT, free_port, python, report, start, train_cmd, wait_until
from segdata import pipeline, prepare, records, spec, synthetic


def _copy(records_dir, tmp_path, name):
    out = tmp_path / name
    shutil.copytree(records_dir, out)
    return out


def _shard(path):
    return path / "train-00000-of-00001.tfrecord"


def _flip_byte(path):
    data = bytearray(_shard(path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    _shard(path).write_bytes(bytes(data))


def _truncate(path):
    data = _shard(path).read_bytes()
    _shard(path).write_bytes(data[:len(data) // 3])


def _delete(path):
    os.remove(_shard(path))


def _wrong_checksum(path):
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["sha256"] = "0" * 64
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", [_flip_byte, _truncate, _delete, _wrong_checksum])
def test_damaged_records_name_the_file(binary_records, tmp_path, damage):
    """Fault: a shard with a flipped byte, a truncated shard, a listed shard missing, a
    manifest with a wrong checksum.
    User sees: one "train.py: error: ...train-00000-of-00001.tfrecord..." line, exit 1.
    Kept: nothing is written to the run folder but flags.txt."""
    bad = _copy(binary_records, tmp_path, "bad")
    damage(bad)
    result = subprocess.run(train_cmd(bad, tmp_path / "run", "--export=false", "--epochs=1", "--steps_per_epoch=1"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "train-00000-of-00001.tfrecord" in result.stderr and "Traceback" not in result.stderr


def _records_before(path, offset):
    """How many whole TFRecord records lie before the one holding byte `offset`, by walking
    the framing (uint64 length, uint32 crc, data, uint32 crc) with struct."""
    data, start, index = path.read_bytes(), 0, 0
    while start < len(data):
        (length,) = struct.unpack("<Q", data[start:start + 8])
        end = start + 12 + length + 4
        if start <= offset < end:
            return index
        start, index = end, index + 1
    raise ValueError(f"offset {offset} is past the end of {path}")


def test_skip_corrupt_trains_on_and_counts(binary_records, tmp_path):
    """With --skip_corrupt a flipped byte is reported and the readable records are used:
    every record before the damaged one (TF's reader cannot find the next record boundary
    after a damaged one, so the rest of that shard is lost too)."""
    bad = _copy(binary_records, tmp_path, "bad")
    flipped_at = len(_shard(bad).read_bytes()) // 2
    _flip_byte(bad)
    result = subprocess.run(train_cmd(bad, tmp_path / "run", "--export=false", "--epochs=1", "--steps_per_epoch=2",
                                      "--skip_corrupt"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 corrupt shard(s)" in result.stdout
    kept = sum(b["image"].shape[0] for b in pipeline.training_dataset(
        str(bad), spec.InputSpec.for_records(str(bad), (32, 32)), 1, repeat=False,
        shuffle=False, skip_corrupt=True))
    expected = _records_before(_shard(bad), flipped_at)
    assert 0 < expected < 28 and kept == expected
    report("flipped_byte_skip", examples_kept=kept, examples_in_split=28)


def test_sigkill_prepare_mid_write(tmp_path):
    """Fault: kill -9 of tools/prepare_dataset.py while it writes shards, over an existing output.
    User sees: the previous records folder, untouched; the rerun succeeds and cleans up.
    Kept: the old output until the new one is complete (rename at the end)."""
    data = synthetic.generate(str(tmp_path / "d"), count=300, size=(96, 96))
    out = tmp_path / "out"
    prepare.prepare(prepare.PrepareConfig(input=data, output=str(out), split=(100, 0, 0),
                                          workers=1, progress=False))
    before = (out / "manifest.json").read_text()
    cmd = python(os.path.join(ROOT, "tools", "prepare_dataset.py"), f"--input={data}",
                 f"--output={out}", "--workers=1", "--overwrite")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_until(lambda: list(tmp_path.glob("out.tmp-*/*.partial")), 60, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "manifest.json").read_text() == before
    assert len(records.read_split(str(out), "train")) == 300
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    assert not list(tmp_path.glob("out.tmp-*"))
    assert json.loads((out / "manifest.json").read_text())["splits"]["train"]["count"] == 210


def _bad_file(kind, rng):
    """Bytes of a frame that is broken or unusual in one way."""
    import io
    buffer = io.BytesIO()
    if kind == "random_bytes":
        return rng.bytes(int(rng.integers(1, 400)))
    if kind == "empty":
        return b""
    if kind == "one_pixel":
        Image.fromarray(np.zeros((1, 1), np.uint8)).save(buffer, "PNG")
    elif kind == "png16":
        Image.fromarray(rng.integers(0, 65535, (16, 16)).astype(np.uint16)).save(buffer, "PNG")
    elif kind == "cmyk_jpeg":
        Image.new("CMYK", (16, 16), (10, 20, 30, 40)).save(buffer, "JPEG")
    elif kind == "truncated_png":
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(buffer, "PNG")
        return buffer.getvalue()[:int(rng.integers(10, 300))]
    return buffer.getvalue()


KINDS = ["random_bytes", "empty", "one_pixel", "png16", "cmyk_jpeg", "truncated_png",
         "too_many_classes"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# each kind at most once: one 16-bit frame never outnumbers the 8-bit frame_000
@given(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=3, unique=True),
       seed=st.integers(0, 2**16))
def test_random_bad_inputs_never_traceback(tmp_path_factory, kinds, seed):
    """Fault: random bytes, empty files, 1x1 images, 16-bit PNGs, CMYK JPEGs, truncated files,
    masks with more classes than declared, mixed with good pairs.
    User sees: PrepareError with one line per bad file naming it; never another exception.
    Kept: nothing written (on_error=fail); CMYK frames are valid and converted; a 16-bit
    frame among the 8-bit ones (frame_000 decides) is named: one dataset, one bit depth."""
    rng = np.random.default_rng(seed)
    root = tmp_path_factory.mktemp("prop")
    (root / "frames").mkdir()
    (root / "masks").mkdir()
    good = np.zeros((16, 16), np.uint8)
    Image.fromarray(good).save(root / "frames" / "frame_000.png")
    Image.fromarray(good).save(root / "masks" / "mask_000.png")
    expected_bad = set()
    for i, kind in enumerate(kinds, start=1):
        frame, mask = root / "frames" / f"frame_{i:03d}.png", root / "masks" / f"mask_{i:03d}.png"
        if kind == "too_many_classes":
            Image.fromarray(good).save(frame)
            Image.fromarray(np.full((16, 16), 9, np.uint8)).save(mask)
            expected_bad.add(mask.name)
            continue
        frame.write_bytes(_bad_file(kind, rng))
        if kind == "one_pixel":
            Image.fromarray(np.zeros((1, 1), np.uint8)).save(mask)
        else:
            Image.fromarray(good).save(mask)
        if kind != "cmyk_jpeg":
            expected_bad.add(frame.name)
    out = root / "out"
    config = prepare.PrepareConfig(input=str(root), output=str(out), num_classes=3, workers=1,
                                   progress=False, split=(100, 0, 0))
    if expected_bad:
        with pytest.raises(prepare.PrepareError) as err:
            prepare.prepare(config)
        named = {line.split(": ")[0].rsplit("/", 1)[-1] for line in str(err.value).splitlines()}
        assert expected_bad <= named
        assert not out.exists()
    else:
        manifest = prepare.prepare(config)
        assert manifest["splits"]["train"]["count"] == len(kinds) + 1
        assert len(records.read_split(str(out), "train")) == len(kinds) + 1


def _rss_mb():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.parametrize("cache", [False, True])
def test_input_pipeline_memory_is_flat(binary_records, cache):
    """Fault: a leak in the input pipeline over a long run.
    Check: 20 epochs over the same records keep RSS within 10% of its value after epoch 1."""
    from segdata import augment
    dataset = pipeline.training_dataset(
        binary_records, spec.InputSpec.for_records(binary_records, (64, 64)), 4,
        augment.AugmentConfig(hflip=True, rotation=10, noise=2), repeat=False, cache=cache)
    rss = []
    for _ in range(20):
        for _ in dataset:
            pass
        rss.append(_rss_mb())
    growth = (rss[-1] - rss[0]) / rss[0]
    report(f"memory_cache={cache}", rss_after_epoch1_mb=round(rss[0]), rss_after_epoch20_mb=round(rss[-1]))
    assert growth < 0.10, rss


def _port_open(port):
    import socket
    with socket.socket() as probe:
        return probe.connect_ex(("localhost", port)) == 0


class LocalDataService:
    """A dispatcher and 2 workers as subprocesses on localhost; restartable on the same port."""

    def __init__(self):
        self.port = free_port()
        self.address = f"grpc://localhost:{self.port}"
        self.processes = []
        self.start()

    def start(self):
        tool = os.path.join(ROOT, "tools", "data_service.py")
        self.processes = [subprocess.Popen(
            python(tool, "--role=dispatcher", f"--port={self.port}", "--worker_timeout_ms=3000"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        self.processes += [subprocess.Popen(
            python(tool, "--role=worker", f"--port={free_port()}",
                   f"--dispatcher=localhost:{self.port}"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
        # ready when the dispatcher takes connections and the workers had a moment to register
        assert wait_until(lambda: _port_open(self.port), 30)
        time.sleep(2)

    @property
    def workers(self):
        return self.processes[1:]

    def stop(self):
        for proc in self.processes:
            proc.kill()
            proc.wait()


@pytest.fixture
def data_service():
    service = LocalDataService()
    yield service
    service.stop()


def test_data_service_each_example_once_and_training(binary_records, tmp_path, data_service):
    """DYNAMIC sharding: one pass over the split through 2 service workers yields every
    training example exactly once; a short training run reads through the service."""
    address = data_service.address
    from segdata import service
    dataset = service.distribute(pipeline.training_dataset(
        binary_records, spec.InputSpec.for_records(binary_records, (64, 64)), 4, repeat=False,
        with_ids=True), address)
    ids = [i.decode() for batch in dataset for i in batch["id"].numpy()]
    assert sorted(ids) == sorted(e["id"] for e in records.read_split(binary_records, "train"))
    result = subprocess.run(train_cmd(binary_records, tmp_path / "run", "--export=false", "--epochs=2",
                                      "--steps_per_epoch=4", f"--data_service={address}"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 2/2" in result.stdout


def test_sigkill_data_service_worker(binary_records, tmp_path, data_service):
    """Fault: kill -9 of one of 2 tf.data service workers mid-run.
    User sees: training goes on with the surviving worker and finishes (exit 0). That is
    what DYNAMIC sharding with the pipeline's repeat inside the service guarantees
    (segdata/service.py): the dead worker's splits are lost for that pass, and the
    dispatcher hands every later split to the workers still alive.
    Kept: the run, whole; the examples of the lost splits are skipped once."""
    address, workers = data_service.address, data_service.workers
    run = tmp_path / "run"
    cmd = train_cmd(binary_records, run, "--export=false", "--epochs=4", "--steps_per_epoch=14",
                    f"--data_service={address}", "--patience=10", "--step_timeout_s=60")
    proc = start(cmd)
    from helpers import backup_epoch
    assert wait_until(lambda: backup_epoch(run) >= 1, 180, proc)
    assert proc.poll() is None, "the run ended before the worker was killed"
    killed = time.time()
    workers[0].send_signal(signal.SIGKILL)
    output, _ = proc.communicate(timeout=300)
    ended_after = time.time() - killed
    assert proc.returncode == 0, output[-3000:]
    assert "epoch 4/4" in output and "resumed from backup" not in output
    assert workers[0].poll() is not None and workers[1].poll() is None
    report("sigkill_data_service_worker", exit_code=0, outcome="training went on",
           run_finished_after_kill_s=round(ended_after, 1))
