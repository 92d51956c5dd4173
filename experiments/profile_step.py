"""Where the engine's W+ step spends its device time, kernel by kernel: a profiler trace, summed.

    python -m experiments.profile_step                                   # CPU: the benchmark's 256x256 generator
    python -m experiments.profile_step --preset=ffhq --batch=8 --numerics=tf32   # a GPU: config-f at 1024

Compiles the engine's step (as experiments.step_parts builds it), times --rounds calls, then traces
--calls more with jax.profiler and sums the device's kernel events by the HLO instruction that
launched each. The optimised HLO names each instruction's origin (the JAX operation and the source
line), so the time is also summed by source line, by kind of work (convolution, matrix product,
fused elementwise, reduction, copy) and by direction (forward, or the backward pass: XLA's
"transpose(...)" in the operation's name). Writes --out/profile.json (the tables), --out/hlo.txt.gz
(the optimised program) and the trace under --out/trace; prints the tables.

On a GPU, XLA's command buffers (CUDA graphs) can hide which instruction a kernel belongs to; set
XLA_FLAGS=--xla_gpu_enable_command_buffer= for the traced process (kernel times are unchanged; the
launch gaps grow, and the gap between the step's wall time and its kernels' sum shows them).
"""

import collections
import glob
import gzip
import json
import os
import re
import time

from absl import flags

from experiments import benchmark, cli, step_parts


def define_flags() -> None:
    flags.DEFINE_enum("preset", "auto", ["auto", "cpu", "ffhq"], "sizes: the benchmark's presets (auto = ffhq on a GPU)")
    flags.DEFINE_integer("batch", 1, "images per step", lower_bound=1)
    benchmark.define_resize_to_flag()
    flags.DEFINE_enum("numerics", "fp32", ["fp32", "tf32", "bf16"], "as experiments.benchmark's --numerics")
    flags.DEFINE_enum("step", "w", ["w", "noise"], "the W+ step or the noise step")
    flags.DEFINE_enum("modconv", "activations", ["activations", "grouped"], "the modulated convolution's form")
    flags.DEFINE_integer("rounds", 5, "timed calls before the trace (median)", lower_bound=1)
    flags.DEFINE_integer("calls", 3, "traced calls", lower_bound=1)
    flags.DEFINE_integer("top", 40, "rows of the per-instruction and per-line tables", lower_bound=1)
    flags.DEFINE_string("vgg", "auto", "auto (ImageNet if installed, else random), random, or a vgg16_trunk.npz")
    benchmark.define_method_flags()
    flags.DEFINE_string("out", "runs/profile_step", "output folder")


