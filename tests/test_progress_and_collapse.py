"""The progress line and the collapse check, through their public functions."""
import io

import numpy as np

from segtrain import collapse, progress


def test_plain_progress_lines_in_a_log_and_none_for_the_last_step():
    out = io.StringIO()
    bar = progress.EpochProgress(2, 5, steps=30, batch_size=8, stream=out, interactive=False,
                                 interval_s=0)
    for step, loss in ((10, 0.9), (20, 0.7), (30, 0.6)):
        bar.update(step, loss)
    bar.finish()
    lines = out.getvalue().splitlines()
    # the epoch's summary line follows its last step: no progress line for step 30
    assert [line.split(" loss=")[0] for line in lines] == ["epoch 3/5 step 10/30",
                                                          "epoch 3/5 step 20/30"]
    assert "loss=0.7000" in lines[1] and "images/s" in lines[1] and "ETA" in lines[1]
    assert "\r" not in out.getvalue()


def test_plain_progress_waits_for_its_interval():
    out = io.StringIO()
    bar = progress.EpochProgress(0, 1, steps=100, batch_size=1, stream=out, interactive=False,
                                 interval_s=3600)
    for step in range(10, 100, 10):
        bar.update(step, 1.0)
    assert out.getvalue() == ""


def test_single_predicted_class_reads_the_columns():
    cm = np.array([[50, 0, 0], [7, 0, 0], [3, 0, 0]])
    assert collapse.single_predicted_class(cm) == 0
    assert collapse.single_predicted_class(cm.T) is None  # every class predicted, one true
    assert collapse.single_predicted_class(np.zeros((3, 3))) is None


def test_flat_loss_needs_every_recent_epoch_within_tolerance():
    assert collapse.loss_is_flat([0.9, 0.5323, 0.5323, 0.5323])
    assert collapse.loss_is_flat([0.5, 0.5 * (1 + 5e-5), 0.5 * (1 - 5e-5)])
    assert not collapse.loss_is_flat([0.5, 0.5 * (1 + 5e-4), 0.5])  # batch-to-batch noise
    assert not collapse.loss_is_flat([0.5, 0.5, 0.49])       # the last epoch moved 2%
    assert not collapse.loss_is_flat([0.5323, 0.5323])       # only one epoch to compare


def test_diagnose_names_the_class_and_what_to_try():
    warning = collapse.diagnose(4, [None, 1, 1], [0.7, 0.6, 0.5], class_names=["cell", "membrane"])
    assert warning.startswith("epoch 5: the model predicted membrane for every training pixel "
                              "for 2 epochs")
    for advice in ("--learning_rate", "--batch_norm", "--loss=dice_ce", "--class_weights=manifest"):
        assert advice in warning
    # a first epoch of the majority class everywhere is how healthy runs start
    assert collapse.diagnose(0, [0], [0.9]) is None
    assert collapse.diagnose(2, [0, 0, None], [0.9, 0.8, 0.7]) is None
    assert collapse.diagnose(2, [0, 1], [0.9, 0.8, 0.7]) is None
