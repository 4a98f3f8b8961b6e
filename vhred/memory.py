"""Keep freed memory in the process instead of handing it back to the OS after every step.

glibc serves large allocations (over 128 KiB to 32 MiB, adjusted on the fly) with fresh mmap
pages and returns them on free. A training step allocates many large buffers (the GRU
backward alone makes a full-size gradient buffer per time step of a packed sequence), so
every step page-faults those pages in again: on a 2-core CPU that cost a quarter of the step
time at the bench-512 sizes. Raising the mmap and trim thresholds lets freed blocks be
reused from the heap. The price: the process keeps its peak memory until it exits.
"""
import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # mallopt parameters, from glibc's malloc.h
LIMIT = 2 ** 31 - 1                            # mallopt takes an int


def keep_freed_memory() -> bool:
    """Raise glibc's thresholds for this process; False where there is no glibc (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, LIMIT)) and bool(libc.mallopt(M_TRIM_THRESHOLD, LIMIT))
    except (OSError, AttributeError):
        return False
