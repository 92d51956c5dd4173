"""The benchmark's GPU program, compiled for an H100 or H200 on a machine without a GPU: its kernels, the
bytes each moves, and XLA's compile split by its own spans.

    python -m experiments.gpu_hlo --numerics=tf32                      # the W+ step, config-f, batch 8, for an H200
    python -m experiments.gpu_hlo --numerics=bf16 --torgb_method=matmul  # a lever, weighed by its bytes
    python -m experiments.gpu_hlo --hlo=docs/x/hlo.txt.gz --profile=docs/bench_h200/call6_prof_tf32.json

JAX compiles for a GPU without one through its CUDA plugin's compile-only devices (a "topology" built
from a target description: experiments/configs/gpu_targets/). XLA runs its whole GPU pipeline (HLO
passes, fusion decisions from its cost model of the device, LLVM, the PTX assembler) and skips only
what needs the device: autotuning, which keeps each convolution's default algorithm. So the kernels
and their names are nearly the lent machine's (375 of an H200 profile's 444 instructions matched by
name and shape, across jax 0.10.2 here and 0.11.2 there), and the compile time is XLA's without its
autotuning.

Needs jax's CUDA plugin beside the project, best in a venv of its own (the plugin makes every JAX
process look for a GPU): `python3 -m venv .venv-gpu && .venv-gpu/bin/pip install 'jax[cuda12]==J' -e .`
with J the installed jax's version. This command sets JAX_PLATFORMS=cpu itself. With --hlo it reads an
optimised module's text instead (a profile_step run's hlo.txt.gz) and needs no plugin.

Prints the kernels of one iteration (the scan's loop body) summed by kind, with their bytes and the
milliseconds those bytes take at --bandwidth; their bytes by part of the network (each synthesis block,
forward and backward, then VGG16, the losses and the rest: where a lever is worth looking for); the
largest kernels with the source line that made them; how many distinct convolutions the first call
has XLA autotune (the step's and those of the targets' features, compiled too; autotuning is most of
a cold first call on the lent GPU, and the autotuner tunes each distinct one once per process);
with --profile, each memory-bound kernel's measured time beside its bytes. Writes --out/gpu_hlo.json
and --out/hlo.txt.gz.
"""

import dataclasses
import gzip
import json
import os
import shutil
import time

from absl import flags

from experiments import benchmark, cli, hlo_traffic

TARGETS_DIR = os.path.join(os.path.dirname(__file__), "configs", "gpu_targets")
TARGETS = {"h100": "h100_sxm.txtpb", "h200": "h200.txtpb"}


def define_flags() -> None:
    flags.DEFINE_string("target", "h200", "the GPU compiled for: h100, h200 (experiments/configs/gpu_targets/) or "
                        "a GpuTargetConfig text file")
    flags.DEFINE_enum("preset", "ffhq", ["cpu", "ffhq"], "sizes: the benchmark's presets")
    flags.DEFINE_integer("resolution", 0, "generator output side (0 = the preset's)", lower_bound=0)
    flags.DEFINE_integer("batch", 8, "images per step", lower_bound=1)
    flags.DEFINE_integer("resize_to", 256, "the side VGG16 sees")
    flags.DEFINE_enum("numerics", "tf32", ["fp32", "tf32", "bf16"], "as experiments.benchmark's --numerics")
    flags.DEFINE_enum("step", "w", ["w", "noise"], "the W+ step or the noise step")
    flags.DEFINE_integer("steps_per_call", 25, "iterations per dispatch (the engine's GPU default)", lower_bound=1)
    benchmark.define_method_flags()
    flags.DEFINE_float("bandwidth", 4.0, "TB/s at which the table converts bytes to ms (an H200's large fusions: "
                       "3.8-4.6)", lower_bound=0.01)
    flags.DEFINE_integer("top", 25, "rows of the largest-kernels table", lower_bound=0)
    flags.DEFINE_string("hlo", "", "read this optimised HLO text (.txt or .txt.gz) instead of compiling")
    flags.DEFINE_string("profile", "", "a profile_step JSON measured on a GPU: compare each kernel's bytes with "
                        "its measured time")
    flags.DEFINE_bool("spans", True, "compile under jax.profiler and sum XLA's spans (experiments.compile_split)")
    flags.DEFINE_string("out", "runs/gpu_hlo", "output folder")


def target_config(spec: str) -> tuple[str, str]:
    """(the GpuTargetConfig text, its path) for a --target."""
    path = os.path.join(TARGETS_DIR, TARGETS[spec]) if spec in TARGETS else spec
    if not os.path.isfile(path):
        raise cli.UserError(f"--target={spec}: no such file; use one of {sorted(TARGETS)} or a GpuTargetConfig text file")
    with open(path) as f:
        return f.read(), path


