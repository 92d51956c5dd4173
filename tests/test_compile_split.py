"""experiments/compile_split.py: the W+ step's first call split into trace, lowering, XLA's compile (by
XLA's own spans) and the first executions."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import pytest

from experiments import compile_split
from test_cli import run_cli


def test_union_counts_nested_and_overlapping_spans_once():
    ns = [(0, 10), (2, 5), (8, 20), (30, 40), (35, 36)]  # nested, overlapping, disjoint, nested
    assert compile_split._union_ms(ns) == pytest.approx((20 + 10) / 1e6)
    assert compile_split._union_ms([]) == 0.0


def test_a_compiles_spans_are_summed_by_name_without_python_frames(tmp_path):
    """A real trace of one XLA compile: the backend's compile span is found, is no longer than the wall
    time of the compile, contains its own sub-spans, and the Python tracer's "$file:line" frames are
    left out."""
    import time

    def f(x):
        for i in range(8):
            x = jnp.tanh(x @ x.T) + i
        return x.sum()

    lowered = jax.jit(jax.grad(f)).lower(jnp.ones((32, 32)))
    with jax.profiler.trace(str(tmp_path)):
        t0 = time.perf_counter()
        lowered.compile()
        wall_ms = 1e3 * (time.perf_counter() - t0)
    path = glob.glob(os.path.join(tmp_path, "**", "*.xplane.pb"), recursive=True)[0]
    spans, busy = compile_split.host_spans(path)
    by = {r["name"]: r for r in spans}
    assert spans == sorted(spans, key=lambda r: -r["ms"])
    assert not any(n.startswith("$") for n in by), [n for n in by if n.startswith("$")][:3]
    outer = by["backend_compile_and_load"]
    assert outer["count"] == 1 and 0 < outer["ms"] <= wall_ms
    inner = [r for n, r in by.items() if "Compiler::RunBackend" in n]  # CpuCompiler:: here, GpuCompiler:: on a GPU
    assert inner and inner[0]["ms"] <= outer["ms"]
    assert busy and max(busy.values()) <= wall_ms + 1


def test_the_command_splits_the_first_call_of_the_engines_step(tmp_path):
    """The command at a 32x32 generator: every stage timed, the record's spans hold XLA's compile, and
    the table is printed."""
    p, _ = run_cli("experiments.compile_split", f"--out={tmp_path}", "--resolution=32", "--resize_to=32",
                   "--vgg=random", "--top=5", timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = json.load(open(os.path.join(tmp_path, "compile_split.json")))
    s = rec["seconds"]
    assert set(s) == {"trace", "lower", "xla_compile", "first_execution", "second_execution"}
    assert all(v > 0 for v in s.values()) and rec["resolution"] == 32 and rec["steps_per_call"] == 1
    compile_ms = {r["name"]: r["ms"] for r in rec["spans"]}["backend_compile_and_load"]
    assert 0 < compile_ms <= 1e3 * s["xla_compile"]
    assert "| XLA span" in p.stdout and "XLA compile" in p.stdout


@pytest.mark.parametrize("args, words", [
    (["--resolution=48"], ["--resolution=48", "power of two"]),
    (["--resize_to=-4"], ["--resize_to=-4", ">= 16"]),
    (["--vgg=/nonexistent.npz"], ["--vgg=/nonexistent.npz", "vgg16_trunk.npz"]),
])
def test_bad_flags_and_inputs_are_one_line_and_leave_no_out(tmp_path, args, words):
    """Audit C2, findings 7 and 16: refused at start-up, in one line, with no --out made."""
    from test_cli import assert_one_line_error

    out = tmp_path / "cs"
    p, _ = run_cli("experiments.compile_split", f"--out={out}", "--resolution=32", "--resize_to=32", "--vgg=random",
                   *args)
    assert_one_line_error(p, *words)
    assert not out.exists()


def test_a_file_in_the_way_of_out_is_refused_before_compiling(tmp_path):
    from test_cli import assert_one_line_error

    (tmp_path / "afile").write_text("")
    p, _ = run_cli("experiments.compile_split", f"--out={tmp_path / 'afile' / 'sub'}", "--resolution=32",
                   "--resize_to=32", "--vgg=random")
    assert_one_line_error(p, "a file is in the way")
