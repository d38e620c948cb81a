"""Lets `python tools/x.py` import the project's packages without installing them, and
keeps TensorFlow's C++ start-up lines out of the tools' output (segtrain.startup)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from segtrain import startup  # noqa: E402

startup.quiet_tensorflow_import()
