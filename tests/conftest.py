"""Shared fixtures: tiny synthetic datasets and their records, built once per session."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from segdata import prepare, synthetic  # noqa: E402

MEMBRANE = os.path.join(ROOT, "..", "shared", "data", "membrane")


def make_records(tmp_root, name, **generate_kwargs):
    data = synthetic.generate(os.path.join(tmp_root, name + "_files"), **generate_kwargs)
    out = os.path.join(tmp_root, name + "_records")
    prepare.prepare(prepare.PrepareConfig(input=data, output=out, workers=1, progress=False))
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
