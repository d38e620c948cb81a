"""Lets `python tools/x.py` import the project's packages without installing them."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# TensorFlow's C++ start-up chatter (oneDNN, CPU instruction notes) buries the tools' output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
