"""Progress display for long work (build, measure) on stderr, via rich; silent when disabled.

stdout stays clean for ``--json``. Thread-safe: device threads advance the bar concurrently. When
stderr is not a terminal (cron, CI logs) every event is one plain timestamped line instead of a bar,
so the log says what happened and when.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress


class Progress:
    def __init__(self, enabled: bool = True, stream=None):
        self.enabled = enabled
        self._lock = threading.Lock()
        self._stream = stream or sys.stderr
        self._plain = enabled and not self._stream.isatty()
        self._tasks: dict[int, list] = {}  # plain mode: task -> [description, done, total]
        self._rich = (
            RichProgress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[detail]}"),
                console=Console(file=self._stream),
                transient=False,
            )
            if enabled and not self._plain
            else None
        )

    def _line(self, text: str) -> None:
        with self._lock:
            print(f"{time.strftime('%H:%M:%S')} {text}", file=self._stream, flush=True)

    def __enter__(self) -> Progress:
        if self._rich is not None:
            self._rich.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()

    def add_task(self, description: str, total: int | None = None) -> int:
        if self._plain:
            task = len(self._tasks)
            self._tasks[task] = [description, 0, total]
            self._line(f"{description}" + (f" ({total} to do)" if total is not None else ""))
            return task
        if self._rich is None:
            return -1
        with self._lock:
            return self._rich.add_task(description, total=total, detail="")

    def advance(self, task: int, detail: str = "") -> None:
        if self._plain:
            entry = self._tasks[task]
            entry[1] += 1
            total = f"/{entry[2]}" if entry[2] is not None else ""
            self._line(f"{entry[0]} [{entry[1]}{total}] {detail}")
            return
        if self._rich is None:
            return
        with self._lock:
            self._rich.update(task, advance=1, detail=detail)

    def callback(self, description: str) -> Callable[[str], None]:
        """A ``progress(message)`` function for steps of unknown count (e.g. ``variants.build``)."""
        if self._plain:
            return lambda message: self._line(f"{description}: {message}")
        if self._rich is None:
            return lambda message: None
        task = self.add_task(description)

        def report(message: str) -> None:
            with self._lock:
                self._rich.update(task, detail=message)

        return report
