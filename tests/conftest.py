"""Shared fixtures: tiny synthetic datasets and their records, built once per session."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from segdata import prepare, synthetic  # noqa: E402

MEMBRANE = os.path.join(ROOT, "..", "shared", "data", "membrane")


def make_records(tmp_root, name, num_shards=0, **generate_kwargs):
    data = synthetic.generate(os.path.join(tmp_root, name + "_files"), **generate_kwargs)
    out = os.path.join(tmp_root, name + "_records")
    prepare.prepare(prepare.PrepareConfig(input=data, output=out, workers=1, progress=False,
                                          num_shards=num_shards))
    return out


@pytest.fixture(scope="session")
def binary_records(tmp_path_factory):
    """40 gray 64x64 binary pairs -> 28/8/4."""
    return make_records(str(tmp_path_factory.mktemp("bin")), "binary", count=40, size=(64, 64))


@pytest.fixture(scope="session")
def multiclass_records(tmp_path_factory):
    """20 RGB JPEG 48x64 pairs with 4 classes."""
    return make_records(str(tmp_path_factory.mktemp("multi")), "multi", count=20, size=(48, 64),
                        num_classes=4, rgb=True, frame_format="jpeg")


@pytest.fixture(scope="session")
def sharded_records(tmp_path_factory):
    """40 gray 32x32 binary pairs -> 28/8/4, 3 shards a split."""
    return make_records(str(tmp_path_factory.mktemp("sharded")), "sharded", num_shards=3,
                        count=40, size=(32, 32))


@pytest.fixture(scope="module")
def data_service_address():
    """A tf.data service dispatcher with 2 workers in this process, both registered."""
    import time

    import tensorflow as tf
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer()
    address = dispatcher.target.split("://")[1]
    workers = [service.WorkerServer(service.WorkerConfig(dispatcher_address=address))
               for _ in range(2)]
    deadline = time.time() + 30
    while dispatcher._num_workers() < 2 and time.time() < deadline:  # no public readiness call
        time.sleep(0.05)
    assert dispatcher._num_workers() == 2
    yield dispatcher.target
    for server in workers + [dispatcher]:
        server.stop()
