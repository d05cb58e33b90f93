"""Progress display: a rich bar on an interactive terminal, plain periodic lines in logs and CI, or nothing.

``mode``: ``"bar"`` (rich), ``"log"`` (one line on standard output when a unit of work (an attack) finishes and
at least every ``interval`` seconds within one, with the elapsed time and an estimate of what is left; a step
announced with :meth:`Progress.begin` that runs longer than ``interval``, such as a strong suite's batch, gets a line
naming it every ``interval`` seconds from a background thread), or ``None``/``False`` (silent: ``--quiet``, non-zero
ranks). ``True`` means ``"bar"``.
"""

from __future__ import annotations

import threading
import time


class Progress:
    """Counts ``total`` steps: ``advance`` reports one, ``finished`` the end of a unit of work."""

    def __init__(self, mode: str | bool | None, total: int, title: str, interval: float = 30.0):
        self.mode = "bar" if mode is True else (mode or None)
        self.total, self.title, self.interval = total, title, interval
        self._bar = None
        self._done = 0
        self._start = self._last = time.monotonic()
        self._running: str | None = None  # the step begun and not yet advanced past
        self._lock, self._stop = threading.RLock(), threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self):
        if self.mode == "bar":
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                                 transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.title, total=self.total)
        elif self.mode == "log":
            self._beat = threading.Thread(target=self._heartbeat, daemon=True)
            self._beat.start()
        return self

    def begin(self, description: str) -> None:
        """A step starts (named in log mode's lines while it runs past ``interval``)."""
        self._running = description

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(self.interval, 5.0)):
            with self._lock:  # a step advanced past is never named as running afterwards
                if self._running is not None and time.monotonic() - self._last >= self.interval:
                    self._line(f"{self._running} running")

    def advance(self, description: str) -> None:
        """One step done (a line in log mode when ``interval`` seconds passed since the last one)."""
        with self._lock:
            self._done += 1
            self._running = None
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=f"{self.title}: {description}")
        elif self.mode == "log" and time.monotonic() - self._last >= self.interval:
            self._line(description)

    def finished(self, what: str) -> None:
        """A unit of work (an attack) is done: always a line in log mode."""
        if self.mode == "log":
            self._line(f"{what} done")

    def _line(self, description: str) -> None:
        with self._lock:  # the heartbeat thread and the worker never interleave a line
            now = time.monotonic()
            elapsed = now - self._start
            left = elapsed / max(self._done, 1) * (self.total - self._done)
            print(f"{self.title}: {self._done}/{self.total} ({description}), {_clock(elapsed)} elapsed, "
                  f"about {_clock(left)} left", flush=True)
            self._last = now

    def __exit__(self, *exc):
        if self._beat is not None:
            self._stop.set()
            self._beat.join()
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
