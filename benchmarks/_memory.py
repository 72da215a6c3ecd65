"""Peak-RSS measurement for benchmarks (psutil sampling thread)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import psutil


class PeakRSS:
    """Samples this process's RSS every ``interval`` seconds while active.

    ``growth`` is the peak RSS seen minus the RSS at entry, in bytes.  Sampling
    can miss a spike shorter than the interval; allocations that are touched
    (as any useful temporary is) stay resident long enough to be seen.
    Subclasses may measure something else by overriding :meth:`sample`.
    """

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.proc = psutil.Process()
        self.start = self.peak = 0
        self._stop = threading.Event()

    def sample(self) -> int:
        """The quantity whose peak is tracked, in bytes (here: resident set size)."""
        return self.proc.memory_info().rss

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            time.sleep(self.interval)

    def __enter__(self):
        self.start = self.peak = self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample())

    @property
    def growth(self) -> int:
        return self.peak - self.start


@contextmanager
def peak_rss(interval: float = 0.002):
    with PeakRSS(interval) as p:
        yield p
