"""Hyperparameter sweeps over train.py: the recipe's closing advice ("try other
optimizers, learning rates, losses, patience; watch when early stopping fires") as code.

Each run gets its own RUN_DIR named by its settings, so a rerun skips finished runs
(they have metrics.json) and resumes interrupted ones (train.py's backup).
"""
import csv
import hashlib
import itertools
import os
import random
import subprocess
import sys
import time

from segdata import atomic
from segtrain import results


def parse_grid(text):
    """'learning_rate=1e-3,1e-4;loss=dice,ce' -> {'learning_rate': ['1e-3', '1e-4'], ...}."""
    grid = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, values = part.partition("=")
        if not values:
            raise ValueError(f"--grid part {part!r}: expected name=value1,value2")
        grid[name.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    if not grid:
        raise ValueError("--grid is empty: e.g. --grid='learning_rate=1e-3,1e-4;loss=dice,ce'")
    return grid


def combinations(grid, samples=0, seed=0):
    """The full grid, or `samples` distinct random points of it."""
    names = sorted(grid)
    points = [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]
    if samples and samples < len(points):
        points = random.Random(seed).sample(points, samples)
    return points


def run_name(point):
    text = "_".join(f"{k}-{v}" for k, v in sorted(point.items()))
    safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text)
    return safe[:80] + "_" + hashlib.sha1(text.encode()).hexdigest()[:6]


def collect(run_dir, point, monitor):
    metrics = results.read(run_dir)
    if metrics is None:
        return None
    return {**point, "run": os.path.basename(run_dir),
            # a run that learned nothing is not an ordinary result (segtrain.collapse)
            "status": "collapsed" if metrics.get("collapse") else "ok",
            "stopped_epoch": metrics.get("stopped_epoch") or metrics.get("epochs_run"),
            "early_stopped": metrics.get("stopped_epoch") is not None,
            "best_epoch": metrics.get("best_epoch"),
            f"best_{monitor}": metrics.get(f"best_{monitor}"),
            "test_dice": metrics.get("dice"), "test_mean_iou": metrics.get("mean_iou")}


def run_sweep(sweep_dir, grid, base_args, samples=0, parallel=1, seed=0, monitor="val_loss",
              python=sys.executable, train_py="train.py", log=print):
    """Runs every point (skipping finished ones); returns the result rows."""
    points = combinations(grid, samples, seed)
    os.makedirs(sweep_dir, exist_ok=True)
    pending, running, rows = [], [], []
    for point in points:
        run_dir = os.path.join(sweep_dir, run_name(point))
        if results.read(run_dir) is not None:
            log(f"skip (finished): {run_dir}")
        else:
            pending.append((point, run_dir))
    total = len(pending)
    while pending or running:
        while pending and len(running) < parallel:
            point, run_dir = pending.pop(0)
            args = [python, train_py, f"--model_dir={run_dir}", f"--monitor={monitor}",
                    *base_args, *[f"--{k}={v}" for k, v in point.items()]]
            os.makedirs(run_dir, exist_ok=True)
            out = open(os.path.join(run_dir, "train.log"), "a")
            running.append((subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT), out,
                            run_dir))
            log(f"[{total - len(pending)}/{total}] started {run_dir}")
        for item in list(running):
            proc, out, run_dir = item
            if proc.poll() is not None:
                out.close()
                running.remove(item)
                status = "finished" if proc.returncode == 0 else f"FAILED ({proc.returncode}); " \
                    f"see {run_dir}/train.log"
                log(f"{status}: {run_dir}")
        time.sleep(0.2)
    for point in points:
        row = collect(os.path.join(sweep_dir, run_name(point)), point, monitor)
        if row:
            rows.append(row)
    return rows


def best_row(rows, monitor, mode):
    """The best run by `monitor`; a collapsed run only when every run collapsed."""
    key = f"best_{monitor}"
    candidates = [r for r in rows if r.get(key) is not None]
    candidates = [r for r in candidates if r.get("status") != "collapsed"] or candidates
    if not candidates:
        return None
    return (min if mode == "min" else max)(candidates, key=lambda r: r[key])


def write_tables(rows, sweep_dir):
    if not rows:
        return
    columns = list(rows[0])
    with atomic.replacing(os.path.join(sweep_dir, "results.csv"), newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c]) for c in columns) + " |")
    with open(os.path.join(sweep_dir, "results.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")


def _fmt(value):
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def plot(rows, grid, sweep_dir, monitor):
    """One PNG per hyperparameter: epochs-to-stop and best metric per value; collapsed
    runs are red crosses."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    for name, values in grid.items():
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
        for axis, key, title in ((left, "stopped_epoch", "epochs until stop"),
                                 (right, f"best_{monitor}", f"best {monitor}")):
            data = [[r[key] for r in rows if r[name] == v and r.get(key) is not None]
                    for v in values]
            axis.boxplot([d or [float("nan")] for d in data])
            collapsed = [(i + 1, r[key]) for i, v in enumerate(values) for r in rows
                         if r[name] == v and r.get(key) is not None
                         and r.get("status") == "collapsed"]
            if collapsed:
                axis.scatter(*zip(*collapsed), marker="x", color="red", zorder=3,
                             label="collapsed")
                axis.legend(loc="best", fontsize="small")
            axis.set_xticks(range(1, len(values) + 1), values)
            axis.set_title(title)
            axis.set_xlabel(name)
        fig.tight_layout()
        path = os.path.join(sweep_dir, f"sweep_{name}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
