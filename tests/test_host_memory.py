"""host_memory.keep_freed_memory: an execution's large temporaries are reused, not page-faulted afresh."""

import os
import subprocess
import sys

import pytest

from i2spp_jax import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A program whose temporaries are one 96 MB block (the concatenation), larger than a glibc thread
# arena's 64 MB heap: by default glibc maps it with mmap per execution and unmaps it afterwards.
_CHILD = """
import ctypes, resource, sys
import experiments.cli  # the commands' imports come first, as in cli.run
from i2spp_jax import host_memory
kept = host_memory.keep_freed_memory(force=True) if sys.argv[1] == "keep" else False
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sum(jnp.concatenate([x, x * 2, x * 3], 0) @ jnp.ones((4096, 4))))
x = jnp.ones((2048, 4096))
assert f.lower(x).compile().memory_analysis().temp_size_in_bytes >= 96 * 2**20
faults = []
for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(f(x))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, *faults[1:], flush=True)
ctypes.CDLL(None).malloc_stats()  # to stderr: "max mmap bytes = N", the peak of glibc's mmapped blocks
"""


def _run(mode: str) -> tuple[str, list[int], int]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    env.pop(host_memory.ENV, None)
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    kept, *faults = out.stdout.split()
    mmapped = [int(line.split("=")[1]) for line in out.stderr.splitlines() if line.startswith("max mmap bytes")]
    return kept, [int(n) for n in faults], mmapped[0]


@pytest.mark.skipif(not sys.platform.startswith("linux") or host_memory._glibc_mallopt() is None,
                    reason="glibc only")
def test_large_temporaries_come_from_the_kept_heap():
    block = 96 * 2**20
    pages = block // os.sysconf("SC_PAGE_SIZE")
    kept, faults_kept, mmapped_kept = _run("keep")
    assert kept == "True"
    _, faults_default, mmapped_default = _run("default")
    print(f"page faults per execution ({pages} pages of temporaries): kept {faults_kept}, glibc's defaults "
          f"{faults_default}; peak mmapped bytes {mmapped_kept} / {mmapped_default}")
    assert mmapped_default >= block  # glibc's defaults map the block: what the setting is for
    assert mmapped_kept < block  # kept: the heap serves it
    # The heap settles: while small allocations split its free space, an execution's block may not fit
    # and the heap grows by a block (fresh pages; seen for up to 6 executions in a row), after which
    # executions reuse it. So the minimum over 15 is checked, not every one.
    assert min(faults_kept) < 0.1 * pages
    assert min(faults_default) > 0.9 * pages


def test_the_environment_switch_leaves_the_defaults(monkeypatch):
    monkeypatch.setenv(host_memory.ENV, "0")
    monkeypatch.setattr(host_memory, "_glibc_mallopt", lambda: pytest.fail("mallopt must not be called"))
    assert host_memory.keep_freed_memory(force=True) is False


def test_an_accelerator_install_leaves_the_defaults(monkeypatch):
    monkeypatch.delenv(host_memory.ENV, raising=False)
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(host_memory, "_ACCELERATOR_PLUGINS", ("json",))  # any importable module stands in
    monkeypatch.setattr(host_memory, "_jax_started", lambda: False)  # as at a command's start
    monkeypatch.setattr(host_memory, "_glibc_mallopt", lambda: pytest.fail("mallopt must not be called"))
    assert host_memory.keep_freed_memory() is False
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setattr(host_memory, "_glibc_mallopt", lambda: (lambda param, value: 1))
    assert host_memory.keep_freed_memory() is True


def test_too_late_once_a_backend_runs(monkeypatch):
    """After the first JAX computation the worker threads have their arenas: the call says so (False)."""
    import jax.numpy as jnp

    jnp.ones(2).block_until_ready()
    monkeypatch.delenv(host_memory.ENV, raising=False)
    monkeypatch.setattr(host_memory, "_glibc_mallopt", lambda: pytest.fail("mallopt must not be called"))
    assert host_memory._jax_started()
    assert host_memory.keep_freed_memory(force=True) is False