def compile_only_device(config_text: str):
    """A compile-only CUDA device described by `config_text`, from jax's CUDA plugin."""
    from jax.experimental import topologies

    try:
        topo = topologies.get_topology_desc(platform="cuda", target_config=config_text, topology="1x1x1")
    except (NotImplementedError, RuntimeError) as e:
        raise cli.UserError(f"no compile-only CUDA device ({str(e).splitlines()[0][:120]}): install jax's CUDA plugin "
                            "of the same version as jax (see this module's docstring), or pass --hlo=FILE") from e
    return topo.devices[0]


def gpu_methods(F) -> dict:
    """The Generator's up_method and torgb_method as "auto" resolves them on a GPU for F's numerics."""
    from i2spp_jax import networks

    dtype = "bfloat16" if F.numerics == "bf16" else "float32"
    return {"up_method": networks.resolve_up_method(F.up_method, backend="gpu"),
            "torgb_method": networks.resolve_torgb_method(F.torgb_method, dtype, backend="gpu")}


def program(F, sharding):
    """(the compiled steps function, abstract arguments placed by `sharding`, matmul precision, the
    targets' features as a (function, arguments) pair or None): the benchmark's first-call program, as
    experiments.compile_split builds it, from shapes alone (no target is rendered, no VGG16 weights are
    needed), and the other program of that call with convolutions in it: the VGG16 features of the
    phase's targets, computed once per phase (None for a phase without VGG16 terms)."""
    import jax
    import jax.numpy as jnp

    from i2spp_jax import embed
    from i2spp_jax.engine import phases
    from i2spp_jax.engine import step as step_lib
    from i2spp_jax.generator import Generator, random_params
    from i2spp_jax.vgg import VGG16
    from experiments import step_parts

    config = step_parts.preset_config(F.preset, F.resolution)
    dtype = "bfloat16" if F.numerics == "bf16" else "float32"
    G = Generator(params=random_params(config, jax.random.PRNGKey(0)), config=config, **gpu_methods(F),
                  epilogue_grad=F.epilogue_grad)
    trunk, _ = benchmark.vgg_trunk("random")  # the shapes are what count
    vgg = VGG16(params=jax.tree.map(jnp.asarray, trunk), preprocessing="keras", compute_dtype=dtype)
    batch = F.batch
    phase = embed.W_l(0, resize_to=F.resize_to) if F.step == "w" else embed.Mk_n(0)
    phase = dataclasses.replace(phase, compute_dtype=dtype, fused_modconv=phases.modconv_for(phase, batch, "gpu"))
    init, opt, masks = step_parts.step_state(G, batch, phase)
    w = jax.ShapeDtypeStruct((batch, G.num_ws, G.w_dim), jnp.float32)
    target = jax.eval_shape(lambda w: G.synthesis(w, noise="const", fused_modconv=False), w)
    feats = jax.eval_shape(lambda t: step_lib.target_features(vgg, t, t, phase), target)
    place = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)  # noqa: E731
    args = (place(init), place(opt), place(G), place(vgg), place(target), place(target), place(masks), None, place(feats))
    k = F.steps_per_call
    fn = step_lib.compiled_steps(phase, k) if k > 1 else step_lib.compiled_step(phase)
    features = None
    if jax.tree.leaves(feats):
        features = (jax.jit(lambda v, t: step_lib.target_features(v, t, t, phase)), (place(vgg), place(target)))
    return fn, args, "highest" if F.numerics == "fp32" else "tensorfloat32", features