_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\((?:[^()]|\([^()]*\))*\)|\S+?)\s+([\w\-]+)\(")  # tuple shapes too
_META = re.compile(r'(op_name|source_file|source_line|stack_frame_id)=("(?:[^"\\]|\\.)*"|\d+)')
_TABLE_ROW = re.compile(r'^(\d+)\s+(?:"(.*)"|\{(.*)\})\s*$')
_FIELD = re.compile(r"(\w+)=(\d+)")
_KIND_OF_CALL = re.compile(r'custom_call_target="([^"]+)"')
_FUSION_KIND = re.compile(r"kind=(k\w+)")
_REGIONS = (("/optax/", "optimiser (optax)"), ("/i2spp_jax/vgg.py", "VGG16"), ("/i2spp_jax/ops.py", "generator"),
            ("/i2spp_jax/networks.py", "generator"), ("/i2spp_jax/generator.py", "generator"),
            ("/i2spp_jax/losses.py", "losses"), ("/i2spp_jax/metrics.py", "losses"), ("/i2spp_jax/engine/", "engine"))


def _frames(text: str) -> dict:
    """{stack frame id: [(file, line, function), ...] leaf first} from the module's FileNames,
    FunctionNames, FileLocations and StackFrames tables (XLA's HLO text since 2025; a printed
    parent_frame_id is the parent's id + 1, 0 for none)."""
    tables, current = collections.defaultdict(dict), None
    for line in text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = line
            continue
        if current is None:
            continue
        m = _TABLE_ROW.match(line)
        if not m:
            current = None if not line.strip() else current
            continue
        i, quoted, fields = m.groups()
        tables[current][int(i)] = quoted if quoted is not None else dict((k, int(v)) for k, v in _FIELD.findall(fields))
    files, funcs, locs, frames = (tables[k] for k in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"))
    chains = {}
    for fid in frames:
        chain, seen, cur = [], set(), fid
        while cur in frames and cur not in seen:
            seen.add(cur)
            loc = locs.get(frames[cur].get("file_location_id"), {})
            chain.append((files.get(loc.get("file_name_id"), "?"), loc.get("line", 0),
                          funcs.get(loc.get("function_name_id"), "?")))
            cur = frames[cur].get("parent_frame_id", 0) - 1
        chains[fid] = chain
    return chains


def _origin(chain: list) -> tuple[str, str]:
    """(the innermost project line "file:line function", the region) of a stack, leaf first."""
    region = next((name for key, name in _REGIONS if any(key in f for f, _, _ in chain) and key == "/optax/"), None)
    project = [(f, ln, fn) for f, ln, fn in chain if "/i2spp_jax/" in f]
    if region is None:
        region = next((name for f, _, _ in project for key, name in _REGIONS if key in f), "other")
    f, ln, fn = project[0] if project else (chain[0] if chain else ("?", 0, "?"))
    return f"{os.path.basename(f)}:{ln} {fn}", region


def hlo_index(text: str) -> dict:
    """{instruction name: {"opcode", "shape", "op_name", "source", "region", "target"|"fusion_kind"}}
    from optimised HLO text (names are unique within a module)."""
    chains = _frames(text)
    index = {}
    for line in text.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        name, shape, opcode = m.groups()
        meta = dict((k, v.strip('"')) for k, v in _META.findall(line))
        if "stack_frame_id" in meta:
            source, region = _origin(chains.get(int(meta["stack_frame_id"]), []))
        elif "source_file" in meta:  # older XLA: the leaf frame only
            f = meta["source_file"]
            source = f"{os.path.basename(f)}:{meta.get('source_line', '?')}"
            region = next((n for key, n in _REGIONS if key in f), "other")
        else:
            source, region = "", "other"
        entry = {"opcode": opcode, "shape": shape, "op_name": meta.get("op_name", ""), "source": source,
                 "region": region}
        t = _KIND_OF_CALL.search(line)
        if t:
            entry["target"] = t.group(1)
        k = _FUSION_KIND.search(line) if opcode == "fusion" else None
        if k:
            entry["fusion_kind"] = k.group(1)
        index[name] = entry
    return index


def work_kind(op: str, info: dict, kernel: str) -> str:
    """The kind of work a kernel does: convolution, matrix product, reduction, copy, elementwise, other."""
    target = info.get("target", "").lower()
    opcode = info.get("opcode", "")
    jax_op = info.get("op_name", "").split("/")[-1]
    text = f"{op} {target} {kernel}".lower()
    if "conv" in target or opcode == "convolution" or "cudnn" in text or jax_op.startswith("conv_general"):
        return "convolution"
    if "gemm" in text or "cublas" in text or opcode == "dot" or jax_op.startswith("dot_general"):
        return "matrix product"
    if opcode in ("copy", "transpose") or op.startswith(("copy", "transpose")) or jax_op == "transpose":
        return "copy/transpose"
    if "reduce" in text or info.get("fusion_kind") == "kInput" or jax_op.startswith("reduce"):
        return "reduction"
    if opcode == "fusion" or "fusion" in text:
        return "elementwise (fused)"
    return "other"


def direction(info: dict) -> str:
    """forward, or backward (JAX's transpose of a linearised function)."""
    return "backward" if "transpose(" in info.get("op_name", "") else "forward"


def device_events(path: str) -> tuple[list, str]:
    """[(kernel name, hlo instruction, duration ns)] of the trace's device work, and where it came
    from: the GPU's streams when the trace has a GPU, else the host threads that ran XLA's thunks."""
    import jax

    pd = jax.profiler.ProfileData.from_file(path)
    gpu = [p for p in pd.planes if p.name.startswith("/device:GPU")]
    events = []
    if gpu:
        for plane in gpu:
            for line in plane.lines:
                if not line.name.lower().startswith("stream"):
                    continue
                for ev in line.events:
                    stats = dict(ev.stats)
                    op = stats.get("hlo_op") or stats.get("tf_op") or f"kernel {ev.name[:60]}"
                    events.append((ev.name, str(op), ev.duration_ns))
        return events, "gpu streams"
    for plane in pd.planes:
        if not plane.name.startswith("/host"):
            continue
        for line in plane.lines:
            for ev in line.events:
                stats = dict(ev.stats)
                if "hlo_op" in stats:
                    events.append((ev.name, str(stats["hlo_op"]), ev.duration_ns))
    return events, "host threads (CPU backend)"


def summarise(events: list, index: dict, calls: int, top: int) -> dict:
    """Per-call milliseconds by instruction, source line, kind of work, region and direction."""
    by_op = collections.defaultdict(lambda: [0.0, 0, set()])
    for kernel, op, ns in events:
        e = by_op[op]
        e[0] += ns / 1e6 / calls
        e[1] += 1
        if len(e[2]) < 3:
            e[2].add(kernel[:80])
    total = sum(v[0] for v in by_op.values())
    tables = {k: collections.defaultdict(float) for k in ("kind", "region", "direction", "region_direction", "source")}
    rows = []
    for op, (ms, n, kernels) in by_op.items():
        info = index.get(op, {})
        kind = work_kind(op, info, " ".join(kernels))
        region, dirn = info.get("region", "unknown"), direction(info)
        tables["kind"][kind] += ms
        tables["region"][region] += ms
        tables["direction"][dirn] += ms
        tables["region_direction"][f"{region}, {dirn}"] += ms
        tables["source"][f"{info.get('source', '?')} {dirn}"] += ms
        rows.append({"op": op, "ms": ms, "launches_per_call": n / calls, "kind": kind, "region": region,
                     "direction": dirn, "shape": info.get("shape", "")[:90], "source": info.get("source", ""),
                     "jax_op": info.get("op_name", "").split("/")[-1][:60], "kernels": sorted(kernels)})
    rows.sort(key=lambda r: -r["ms"])
    ordered = {k: dict(sorted(v.items(), key=lambda kv: -kv[1])) for k, v in tables.items()}
    ordered["source"] = dict(list(ordered["source"].items())[:top])
    return {"kernel_ms_per_call": total, "launches_per_call": sum(v[1] for v in by_op.values()) / calls,
            "unattributed_ms_per_call": sum(v[0] for op, v in by_op.items() if op not in index),
            "tables": ordered, "instructions": rows}


def _share_table(title: str, d: dict, total: float) -> str:
    lines = [f"| {title} | ms per call | share |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v:.2f} | {v / total:.0%} |" for k, v in d.items()]
    return "\n".join(lines)


def report(rec: dict, top: int) -> str:
    s = rec["summary"]
    total = s["kernel_ms_per_call"]
    phases = ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in rec["compile_phases_s"].items())
    head = (f"{rec['device']} ({rec['backend']}, jax {rec['jax']}); {rec['step']} step, {rec['resolution']}x"
            f"{rec['resolution']} ({rec['preset']} preset), batch {rec['batch']}, {rec['numerics']}, modconv "
            f"{rec['modconv']}, up-sampling {rec['up_method']}, ToRGB {rec['torgb_method']}, epilogue gradient "
            f"{rec.get('epilogue_grad', 'autodiff')}; "
            f"XLA_FLAGS={rec['xla_flags']!r}\n"
            f"compile {rec['compile_s']:.1f} s ({phases}); wall "
            f"{rec['wall_ms']:.2f} ms per call (median of {rec['rounds']}); kernels {total:.2f} ms per call "
            f"({s['launches_per_call']:.0f} launches; {s['unattributed_ms_per_call']:.2f} ms not matched to an "
            f"instruction); events from {rec['events_from']}")
    parts = [head]
    for key, title in (("kind", "kind of work"), ("region_direction", "region, direction"), ("source", "source line")):
        parts.append(_share_table(title, s["tables"][key], total))
    lines = ["| instruction | ms | launches | kind | region | dir | jax op | source | shape |", "|" + " --- |" * 9]
    for r in s["instructions"][:top]:
        lines.append(f"| {r['op']} | {r['ms']:.3f} | {r['launches_per_call']:.0f} | {r['kind']} | {r['region']} | "
                     f"{r['direction'][0]} | {r['jax_op']} | {r['source']} | {r['shape']} |")
    parts.append("\n".join(lines))
    return "\n\n".join(parts)


def main(argv):
    del argv
    import jax
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    F = flags.FLAGS
    preset = F.preset if F.preset != "auto" else ("ffhq" if jax.default_backend() == "gpu" else "cpu")
    benchmark.check_out(F.out)
    su = step_parts.setup(preset, F.batch, F.resize_to, F.numerics, F.vgg, **benchmark.method_kwargs(F))
    benchmark.make_out(F.out)  # --vgg read: a refused one leaves no folder
    step, args = step_parts.engine_step(su, F.step, fused_modconv=F.modconv == "grouped")
    with jax.default_matmul_precision(su["precision"]):
        t0 = time.perf_counter()
        traced = step.trace(*args)  # Python: the step's functions traced to a jaxpr
        t1 = time.perf_counter()
        lowered = traced.lower()  # the jaxpr to StableHLO
        t2 = time.perf_counter()
        compiled = lowered.compile()  # XLA: optimisation, autotuning of the convolutions on a GPU, codegen
        t3 = time.perf_counter()
        compile_s, phases_s = t3 - t0, {"trace": t1 - t0, "lower": t2 - t1, "xla_compile": t3 - t2}
        text = compiled.as_text()
        cli.keep_earlier(F.out, ["profile.json", "hlo.txt.gz"])
        with gzip.open(os.path.join(F.out, "hlo.txt.gz"), "wt") as f:
            f.write(text)
        _, median_s = step_parts.time_calls(compiled, args, F.rounds)
        trace_dir = os.path.join(F.out, "trace")
        with jax.profiler.trace(trace_dir):
            for _ in range(F.calls):
                jax.block_until_ready(compiled(*args))
    path = max(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    events, source = device_events(path)
    if not events:
        raise cli.UserError(f"the trace {path} holds no device events with an HLO instruction: nothing to sum "
                            "(on a GPU, set XLA_FLAGS=--xla_gpu_enable_command_buffer= and run again)")
    rec = {"preset": preset, "resolution": su["resolution"], "batch": F.batch, "numerics": F.numerics, "step": F.step,
           "modconv": F.modconv, **benchmark.method_record(F, su["dtype"]),
           "device": str(jax.devices()[0].device_kind),
           "backend": jax.default_backend(),
           "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""), "compile_s": compile_s,
           "compile_phases_s": phases_s,
           "rounds": F.rounds, "wall_ms": 1e3 * median_s, "calls": F.calls, "trace": path,
           "events_from": source, "summary": summarise(events, hlo_index(text), F.calls, F.top)}
    with open(os.path.join(F.out, "profile.json"), "w") as f:
        json.dump(rec, f, indent=1)
    print(report(rec, F.top))
    print(f"\nwrote {F.out}/profile.json, {F.out}/hlo.txt.gz and the trace {path}")


if __name__ == "__main__":
    define_flags()
    cli.run(main, persistent_cache=False)
