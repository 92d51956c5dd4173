"""Host memory on the CPU backend: keep freed memory in the process instead of unmapping it.

    from i2spp_jax import host_memory
    host_memory.keep_freed_memory()   # first thing in a CPU process, before any JAX computation

Why: XLA's CPU runtime allocates each execution's temporaries as one block (219 MB for the
benchmark's W+ step at 256x256, 14 GB for config-f at batch 8) with `posix_memalign`, from the
calling worker thread's glibc arena. A block that large does not fit a thread arena, so glibc maps it
with mmap and unmaps it when the execution ends: every step page-faults all of it afresh (62,000
faults, about 150 ms of kernel CPU time per W+ step on the 2-core machine; BUILD_NOTES.md, issue 9).
With one arena, no mmap for large blocks and no trimming, the block is served from the heap and
steps reuse the one before's (5,000-12,000 faults and 13-30 ms of kernel time per W+ step over the
first 7-9 steps). For the first few steps the heap may grow by a block per step, while small
allocations split its free space, and then settles; the process keeps that memory.

The cost: freed memory is kept for reuse rather than returned to the system, so the process's
resident size stays at its peak. The settings are process-wide; they take effect only for threads
that have not allocated yet, so call this before the first JAX computation (the experiments/
commands and the tests do). Set I2SPP_KEEP_HOST_MEMORY=0 to leave glibc's defaults.
"""

import ctypes
import importlib.util
import os
import sys

ENV = "I2SPP_KEEP_HOST_MEMORY"

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1  # free memory at the top of the heap beyond this is returned to the system
M_MMAP_MAX = -4  # how many blocks may be served by mmap; 0 = none (the heap serves them)
M_ARENA_MAX = -8  # arenas in all; 1 = every thread allocates from the main (sbrk) heap

_SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))
_kept = False  # whether keep_freed_memory took effect in this process

_ACCELERATOR_PLUGINS = ("jax_plugins", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "libtpu")


def keep_freed_memory(*, force: bool = False) -> bool:
    """Sets glibc's allocator to keep freed memory (one arena, no mmap, no trimming). Returns True
    when the settings took effect.

    It does nothing (returns False) where it does not apply: not glibc, I2SPP_KEEP_HOST_MEMORY=0,
    (unless force=True) an accelerator plugin installed and JAX_PLATFORMS not "cpu" (there the
    device allocator holds the large buffers and the host's defaults are left alone), or too late:
    a JAX backend already started, whose worker threads keep the arenas they have.
    """
    if os.environ.get(ENV, "1") == "0" or _jax_started():
        return False
    if not force and not _cpu_only():
        return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    global _kept
    took = all(mallopt(param, value) == 1 for param, value in _SETTINGS)
    _kept = _kept or took
    return took


def describe() -> str:
    """This process's setting, for records of how a run ran."""
    return "kept (i2spp_jax.host_memory)" if _kept else "glibc defaults"


def _jax_started() -> bool:
    """Whether a JAX backend (and with it XLA's worker threads) exists in this process already."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def _cpu_only() -> bool:
    """True when JAX will run on the CPU: forced by JAX_PLATFORMS, or no accelerator plugin installed."""
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return True
    return not any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_PLUGINS)


def _glibc_mallopt():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt
