"""Where the W+ step's first call goes: tracing, lowering, XLA's compile split by its own spans, and the
first executions.

    python -m experiments.compile_split                                   # CPU: the benchmark's 256x256 generator
    python -m experiments.compile_split --preset=ffhq --batch=8 --numerics=tf32   # a GPU: config-f at 1024

Builds the program that the benchmark's first call compiles (the engine's W+ step, --steps_per_call
iterations per dispatch, as experiments.step_parts sets it up) and times each stage apart: the trace
(Python: the step's functions to a jaxpr), the lowering (to StableHLO), XLA's compile, the first
execution and a second one (its rate is printed, from one call: a check, not a benchmark). The
compile runs under jax.profiler, and XLA's host spans (HLO passes, autotuning, LLVM, the PTX
assembler on a GPU, ...) are summed by name: inclusive milliseconds, how often, on how many threads.
The table says which of XLA's stages the issue 9 goal "compile <= 30 s" has to shorten, and the
threads' busy time says whether a stage ran in parallel. XLA_FLAGS apply as usual (the record keeps
them), so a flag's effect on each stage is one more run. The persistent compilation cache is off:
every run compiles cold. Prints the table and writes --out/compile_split.json.
"""

import collections
import glob
import json
import os
import time

from absl import flags

from experiments import benchmark, cli, step_parts


def define_flags() -> None:
    flags.DEFINE_enum("preset", "auto", ["auto", "cpu", "ffhq"], "sizes: the benchmark's presets (auto = ffhq on a GPU)")
    flags.DEFINE_integer("resolution", 0, "generator output side, a power of two >= 4 (0 = the preset's)",
                         lower_bound=0)
    benchmark.power_of_two_flag("resolution")
    flags.DEFINE_integer("batch", 1, "images per step", lower_bound=1)
    benchmark.define_resize_to_flag()
    flags.DEFINE_enum("numerics", "fp32", ["fp32", "tf32", "bf16"], "as experiments.benchmark's --numerics")
    flags.DEFINE_integer("steps_per_call", 0, "iterations per dispatch (0 = the engine's default: 25 on a GPU, as "
                         "in the benchmark's GPU runs, 1 elsewhere)", lower_bound=0)
    flags.DEFINE_integer("top", 30, "rows of the span table", lower_bound=1)
    flags.DEFINE_string("vgg", "auto", "auto (ImageNet if installed, else random), random, or a vgg16_trunk.npz")
    benchmark.define_method_flags()
    flags.DEFINE_string("out", "runs/compile_split", "output folder")


def host_spans(path: str) -> tuple[list, dict]:
    """From a trace's host plane: [{name, ms, count, threads}] of XLA's spans summed by name (inclusive
    time, largest first; the Python tracer's "$file:line" frames left out), and per thread that ran
    any, its busy milliseconds (the union of its spans, so nesting counts once)."""
    import jax

    pd = jax.profiler.ProfileData.from_file(path)
    by_name = collections.defaultdict(lambda: [0.0, 0, set()])
    busy = {}
    for plane in pd.planes:
        if not plane.name.startswith("/host"):
            continue
        for line in plane.lines:
            spans = []
            for ev in line.events:
                if ev.name.startswith("$"):  # the Python tracer's frames: the caller's side, timed apart
                    continue
                e = by_name[ev.name]
                e[0] += ev.duration_ns / 1e6
                e[1] += 1
                e[2].add(line.name)
                spans.append((ev.start_ns, ev.end_ns))
            if spans:
                busy[line.name] = _union_ms(spans)
    rows = [{"name": n, "ms": ms, "count": c, "threads": len(t)} for n, (ms, c, t) in by_name.items()]
    rows.sort(key=lambda r: -r["ms"])
    return rows, dict(sorted(busy.items(), key=lambda kv: -kv[1]))


def _union_ms(spans: list) -> float:
    """Milliseconds covered by the union of [start, end) nanosecond intervals."""
    total, end = 0.0, None
    for s, e in sorted(spans):
        if end is None or s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total / 1e6


