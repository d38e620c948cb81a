"""Faults during training. Each test says: the fault, what the user sees, what is kept."""
import csv
import os
import signal
import subprocess
import time

import keras

from helpers import (ROOT, backup_epoch, python, report, start, train_cmd, wait_until,
                     worker_pids)


def test_sigkill_single_process_mid_epoch_resumes(binary_records, tmp_path):
    """Fault: kill -9 of a one-process run in its 2nd epoch.
    User sees: the rerun of the same command logs "resumed from backup: 1 epoch(s)".
    Kept: epochs finished before the kill, best.keras (loadable), log.csv continues."""
    run = tmp_path / "run"
    cmd = train_cmd(binary_records, run, "--export=false", "--epochs=3", "--steps_per_epoch=40", "--patience=10")
    proc = start(cmd)
    assert wait_until(lambda: backup_epoch(run) >= 1, 180, proc)
    time.sleep(0.3)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = backup_epoch(run)
    assert done in (1, 2)
    keras.saving.load_model(str(run / "best.keras"))  # intact after the kill
    started = time.time()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resumed from backup: {done} epoch(s) already done" in result.stdout
    assert "epoch 1/3" not in result.stdout
    epochs = [int(r["epoch"]) for r in csv.DictReader(open(run / "log.csv"))]
    assert epochs == [0, 1, 2][:done] + list(range(done, 3))
    report("sigkill_single_process", epochs_lost_at_most=1, finished_epochs_kept=done,
           rerun_total_s=round(time.time() - started, 1),
           killed_into_epoch2_s=0.3)


def test_nan_loss_stops_and_keeps_last_good_backup(binary_records, tmp_path):
    """Fault: the loss turns NaN (a learning rate of 1e30 in epoch 2).
    User sees: "train.py: error: loss became nan (or inf) at epoch 2 ...", exit 1, no traceback.
    Kept: the epoch-1 backup and best.keras; no metrics.json from the broken run."""
    run = tmp_path / "nan"
    # CE, not Dice: a saturated Dice has zero gradients, CE on huge logits does not
    subprocess.run(train_cmd(binary_records, run, "--export=false", "--epochs=1", "--steps_per_epoch=2", "--loss=ce"),
                   check=True, capture_output=True, timeout=300)
    os.remove(run / "metrics.json")
    result = subprocess.run(train_cmd(binary_records, run, "--export=false", "--epochs=3", "--steps_per_epoch=5",
                                      "--learning_rate=1e30", "--loss=ce"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout[-3000:]
    assert "at epoch 2" in result.stderr and "Traceback" not in result.stderr
    assert "loss became nan" in result.stderr or "loss became inf" in result.stderr
    assert backup_epoch(run) == 1
    keras.saving.load_model(str(run / "best.keras"))
    assert not (run / "metrics.json").exists()
    report("nan_loss", epochs_lost=1, kept="epoch-1 backup + best.keras")


def test_sigkill_one_of_two_workers(binary_records, tmp_path):
    """Fault: kill -9 of worker 1 of a 2-worker MultiWorkerMirrored job after epoch 1.
    User sees: "[launch] a worker failed; stopping the others in 10s", exit code != 0,
    within grace (10 s) + start-up; relaunching the same command resumes from the backup.
    Kept: the chief's epoch backups and best.keras."""
    run = tmp_path / "mw"
    launch = python(os.path.join(ROOT, "tools", "launch_local.py"), "--workers=2", "--grace_s=10",
                    "--", *train_cmd(binary_records, run, "--export=false", "--epochs=3", "--steps_per_epoch=60",
                                     "--patience=10")[2:])
    proc = start(launch)
    assert wait_until(lambda: backup_epoch(run) >= 1, 240, proc)
    pids = worker_pids(str(run))
    assert set(pids) == {0, 1}
    killed = time.time()
    os.kill(pids[1], signal.SIGKILL)
    output, _ = proc.communicate(timeout=120)
    ended_after = time.time() - killed
    assert proc.returncode != 0
    assert "a worker failed" in output
    assert ended_after < 60
    kept = backup_epoch(run)
    assert kept >= 1
    started = time.time()
    result = subprocess.run(launch, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "resumed from backup" in result.stdout
    assert (run / "metrics.json").exists()
    report("sigkill_one_worker", job_ended_after_s=round(ended_after, 1), epochs_kept=kept,
           relaunch_total_s=round(time.time() - started, 1))
