"""A one-line progress bar for long command-line jobs: done of total, failures, rate and ETA."""

import sys
import time

from experiments import cli


class Progress:
    """One line: items finished of the total, failures, the rate of this session's work, ETA.

    Redrawn in place on a terminal (at most 4 times a second); elsewhere (a log file) a line for
    each finished batch and one every 30 s within a batch. The rate counts the items this session
    completed since its first iteration ended (so the first call's compiling does not weigh on the
    ETA; the summary's rate includes it), not failures, which cost no time; it includes the
    running batch's share, so that an ETA appears before the first batch ends.
    """

    def __init__(self, total: int, done_before: int, failed_before: int, stream=None, unit: str = "images"):
        self.total, self.done, self.failed, self.unit = total, done_before, failed_before, unit
        self.done_now = 0  # completed by this session
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.t0 = None  # when the session's first iteration ended
        self.work0 = 0.0  # the work done by then
        self.fraction = 0.0  # of the running batch, in items
        self.last = 0.0
        self.shown = None  # the counts the last line drawn showed

    def iteration(self, items_in_batch: int, t: int, total_iterations: int) -> None:
        """Iteration t (0-based) of `total_iterations` of a batch of `items_in_batch` finished."""
        self.fraction = items_in_batch * (t + 1) / total_iterations
        if self.t0 is None:
            self.t0, self.work0 = time.perf_counter(), self.done_now + self.fraction
        self.draw()

    def finished(self, done: int = 0, failed: int = 0) -> None:
        """`done` items completed (a batch), `failed` given up."""
        self.done, self.failed, self.done_now = self.done + done, self.failed + failed, self.done_now + done
        self.fraction = 0.0
        self.draw(force=bool(done) or self.tty)

    def line(self) -> str:
        n = self.done + self.failed
        elapsed = 0.0 if self.t0 is None else time.perf_counter() - self.t0
        work = self.done_now + self.fraction - self.work0
        rate = work / elapsed if elapsed > 0 and work > 0 else 0.0
        left = max(self.total - n - self.fraction, 0.0)
        eta = _clock(left / rate) if rate > 0 else "--:--"
        width = 24
        filled = min(width, int(width * (n + self.fraction) / max(self.total, 1)))
        return (f"[{'#' * filled}{'.' * (width - filled)}] {n}/{self.total} {self.unit} ({self.failed} failed) | "
                f"{rate:.3g} {self.unit}/s | ETA {eta}")

    def draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < (0.25 if self.tty else 30.0):
            return
        self.last, self.shown = now, (self.done, self.failed)
        if self.tty:
            self.stream.write("\r" + self.line() + "\x1b[K")
        else:
            self.stream.write(time.strftime("%H:%M:%S ") + self.line() + "\n")
        self.stream.flush()

    def message(self, msg: str) -> None:
        """A log line that does not break the bar."""
        if self.tty:
            self.stream.write("\r\x1b[K")
        cli.log(msg)
        if self.tty:
            self.draw(force=True)

    def close(self) -> None:
        """Ends the bar; the last line shows the final counts (failures alone do not redraw in a log)."""
        if self.shown != (self.done, self.failed):
            self.draw(force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