def compile_for_gpu(F) -> tuple[str, dict]:
    """(the optimised HLO text, {"seconds": ..., "spans": ..., "busy_ms_per_thread": ...})."""
    import glob

    import jax

    from experiments import compile_split

    text, path = target_config(F.target)
    dump = os.path.join(F.out, "xla_dump")  # XLA's PTX, read for each kernel's loads, then removed
    shutil.rmtree(dump, ignore_errors=True)
    user_flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{user_flags} --xla_dump_to={dump} --xla_dump_hlo_pass_re=^$".strip()
    device = compile_only_device(text)  # the backend starts here and reads XLA_FLAGS
    fn, args, precision, features = program(F, jax.sharding.SingleDeviceSharding(device))
    trace_dir = os.path.join(F.out, "trace")
    with jax.default_matmul_precision(precision):
        # compiled first, as the engine's first call does, and apart from the step's timed compile
        features_text = features[0].trace(*features[1]).lower().compile().as_text() if features else ""
        t0 = time.perf_counter()
        lowered = fn.trace(*args).lower()
        t1 = time.perf_counter()
        if F.spans:
            with jax.profiler.trace(trace_dir):
                compiled = lowered.compile()
        else:
            compiled = lowered.compile()
        t2 = time.perf_counter()
    loads = {}
    for f in glob.glob(os.path.join(dump, "*.ptx")):
        with open(f) as fh:
            loads.update(hlo_traffic.ptx_loads(fh.read()))
    shutil.rmtree(dump, ignore_errors=True)
    from i2spp_jax.engine import hoist

    step_keys, feature_keys = (set(hlo_traffic.conv_autotune_keys(t)) for t in (compiled.as_text(), features_text))
    info = {"target": path, "device_kind": device.device_kind, "ptx_loads": loads,
            "xla_flags": user_flags, "loop_hoisting": hoist.last_split() if F.steps_per_call > 1 else None,
            "first_call_convolutions": {"step": len(step_keys), "target_features": len(feature_keys),
                                        "shared": len(step_keys & feature_keys),
                                        "to_autotune": len(step_keys | feature_keys)},
            "seconds": {"trace_and_lower": t1 - t0, "xla_compile": t2 - t1}}
    if F.spans:
        trace = max(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
        info["spans"], info["busy_ms_per_thread"] = compile_split.host_spans(trace)
    return compiled.as_text(), info


def read_hlo(path: str) -> str:
    fix = "give an optimised HLO text file (.txt or .txt.gz), as profile_step writes"
    if not os.path.isfile(path):
        raise cli.UserError(f"--hlo={path}: no such file; {fix}")
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rt") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise cli.UserError(f"--hlo={path}: cannot be read ({e}); {fix}") from e


def read_profile(path: str) -> dict:
    fix = "give a profile.json written by experiments.profile_step"
    if not os.path.isfile(path):
        raise cli.UserError(f"--profile={path}: no such file; {fix}")
    with cli.user_input(f"--profile={path}", fix):
        with open(path) as f:
            profile = json.load(f)
        if not isinstance(profile.get("summary", {}).get("instructions"), list):
            raise ValueError("it has no summary.instructions")
    return profile


def report(rec: dict, ks: list, top: int, bandwidth: float) -> str:
    parts = [rec["what"]]
    if "seconds" in rec:
        s = rec["seconds"]
        parts.append(f"trace + lowering {s['trace_and_lower']:.2f} s, XLA compile {s['xla_compile']:.2f} s "
                     f"(no autotuning: a compile-only device)")
        c = rec["first_call_convolutions"]
        parts.append(f"convolutions a first call autotunes: {c['to_autotune']} distinct (the step's {c['step']}, "
                     f"the targets' features' {c['target_features']}, {c['shared']} of them the step's too)")
        if rec.get("spans"):
            parts.append("\n".join(["| XLA span (inclusive, summed by name) | ms | count | threads |", "| --- | --- | --- | --- |"]
                                   + [f"| {r['name'][:80]} | {r['ms']:.0f} | {r['count']} | {r['threads']} |"
                                      for r in rec["spans"][:12]]))
    total = sum(k["bytes"] for k in ks)
    lines = [f"{len(ks)} kernels per iteration, {total / 1e9:.2f} GB moved",
             f"| kind | kernels | GB | ms at {bandwidth:g} TB/s |", "| --- | --- | --- | --- |"]
    for kind, v in rec["by_kind"].items():
        lines.append(f"| {kind} | {v['kernels']} | {v['gb']:.2f} | {v['ms_at_bandwidth']:.2f} |")
    parts.append("\n".join(lines))
    if rec.get("by_part"):
        rows = ["| part (synthesis block or region) | kernels | GB forward | GB backward | GB in all |",
                "| --- | --- | --- | --- | --- |"]
        rows += [f"| {p} | {v['kernels']} | {v['forward_gb']:.2f} | {v['backward_gb']:.2f} | {v['gb']:.2f} |"
                 for p, v in rec["by_part"].items()]
        parts.append("\n".join(rows))
    if top:
        rows = ["| GB | kind | kernel | shape | source, direction |", "| --- | --- | --- | --- | --- |"]
        for k in sorted(ks, key=lambda k: -k["bytes"])[:top]:
            rows.append(f"| {k['bytes'] / 1e9:.3f} | {k['kind']} | {k['name']} | {k['shape'].split('{')[0][:48]} | "
                        f"{k['source']}, {k['direction']} |")
        parts.append("\n".join(rows))
        heavy = sorted((k for k in ks if k["bytes"] >= 5e7), key=lambda k: -k["ops_per_element"])[:max(3, top // 3)]
        rows = ["| ops per element | GB | kernel | shape | source, direction |", "| --- | --- | --- | --- | --- |"]
        for k in heavy:
            rows.append(f"| {k['ops_per_element']} | {k['bytes'] / 1e9:.3f} | {k['name']} | {k['shape'].split('{')[0][:48]} | "
                        f"{k['source']}, {k['direction']} |")
        parts.append("fusions of 50 MB or more that compute the most per element (a high count may outrun the "
                     "memory's rate)\n" + "\n".join(rows))
    if rec.get("ptx_loads"):
        scalar = [k for k in ks if k["bytes"] >= 5e7 and k["kind"] != "convolution"
                  and k.get("loads") and not k["vector_loads"]]
        rows = ["| GB | kernel | shape | source, direction |", "| --- | --- | --- | --- |"]
        rows += [f"| {k['bytes'] / 1e9:.3f} | {k['name']} | {k['shape'].split('{')[0][:48]} | {k['source']}, {k['direction']} |"
                 for k in sorted(scalar, key=lambda k: -k["bytes"])]
        parts.append(f"kernels of 50 MB or more whose PTX loads are all scalar ({sum(k['bytes'] for k in scalar) / 1e9:.2f} GB "
                     "per iteration; vector loads: ld.global.v2/v4)\n" + "\n".join(rows))
    c = rec.get("compare")
    if c:
        head = (f"against the measured profile: {c['found']} of its {c['measured_instructions']} instructions found "
                f"(name and shape); memory-bound ones: {c['memory_bound_ms']:.2f} ms measured for "
                f"{c['memory_bound_gb']:.2f} GB, {c['tbs']:.2f} TB/s; those of 0.2 GB or more: {c['large_ms']:.2f} ms "
                f"for {c['large_gb']:.2f} GB, {c['large_tbs']:.2f} TB/s")
        rows = ["| measured ms | GB | TB/s | kernel | shape | source, direction |", "| --- | --- | --- | --- | --- | --- |"]
        for r in c["memory_bound"][:top or 10]:
            rows.append(f"| {r['ms']:.3f} | {r['gb']:.3f} | {r['tbs']:.2f} | {r['name']} | {r['shape'].split('{')[0][:40]} | "
                        f"{r['source']}, {r['direction']} |")
        parts.append(head + "\n" + "\n".join(rows))
    return "\n\n".join(parts)


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    F = flags.FLAGS
    profile = read_profile(F.profile) if F.profile else None
    os.makedirs(F.out, exist_ok=True)
    if F.hlo:
        text, rec = read_hlo(F.hlo), {"what": f"optimised HLO read from {F.hlo}", "hlo": F.hlo}
    else:
        text, rec = compile_for_gpu(F)
        m = gpu_methods(F)
        rec["what"] = (f"{rec['device_kind']} ({F.target}, compile-only): {F.step} step, {F.preset} preset"
                       f"{f' at {F.resolution}' if F.resolution else ''}, batch {F.batch}, {F.numerics}, "
                       f"{F.steps_per_call} per dispatch, up-sampling {m['up_method']}, "
                       f"ToRGB {m['torgb_method']}, epilogue gradient {F.epilogue_grad}, "
                       f"XLA_FLAGS={rec['xla_flags'] or '(none)'}")
    with cli.user_input(F.hlo or "the compiled module", "give the optimised module's text"):
        ks = hlo_traffic.kernels(text)
    rec["by_kind"] = hlo_traffic.by_kind(ks, F.bandwidth)
    rec["by_part"] = hlo_traffic.by_part(ks)
    rec["bandwidth_tbs"] = F.bandwidth
    if profile is not None:
        rec["compare"] = hlo_traffic.compare(ks, profile)
    for k in ks:  # XLA names a fusion's kernel by the fusion, "." made "_"
        counts = rec.get("ptx_loads", {}).get(k["name"].replace(".", "_"))
        if counts:
            k["loads"], k["vector_loads"] = counts
    rec["kernels"] = ks
    own_module = os.path.join(F.out, "hlo.txt.gz")  # an earlier compile's module goes aside with its record,
    reread = bool(F.hlo) and os.path.abspath(F.hlo) == os.path.abspath(own_module)  # unless it is the one read
    cli.keep_earlier(F.out, ["gpu_hlo.json"] + ([] if reread else ["hlo.txt.gz"]))
    if not F.hlo:
        with gzip.open(os.path.join(F.out, "hlo.txt.gz"), "wt") as f:
            f.write(text)
    with open(os.path.join(F.out, "gpu_hlo.json"), "w") as f:
        json.dump(rec, f, indent=1)
    print(report(rec, ks, F.top, F.bandwidth))
    print(f"\nwrote {F.out}/gpu_hlo.json")


if __name__ == "__main__":
    os.environ["JAX_PLATFORMS"] = "cpu"  # the compile-only CUDA device needs no GPU; nothing runs on one
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # the plugin's check wants a driver
    define_flags()
    cli.run(main, persistent_cache=False)
