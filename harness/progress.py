"""Progress display for long work (build, measure) on stderr, via rich; silent when disabled.

stdout stays clean for ``--json``. Thread-safe: device threads advance the bar concurrently.
"""

from __future__ import annotations

import sys
import threading
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress


class Progress:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._lock = threading.Lock()
        self._rich = (
            RichProgress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[detail]}"),
                console=Console(file=sys.stderr),
                transient=False,
            )
            if enabled
            else None
        )

    def __enter__(self) -> Progress:
        if self._rich is not None:
            self._rich.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()

    def add_task(self, description: str, total: int | None = None) -> int:
        if self._rich is None:
            return -1
        with self._lock:
            return self._rich.add_task(description, total=total, detail="")

    def advance(self, task: int, detail: str = "") -> None:
        if self._rich is None:
            return
        with self._lock:
            self._rich.update(task, advance=1, detail=detail)

    def callback(self, description: str) -> Callable[[str], None]:
        """A ``progress(message)`` function for steps of unknown count (e.g. ``variants.build``)."""
        if self._rich is None:
            return lambda message: None
        task = self.add_task(description)

        def report(message: str) -> None:
            with self._lock:
                self._rich.update(task, detail=message)

        return report
