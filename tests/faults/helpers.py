"""Process plumbing shared by the fault-injection tests."""
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--image_size=32", "--base_filters=4", "--depth=2", "--batch_size=4", "--dropout=0",
        "--mixed_precision=float32", "--learning_rate=0.01", "--export=false"]


def python(*args):
    return [sys.executable, *args]


def train_cmd(records, run_dir, *extra):
    return python(os.path.join(ROOT, "train.py"), f"--data_dir={records}",
                  f"--model_dir={run_dir}", *TINY, *extra)


def wait_until(predicate, timeout, proc=None, poll=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(poll)
    return False


def backup_epoch(run_dir):
    """Finished epochs recorded by the CheckpointManager's state file (0 if none)."""
    state = os.path.join(run_dir, "backup", "checkpoint")
    if not os.path.isfile(state):
        return 0
    with open(state) as handle:
        first = handle.readline()
    return int(first.rsplit("-", 1)[1].strip().strip('"'))


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


def start(cmd, **kwargs):
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)
