"""glibc heap settings for CPU compute processes (learner ranks, CPU engines).

On CPU every activation and gradient is a fresh multi-megabyte tensor. With glibc's defaults
such blocks are mapped from the kernel and handed back when freed, so each new one costs page
faults and zero-filling before the first write; that is a large share of element-wise ops and
of matrix multiplies whose output is new. Keeping freed memory in the process heap lets the
next step reuse pages that are already mapped. Set with ``mallopt`` in the process itself, so
it works in any Ray worker whatever its environment.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024
"""Blocks below this come from the heap (32 MiB is glibc's largest accepted value)."""
TOP_PAD = 64 * 1024 * 1024
"""Extra heap grown per ``brk``, so a step's first allocations do not grow it block by block."""
TRIM_THRESHOLD = 2**31 - 1
"""Never give free heap top back to the kernel: the next step needs it again."""


def keep_freed_memory() -> bool:
    """Apply the settings above to this process's glibc allocator; ``False`` where there is
    no glibc (macOS, musl) or it refused one of them (logged with the refused ones)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library, no lookup needed
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = {
        "M_MMAP_THRESHOLD": (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        "M_TRIM_THRESHOLD": (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        "M_TOP_PAD": (_M_TOP_PAD, TOP_PAD),
    }
    refused = [name for name, (param, value) in settings.items() if mallopt(param, value) != 1]
    if refused:
        log.warning("mallopt refused %s; those keep glibc's defaults", ", ".join(refused))
    return not refused
