"""Progress display: a rich bar on an interactive terminal, plain periodic lines in logs and CI, or nothing.

``mode``: ``"bar"`` (rich), ``"log"`` (one line on standard output when a unit of work (an attack) finishes and
at least every ``interval`` seconds within one, with the elapsed time and an estimate of what is left), or
``None``/``False`` (silent: ``--quiet``, non-zero ranks). ``True`` means ``"bar"``.
"""

from __future__ import annotations

import time


class Progress:
    """Counts ``total`` steps: ``advance`` reports one, ``finished`` the end of a unit of work."""

    def __init__(self, mode: str | bool | None, total: int, title: str, interval: float = 30.0):
        self.mode = "bar" if mode is True else (mode or None)
        self.total, self.title, self.interval = total, title, interval
        self._bar = None
        self._done = 0
        self._start = self._last = time.monotonic()

    def __enter__(self):
        if self.mode == "bar":
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                                 transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.title, total=self.total)
        return self

    def advance(self, description: str) -> None:
        """One step done (a line in log mode when ``interval`` seconds passed since the last one)."""
        self._done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=f"{self.title}: {description}")
        elif self.mode == "log" and time.monotonic() - self._last >= self.interval:
            self._line(description)

    def finished(self, what: str) -> None:
        """A unit of work (an attack) is done: always a line in log mode."""
        if self.mode == "log":
            self._line(f"{what} done")

    def _line(self, description: str) -> None:
        now = time.monotonic()
        elapsed = now - self._start
        left = elapsed / max(self._done, 1) * (self.total - self._done)
        print(f"{self.title}: {self._done}/{self.total} ({description}), {_clock(elapsed)} elapsed, "
              f"about {_clock(left)} left", flush=True)
        self._last = now

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
