"""Stop signals held to the end of the running dispatch, so that a run stops at a checkpoint.

    stop = interrupts.hold()
    try:
        while ...:
            run one dispatch, record it
            if stop.pending is not None:
                write a checkpoint
                stop.deliver()        # the signal's own handler runs now
    finally:
        stop.release()                # the handlers back; a signal still pending acts now

While held (in the main thread), the first SIGINT or SIGTERM is recorded instead of acting; a second
one acts at once (an impatient user, or a scheduler's follow-up). `deliver` restores the handlers
and runs the first signal's own: Python's SIGINT handler raises KeyboardInterrupt, a SIGTERM that
had no handler ends the process as it would have, and a program's own handlers (the command lines
turn SIGTERM into an exception, `experiments.cli`) are called as they would have been. A signal
still pending at `release` is delivered then. Ignored signals, and signals outside the main
thread (where Python cannot set handlers), are left alone.
"""

import signal
import threading
from typing import Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Held:
    def __init__(self):
        self.pending: Optional[int] = None  # the first held signal's number
        self._frame = None
        self._old: dict = {}  # signal -> the handler it had

    @property
    def name(self) -> str:
        return signal.Signals(self.pending).name if self.pending is not None else ""

    def _hold(self, signum, frame):
        if self.pending is None:
            self.pending, self._frame = signum, frame
            return
        old = self._old.get(signum, signal.SIG_DFL)
        self._restore()
        self.pending = None  # acted on now, not again at `release`
        _act(signum, old, frame)  # a second signal: at once

    def _restore(self):
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}

    def release(self):
        """Restores the handlers; a signal still pending acts now."""
        if self.pending is not None:
            self.deliver()
        else:
            self._restore()

    def deliver(self):
        """Restores the handlers and runs the pending signal's own (which may raise or end the process)."""
        old = self._old.get(self.pending, signal.SIG_DFL)
        self._restore()
        signum, self.pending = self.pending, None
        if signum is not None:
            _act(signum, old, self._frame)


def _act(signum, handler, frame):
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def hold(enabled: bool = True) -> Held:
    """Holds SIGINT and SIGTERM until `release` (see the module docstring); enabled=False holds none."""
    stop = Held()
    if enabled and threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            old = signal.getsignal(s)
            if old is None or old == signal.SIG_IGN:  # set outside Python, or ignored: leave it
                continue
            stop._old[s] = old
            signal.signal(s, stop._hold)
    return stop
