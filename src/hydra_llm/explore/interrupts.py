"""Stopping a sweep on Ctrl-C / SIGTERM within seconds, and children that never outlive it.

In the sweeper process, :class:`InterruptGuard` turns the first SIGINT or SIGTERM (unless the process
started with it ignored, as a script's background job starts with SIGINT) into
:class:`SweepInterrupted` raised in the main thread (so a launcher unwinds and kills its workers) and
starts a short grace timer that ends the process even if that exception gets swallowed on the way;
a second signal ends it at once. The sweep state on disk is always consistent (it is written before
and after every batch), so ending the process loses at most the batch in flight.

In a child running in its own process (joblib, submitit_local), :func:`watch_sweeper` moves it out of
the terminal's process group (Ctrl-C reaches the sweeper only) and exits it as soon as the sweeper
is gone, so a killed sweeper leaves no child writing into the sweep folder. A joblib pool worker runs
it when it starts, so one that never gets a child stops with the sweeper too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

SWEEPER_PID_ENV = "HYDRA_LLM_SWEEPER_PID"
GRACE_S = 5.0  # after the first signal: time to unwind before the process is ended anyway
_WATCH_PERIOD_S = 0.2


class SweepInterrupted(BaseException):
    """The sweeper received SIGINT or SIGTERM. A BaseException, so no ``except Exception`` (nor
    Lightning's KeyboardInterrupt handling) swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_now(code: int, message: str = "") -> None:
    """Flush what can be flushed and end the process without waiting for anything."""
    from hydra_llm.explore.child_output import console_stderr

    if message:
        with contextlib.suppress(OSError):
            sys.stderr.flush()
            os.write(console_stderr(), (message + "\n").encode())
    try:
        logging.shutdown()
    finally:
        os._exit(code)


class InterruptGuard:
    """Context manager for the sweeper's main loop (see the module docstring).

    ``on_interrupt(signal_name)`` runs once, at the first signal (e.g. to log the stop); it must be quick.
    """

    def __init__(self, on_interrupt: Callable[[str], None] | None = None, grace_s: float = GRACE_S) -> None:
        self.on_interrupt = on_interrupt
        self.grace_s = grace_s
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._previous_env: str | None = None

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                # A signal the process started with ignored stays ignored, as Python leaves it: a script's
                # shell starts `cmd &` with SIGINT ignored, so that Ctrl-C in its terminal is not for it.
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        self._previous_env = os.environ.get(SWEEPER_PID_ENV)
        os.environ[SWEEPER_PID_ENV] = str(os.getpid())
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
        if self._previous_env is None:
            os.environ.pop(SWEEPER_PID_ENV, None)
        else:
            os.environ[SWEEPER_PID_ENV] = self._previous_env

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            exit_now(128 + signum, f"[llm_ucb] second {name}: exiting now")
        self.received = signum
        timer = threading.Timer(
            self.grace_s,
            exit_now,
            args=(128 + signum, f"[llm_ucb] {name}: still unwinding after {self.grace_s:g} s; exiting now"),
        )
        timer.daemon = True
        timer.start()
        if self.on_interrupt is not None:
            with contextlib.suppress(Exception):  # logging the stop must not prevent it
                self.on_interrupt(name)
        raise SweepInterrupted(signum)


_watching = False


def watch_sweeper() -> bool:
    """In a child process of the sweeper: leave the terminal's process group and exit when the
    sweeper dies. Returns whether a watch was started (never in the sweeper itself or on a remote
    node, where the sweeper is not this process's parent)."""
    global _watching
    raw = os.environ.get(SWEEPER_PID_ENV, "")
    if _watching or not raw.isdigit():
        return _watching
    sweeper = int(raw)
    if os.getpid() == sweeper or os.getppid() != sweeper:
        return False
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)

    def watch() -> None:
        while os.getppid() == sweeper:
            time.sleep(_WATCH_PERIOD_S)
        os._exit(143)  # the sweeper is gone: nothing may be written for it any more

    threading.Thread(target=watch, name="hydra-llm-sweeper-watch", daemon=True).start()
    _watching = True
    return True
