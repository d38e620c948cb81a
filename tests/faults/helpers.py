"""Fault-test plumbing on top of the suite's harness (tests/harness.py)."""
import os
import socket

from harness import ROOT, backup_epoch, python, start, train_cmd, wait_until  # noqa: F401


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def worker_pids(marker):
    """PIDs of train.py processes whose command line holds `marker`, by TF_CONFIG task index."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            environ = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and "train.py" in cmdline and "TF_CONFIG=" in environ:
            for entry in environ.split("\0"):
                if entry.startswith("TF_CONFIG="):
                    index = int(entry.split('"index": ')[1].split("}")[0])
                    found[index] = int(pid)
    return found


def report(case, **figures):
    """One line per fault with what it cost; `pytest tests/faults -s -n0` shows them (-n0:
    in one process, whose output -s can show)."""
    print(f"\nFAULT COST {case}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))

