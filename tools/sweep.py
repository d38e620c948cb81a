"""Run a grid (or random samples) of train.py runs and compare them.

    python tools/sweep.py --sweep_dir=sweeps/lr --grid='learning_rate=1e-3,1e-4;loss=dice,ce' \
        [--samples=4] [--parallel=2] -- --data_dir=RECORDS --epochs=30 [other train flags]

Each run lives in SWEEP_DIR/<settings>; an interrupted sweep rerun skips finished runs.
Writes results.csv, results.md and sweep_<hyperparameter>.png (epochs until early
stopping and best validation metric per value), and names the best combination. Runs
that learned nothing (train.py's collapse warning) are marked `collapsed` in the table
and as red crosses in the plots, and are not picked as best.
"""
import os
import sys

from absl import app, flags

import _bootstrap  # noqa: E402  (puts the project on sys.path; ROOT used below)
from segtrain import callbacks, sweep

FLAGS = flags.FLAGS
flags.DEFINE_string("sweep_dir", None, "Folder for all runs and the summary.")
flags.DEFINE_string("grid", None, "'name=v1,v2;name2=v3,v4' over train.py flags.")
flags.DEFINE_integer("samples", 0, "Random points of the grid instead of all (0: all).")
flags.DEFINE_integer("parallel", 1, "Runs at a time.")
flags.DEFINE_integer("seed", 0, "Seed for --samples.")
flags.DEFINE_string("monitor", "val_loss", "Validation metric that ranks runs.")
flags.mark_flags_as_required(["sweep_dir", "grid"])


def main(argv):
    try:
        grid = sweep.parse_grid(FLAGS.grid)
    except ValueError as err:
        sys.stderr.write(f"sweep: error: {err}\n")
        return 1
    rows = sweep.run_sweep(FLAGS.sweep_dir, grid, argv[1:], FLAGS.samples, FLAGS.parallel,
                           FLAGS.seed, FLAGS.monitor,
                           train_py=os.path.join(_bootstrap.ROOT, "train.py"))
    sweep.write_tables(rows, FLAGS.sweep_dir)
    if rows:
        sweep.plot(rows, grid, FLAGS.sweep_dir, FLAGS.monitor)
    best = sweep.best_row(rows, FLAGS.monitor, callbacks.monitor_mode(FLAGS.monitor))
    print(f"{len(rows)} finished runs; table: {FLAGS.sweep_dir}/results.md")
    for row in rows:
        if row["status"] == "collapsed":
            print(f"collapsed (learned nothing, see its metrics.json): {row['run']}")
    if best:
        settings = ", ".join(f"{k}={best[k]}" for k in grid)
        print(f"best: {settings} -> best {FLAGS.monitor}={best['best_' + FLAGS.monitor]:.4f} at "
              f"epoch {best['best_epoch']} (stopped at {best['stopped_epoch']}), "
              f"test dice={best['test_dice']:.4f} [{best['run']}]")
    return 0 if rows else 1


if __name__ == "__main__":
    app.run(main)
