"""The CPU allocator settings take effect in the process that applies them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Runs in a child process: mallopt changes the whole process, and the test process must keep
# glibc's defaults. Reports where a freed 16 MiB block went, via glibc's own counters.
PROBE = textwrap.dedent(
    """
    import ctypes, sys
    sys.path.insert(0, {root!r})
    from pipeline.infra.cpu_allocator import keep_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    applied = keep_freed_memory() if sys.argv[1] == "on" else False
    size = 16 * 1024 * 1024
    block = libc.malloc(size)
    mapped = libc.mallinfo2().hblkhd  # bytes in blocks mapped straight from the kernel
    libc.free(block)
    heap_after_free = libc.mallinfo2().arena
    print(applied, mapped >= size, heap_after_free >= size)
    """
)


def _probe(mode: str, root: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(root=root), mode], capture_output=True, text=True, check=True
    )
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_blocks_stay_in_the_heap(request):
    root = str(request.config.rootpath)
    # glibc's defaults: a 16 MiB block is mapped from the kernel and unmapped when freed.
    assert _probe("off", root) == ["False", "True", "False"]
    # Kept: it comes from the heap and stays there after free, ready for the next step.
    assert _probe("on", root) == ["True", "False", "True"]
