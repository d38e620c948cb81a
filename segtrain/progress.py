"""Per-epoch progress a person can follow: Keras's Progbar on a terminal, plain lines in logs.

Updated once per loop of steps (the host learns nothing in between). Keras's Progbar
redraws its line with carriage returns, which a job log (SLURM, a file) records as one
endless line, so when stdout is not a terminal a plain line is printed at most every
`interval_s` seconds instead (none for an epoch shorter than that: its summary line says it
all).
"""
import sys
import time

import keras


def _duration(seconds):
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class EpochProgress:
    """update(step, loss) after each loop of steps; `step` counts finished steps."""

    def __init__(self, epoch, epochs, steps, batch_size, stream=None, interactive=None,
                 interval_s=30.0):
        self.stream = stream or sys.stdout
        if interactive is None:
            interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.batch_size, self.interval_s = batch_size, interval_s
        self.started = self.last_line = time.monotonic()
        # the loss passed is the epoch's running mean already: a stateful value to Progbar
        self.bar = None
        if interactive:
            self.stream.write(f"Epoch {epoch + 1}/{epochs}\n")  # as Keras's fit labels its bars
            self.bar = keras.utils.Progbar(steps, stateful_metrics=["loss", "images/s"])
        self.step = 0

    def update(self, step, loss):
        elapsed = time.monotonic() - self.started
        rate = step * self.batch_size / max(elapsed, 1e-9)
        self.step = step
        if self.bar is not None:
            self.bar.update(step, [("loss", loss), ("images/s", rate)], finalize=False)
            return
        now = time.monotonic()
        # the epoch's own summary line follows its last step
        if now - self.last_line < self.interval_s or step >= self.steps:
            return
        self.last_line = now
        eta = elapsed / step * (self.steps - step) if step else 0.0
        self.stream.write(f"epoch {self.epoch + 1}/{self.epochs} step {step}/{self.steps} "
                          f"loss={loss:.4f} {rate:.1f} images/s ETA {_duration(eta)}\n")
        self.stream.flush()

    def finish(self):
        if self.bar is not None:
            self.bar.update(self.step, finalize=True)  # ends the line


class NoProgress:
    def update(self, step, loss):
        pass

    def finish(self):
        pass
