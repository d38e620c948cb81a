"""SegFlow as users install and run it: `pip install .` gives console scripts that work from
any directory, and the commands print SegFlow's own lines, not TensorFlow's start-up log."""
import os
import shutil
import subprocess
import sys

from harness import ROOT, TINY, tool, train

TF_STARTUP = ("absl::InitializeLog", "I0000", "port.cc", "cpu_feature_guard")


def _quiet(text):
    return not [marker for marker in TF_STARTUP if marker in text]


def test_pip_install_gives_console_scripts_that_run_anywhere(binary_records, tmp_path):
    source = tmp_path / "clone"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "runs", ".cache", "__pycache__", "build", "*.egg-info"))
    venv = tmp_path / "venv"
    # the project only: its dependencies are this environment's, seen through the system site
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps",
                    "--no-build-isolation", str(source)], check=True, capture_output=True,
                   timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def script(name, *args):
        return subprocess.run([str(venv / "bin" / name), *args], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=300)
    for name, flag in (("segflow-train", "--data_dir"), ("segflow-predict", "--tile_overlap"),
                       ("segflow-prepare", "--layout"), ("segflow-export", "--quantize"),
                       ("segflow-evaluate", "--original_size")):
        helped = script(name, "--help")
        assert flag in helped.stdout + helped.stderr, name
    result = script("segflow-train", f"--data_dir={binary_records}", "--model_dir=run", *TINY,
                    "--epochs=1", "--steps_per_epoch=1", "--export=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (elsewhere / "run" / "metrics.json").exists()
    assert _quiet(result.stdout + result.stderr), result.stderr[:2000]


def test_train_and_export_print_segflow_lines_only(binary_records, tmp_path):
    """No 'All log messages before absl::InitializeLog()', oneDNN or CPU-feature lines, no
    SavedModel-writer INFO lines: what is printed is SegFlow's."""
    run_dir = tmp_path / "run"
    result = train(binary_records, run_dir, "--epochs=1", "--steps_per_epoch=1")
    assert _quiet(result.stdout + result.stderr), result.stderr[:2000]
    for fmt in ("saved_model", "onnx"):
        exported = tool("export.py", f"--model={run_dir / 'model.keras'}", f"--format={fmt}",
                        f"--output={tmp_path / fmt}" + (".onnx" if fmt == "onnx" else ""))
        assert exported.stdout.startswith("wrote ") and not exported.stderr.strip(), (
            exported.stdout + exported.stderr)[:2000]
