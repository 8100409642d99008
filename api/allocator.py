"""Hand freed native memory back to the system while the service runs (glibc ``malloc_trim``).

A worker's resident memory is mostly native: torch tensors, the tokenizers' and the database
drivers' buffers. glibc keeps the pages of freed blocks in its arenas (one per thread that
allocated, up to eight per core) for reuse, so memory freed after a long prompt or a burst of
turns stays resident, scattered between live blocks where the arena's top cannot shrink.
``malloc_trim(0)`` returns every whole free page of every arena to the kernel. The trimmer
calls it every ``interval`` seconds on a daemon thread, never on the event loop; it takes
milliseconds and blocks only other allocations for that time. On a C library without
``malloc_trim`` (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Callable

__all__ = ["HeapTrimmer", "malloc_trim"]

logger = logging.getLogger(__name__)


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _load_trim()


def malloc_trim() -> bool:
    """Return free heap pages to the kernel; whether the C library can (glibc)."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class HeapTrimmer:
    """A daemon thread that calls ``malloc_trim`` every ``interval`` seconds until stopped.

    Args:
        interval: Seconds between two trims.
    """

    def __init__(self, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval!r}")
        self.interval = interval
        self.trims = 0
        """Trims done so far (observability and tests)."""
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="malloc-trim", daemon=True)

    @property
    def supported(self) -> bool:
        """Whether this C library can trim (glibc)."""
        return _TRIM is not None

    def start(self) -> HeapTrimmer:
        """Start trimming (nothing happens on a C library that cannot)."""
        if self.supported:
            self._thread.start()
        else:
            logger.info("this C library has no malloc_trim; freed memory is not trimmed")
        return self

    def stop(self) -> None:
        """Stop the thread (a trim in progress finishes first)."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            malloc_trim()
            self.trims += 1