def measure(F) -> dict:
    import dataclasses

    import jax
    import jax.numpy as jnp

    from i2spp_jax import embed
    from i2spp_jax.engine import driver
    from i2spp_jax.engine import step as step_lib

    preset = F.preset if F.preset != "auto" else ("ffhq" if jax.default_backend() == "gpu" else "cpu")
    su = step_parts.setup(preset, F.batch, F.resize_to, F.numerics, F.vgg, resolution=F.resolution,
                          **benchmark.method_kwargs(F))
    benchmark.make_out(F.out)  # --vgg read: a refused one leaves no folder
    _, args = step_parts.engine_step(su, "w")
    phase = dataclasses.replace(embed.W_l(0, resize_to=F.resize_to), compute_dtype=su["dtype"])
    k = F.steps_per_call or driver.default_steps_per_call()
    program = step_lib.compiled_steps(phase, k) if k > 1 else step_lib.compiled_step(phase)
    fresh = lambda: (jax.tree.map(jnp.copy, args[0]), jax.tree.map(jnp.copy, args[1])) + args[2:]  # noqa: E731 (donated)
    trace_dir = os.path.join(F.out, "trace")
    with jax.default_matmul_precision(su["precision"]):
        t0 = time.perf_counter()
        traced = program.trace(*args)
        t1 = time.perf_counter()
        lowered = traced.lower()
        t2 = time.perf_counter()
        with jax.profiler.trace(trace_dir):
            compiled = lowered.compile()
        t3 = time.perf_counter()
        calls = []
        for _ in range(2):
            a = fresh()
            jax.block_until_ready(a)
            t = time.perf_counter()
            jax.block_until_ready(compiled(*a))
            calls.append(time.perf_counter() - t)
    path = max(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    spans, busy = host_spans(path)
    return {"preset": preset, "resolution": su["resolution"], "batch": F.batch, "numerics": F.numerics,
            "steps_per_call": k, **benchmark.method_record(F, su["dtype"]),
            "device": str(jax.devices()[0].device_kind),
            "backend": jax.default_backend(), "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "seconds": {"trace": t1 - t0, "lower": t2 - t1, "xla_compile": t3 - t2, "first_execution": calls[0],
                        "second_execution": calls[1]},
            "img_it_per_s_second_execution": k * F.batch / calls[1],
            "spans": spans, "busy_ms_per_thread": busy, "trace": path}


def report(rec: dict, top: int) -> str:
    s = rec["seconds"]
    head = (f"{rec['device']} ({rec['backend']}, jax {rec['jax']}); {rec['resolution']}x{rec['resolution']} "
            f"({rec['preset']} preset), batch {rec['batch']}, {rec['numerics']}, {rec['steps_per_call']} iterations "
            f"per dispatch, up-sampling {rec['up_method']}, XLA_FLAGS={rec['xla_flags'] or '(none)'}\n"
            f"trace {s['trace']:.2f} s, lowering {s['lower']:.2f} s, XLA compile {s['xla_compile']:.2f} s, first "
            f"execution {s['first_execution']:.2f} s, second {s['second_execution']:.2f} s "
            f"({rec['img_it_per_s_second_execution']:.1f} img-it/s from that one call)")
    lines = ["| XLA span (inclusive, summed by name) | ms | count | threads |", "| --- | --- | --- | --- |"]
    for r in rec["spans"][:top]:
        lines.append(f"| {r['name'][:100]} | {r['ms']:.1f} | {r['count']} | {r['threads']} |")
    busy = rec["busy_ms_per_thread"]
    threads = (f"{len(busy)} threads ran XLA spans; busy ms (union of their spans), largest first: "
               + ", ".join(f"{v:.0f}" for v in list(busy.values())[:16]))
    return "\n\n".join([head, "\n".join(lines), threads])


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    F = flags.FLAGS
    benchmark.check_out(F.out)
    rec = measure(F)
    cli.keep_earlier(F.out, ["compile_split.json"])
    with open(os.path.join(F.out, "compile_split.json"), "w") as f:
        json.dump(rec, f, indent=1)
    print(report(rec, F.top))
    print(f"\nwrote {F.out}/compile_split.json and the trace {rec['trace']}")


if __name__ == "__main__":
    define_flags()
    cli.run(main, persistent_cache=False)
