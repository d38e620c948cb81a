"""Process start-up shared by train.py and the tools: TensorFlow imported without its C++
start-up lines, and console-script entry points.

TF 2.21's C++ code logs through absl before absl is initialised, so every process began with
"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
and the oneDNN and CPU-feature INFO lines, twice (two shared libraries log them), whatever
TF_CPP_MIN_LOG_LEVEL says. They are written to file descriptor 2 directly, where Python's
logging cannot filter them, so `quiet_tensorflow_import()` sends descriptor 2 to a temporary
file while the `tensorflow` module executes (whenever something first imports it) and
replays what it caught if that import fails, or when the command line has --verbosity.
"""
import contextlib
import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import tempfile


@contextlib.contextmanager
def _stderr_captured():
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if sys.exc_info()[0] is not None:  # the import failed: show what TF said
                capture.seek(0)
                sys.stderr.write(capture.read().decode(errors="replace"))


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the module executes once
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def quietly(module):
            with _stderr_captured():
                execute(module)
        spec.loader.exec_module = quietly
        return spec


def quiet_tensorflow_import():
    """TensorFlow's first import in this process leaves stderr alone (see the module's
    docstring); a no-op once it is imported or when --verbosity asks for more."""
    if "tensorflow" in sys.modules or any(arg.startswith(("--verbosity", "-v="))
                                          for arg in sys.argv[1:]):
        return
    if not any(isinstance(finder, _QuietTensorFlow) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())


def quiet_python_logs():
    """Python-side INFO lines (SavedModel writer, tf2onnx, checkpoint sharding) only when
    --verbosity asks: call at the start of main(), after absl parsed the flags."""
    from absl import flags, logging
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


# -- console scripts (pyproject.toml): `pip install .` puts these on PATH -------------------

def _run(module_name):
    quiet_tensorflow_import()
    from absl import app, flags
    module = importlib.import_module(module_name)
    # --help lists the key flags of the main module, here this console wrapper: the tool's
    for flag in flags.FLAGS.get_key_flags_for_module(module):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(module.main)


def train():
    """segflow-train: train.py; its run folders and synthetic-data cache go under the
    current directory."""
    os.environ.setdefault("SEGFLOW_HOME", os.getcwd())
    _run("train")


def prepare():
    _run("tools.prepare_dataset")


def predict():
    _run("tools.predict")


def evaluate():
    _run("tools.evaluate")


def export():
    _run("tools.export")
