"""SIGTERM (a scheduler's stop, ``timeout``, ``kill``) while a run trains, evaluates or
publishes: the run stops cleanly and can be resumed.

:func:`stop_on_sigterm` installs the handler around a run; the handler raises
:class:`Stopped` at once, or inside ``fit`` leaves it to :class:`StopAtSafePoint` (the
last callback) at the next batch or epoch end, so that a stop never lands inside a write,
a ``__del__`` or a callback (where an exception would be lost).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

import keras


class Stopped(KeyboardInterrupt):
    """SIGTERM while a run trains, evaluates or publishes: raised like Ctrl-C, so that what
    is being written is cleaned up; the run resumes. ``run``: its folder, once the trainer
    made one."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.run: Path | None = None


class StopRequest:
    """A signal handler that stops the run: it raises :class:`Stopped` at once, or, while
    ``deferred`` (inside ``fit``), leaves it to :class:`StopAtSafePoint` at the next batch
    or epoch end. A second signal ends the process at once."""

    def __init__(self):
        self.signal_name: str | None = None
        self.deferred = False

    def handle(self, signum, frame) -> None:
        signal.signal(signum, signal.SIG_DFL)
        self.signal_name = signal.Signals(signum).name
        if not self.deferred:
            raise Stopped(self.signal_name)

    def check(self) -> None:
        if self.signal_name is not None:
            raise Stopped(self.signal_name)


class StopAtSafePoint(keras.callbacks.Callback):
    """Raises a requested stop at the end of a training or validation batch, or of an
    epoch. Put it last: an epoch that ended is backed up before the stop."""

    def __init__(self, request: StopRequest):
        super().__init__()
        self.request = request

    def on_train_begin(self, logs=None):
        self.request.deferred = True
        self.request.check()

    def on_train_batch_end(self, batch, logs=None):
        self.request.check()

    def on_test_batch_end(self, batch, logs=None):
        self.request.check()

    def on_epoch_end(self, epoch, logs=None):
        self.request.check()


@contextlib.contextmanager
def stop_on_sigterm(enabled: bool = True):
    """SIGTERM stops the run cleanly in the block: yields the :class:`StopRequest` that
    raises :class:`Stopped` (at once, or inside ``fit`` at the next batch or epoch end).
    Only in the main thread of a single process: the workers of a cluster keep the
    default, so that a stopped worker's peers, blocked in a collective operation on it,
    are not left waiting."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield None
        return
    request = StopRequest()
    previous = signal.signal(signal.SIGTERM, request.handle)
    try:
        yield request
    finally:
        signal.signal(signal.SIGTERM, previous)
