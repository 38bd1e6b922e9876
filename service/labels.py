"""Bounded label values: a metric's label sets stay few, whatever clients submit.

Every distinct label value is a new time series in Prometheus, kept for weeks;
a label fed from user input (a spec's name, a run id) can create millions.
cowsim's labels come from small vocabularies — kernel release lines, workload
kinds, COW causes — but a combination of them (``direct_io+forking_server``)
or a future name could still grow, so each is capped: the first ``limit``
distinct values are kept, later ones are reported as ``"other"``::

    kernels = BoundedValues(limit=2)
    kernels("6.8"), kernels("5.10"), kernels("4.19"), kernels("6.8")
    # -> "6.8", "5.10", "other", "6.8"

:class:`BoundedPairs` does the same for a pair of labels that travel together
(a run's kernel and workload): at most ``limit`` pairs, then ``("other",
"other")``.  The series of a family are then at most the product of its caps.
"""

from __future__ import annotations

import threading

__all__ = ["OTHER", "BoundedPairs", "BoundedValues"]

OTHER = "other"
"""The label value that stands for every value past the cap."""


class BoundedValues:
    """The first ``limit`` distinct values pass; the rest become :data:`OTHER`."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a label cap is at least 1")
        self.limit = limit
        self.seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        with self._lock:
            if value in self.seen:
                return value
            if len(self.seen) < self.limit:
                self.seen.add(value)
                return value
        return OTHER


class BoundedPairs:
    """The first ``limit`` distinct pairs pass; the rest become ``(OTHER, OTHER)``."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a label cap is at least 1")
        self.limit = limit
        self.seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def __call__(self, first: str, second: str) -> tuple[str, str]:
        pair = (first, second)
        with self._lock:
            if pair in self.seen:
                return pair
            if len(self.seen) < self.limit:
                self.seen.add(pair)
                return pair
        return OTHER, OTHER
