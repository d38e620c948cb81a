"""The suite's one harness for running train.py and the tools as a user does: in
subprocesses (absl flags are process-global), with tiny sizes."""
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
TINY = ["--plan=none", "--image_size=32", "--base_filters=4", "--depth=2", "--batch_size=4", "--dropout=0",
        "--mixed_precision=float32", "--learning_rate=0.01"]
# TINY for --train_crop runs, which refuse --image_size
TINY_WINDOWS = [flag for flag in TINY if not flag.startswith("--image_size")]


def python(*args):
    return [sys.executable, *args]


def train_cmd(records, run_dir, *extra, base=TINY):
    """train.py on `records` into `run_dir` with the `base` settings, then `extra` (later
    flags win)."""
    return python(os.path.join(ROOT, "train.py"), f"--data_dir={records}",
                  f"--model_dir={run_dir}", *base, *extra)


def run(cmd, timeout=300, check=True):
    """Runs `cmd` to its end; with `check`, a non-zero exit fails the test with its output."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def train(records, run_dir, *extra, timeout=300, check=True, base=TINY):
    return run(train_cmd(records, run_dir, *extra, base=base), timeout, check)


def tool(name, *args, timeout=300, check=True):
    return run(python(os.path.join(TOOLS, name), *args), timeout, check)


def start(cmd, **kwargs):
    """`cmd` in the background, stdout and stderr together."""
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


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
