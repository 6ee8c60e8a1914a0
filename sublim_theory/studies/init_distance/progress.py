"""What a sweep reports while and after it runs: a progress bar and its environment record."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from sublim_theory.harness import records
from sublim_theory.studies.init_distance.table import COLUMNS

__all__ = [
    "ProgressBar",
    "environment_record",
]


def environment_record(
    config_path: str, settings: dict[str, Any], grid: dict[str, list], device: str, executor: str
) -> dict[str, Any]:
    """What produced the table: versions, device, git revision, the settings and grid."""
    return records.environment_record(
        device,
        config_path=config_path,
        settings=settings,
        grid=grid,
        executor=executor,
        columns=list(COLUMNS),
    )


class ProgressBar:
    """``sweep [#####-----] 12/56 configurations, 0:10 elapsed, ~0:37 left`` on stderr."""

    def __init__(self, total: int, done: int, stream: Any = None, width: int = 30) -> None:
        """A bar of ``total`` configurations, ``done`` of them finished, on ``stream`` (stderr)."""
        self.total, self.done, self.start_done = total, done, done
        self.stream = stream if stream is not None else sys.stderr
        self.width, self.started = width, time.monotonic()
        self.show()

    def advance(self) -> None:
        """Count one more configuration done and redraw."""
        self.done += 1
        self.show()

    def show(self) -> None:
        """Redraw the bar on its line (carriage return, no newline)."""
        elapsed = time.monotonic() - self.started
        fraction = self.done / self.total if self.total else 1.0
        filled = int(round(self.width * fraction))
        ran = self.done - self.start_done
        left = elapsed / ran * (self.total - self.done) if ran else math.nan
        eta = "?" if math.isnan(left) else _clock(left)
        line = (
            f"sweep [{'#' * filled}{'-' * (self.width - filled)}] {self.done}/{self.total} "
            f"configurations, {_clock(elapsed)} elapsed, ~{eta} left"
        )
        terminal = getattr(self.stream, "isatty", lambda: False)()
        tenth = max(1, self.total // 10)
        if not terminal and self.done < self.total and (self.done - self.start_done) % tenth:
            return  # a log file gets about ten lines, not one per configuration
        end = "" if terminal and self.done < self.total else "\n"
        self.stream.write(("\r" if terminal else "") + line + end)
        self.stream.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"
