"""Where the W+ step's time goes: its parts timed alone, with the same shapes as the engine's step.

    python -m experiments.step_parts                       # CPU: 256x256 generator (the benchmark's), batch 1
    python -m experiments.step_parts --batch=8 --preset=ffhq --numerics=tf32    # a GPU: config-f at 1024

Parts (each jitted and vmapped over the batch as the engine's step is, ms per iteration, median of
--rounds calls after a warm-up call, every clock read after block_until_ready):
  G forward               w -> image (the stored noise maps)
  G forward + backward    the gradient of sum(image * r) with respect to w
  VGG forward + backward  the perceptual term's gradient with respect to the image (VGG at --resize_to,
                          target features fixed), the image given
  W+ step                 the engine's whole compiled step (G, MSE + perceptual, Adam), one iteration
  noise step              the same for the noise phase (MSE only)
The generator is random, at the benchmark's sizes (`experiments.benchmark.PRESETS`); VGG16 is the
ImageNet one when installed (random weights otherwise: the same time). Prints a table and writes
--out/step_parts.json.
"""

import json
import os
import time

import numpy as np
from absl import flags

from experiments import benchmark, cli


def define_flags() -> None:
    flags.DEFINE_enum("preset", "auto", ["auto", "cpu", "ffhq"], "sizes: the benchmark's presets (auto = ffhq on a GPU)")
    flags.DEFINE_integer("batch", 1, "images per step", lower_bound=1)
    benchmark.define_resize_to_flag()
    flags.DEFINE_enum("numerics", "fp32", ["fp32", "tf32", "bf16"], "as experiments.benchmark's --numerics")
    flags.DEFINE_integer("rounds", 5, "timed calls per part (the table shows their median)", lower_bound=1)
    flags.DEFINE_string("vgg", "auto", "auto (ImageNet if installed, else random), random, or a vgg16_trunk.npz")
    flags.DEFINE_string("out", "runs/step_parts", "output folder (step_parts.json)")
    flags.DEFINE_bool("memory_only", False, "compile the W+ and noise steps and report their memory (XLA's "
                      "buffer assignment: arguments, outputs, temporaries) without timing anything")


def time_calls(fn, args, rounds: int) -> tuple[float, float]:
    """(first call seconds, median seconds of `rounds` calls after it)."""
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def _memory(fn, args) -> dict:
    """MB of the compiled program's arguments, outputs and temporaries (XLA's buffer assignment)."""
    m = fn.lower(*args).compile().memory_analysis()
    return {k: getattr(m, f"{k}_size_in_bytes") / 2**20 for k in ("argument", "output", "temp")}


def preset_config(preset: str, resolution: int = 0):
    """The benchmark's generator architecture at `preset`'s sizes (`resolution` > 0: another output side)."""
    from i2spp_jax.generator import GeneratorConfig

    res, base, cmax, w_dim, layers = benchmark.PRESETS[preset][:5]
    return GeneratorConfig.from_channel_base(img_resolution=resolution or res, channel_base=base, channel_max=cmax,
                                             z_dim=w_dim, w_dim=w_dim, mapping_layers=layers)


def setup(preset: str, batch: int, resize_to: int, numerics: str, vgg_spec: str, resolution: int = 0,
          up_method: str = "auto", torgb_method: str = "auto", epilogue_grad: str = "recompute") -> dict:
    """The benchmark's random generator and VGG16 at `preset`'s sizes (`resolution` > 0: another output
    side, the preset's widths; `up_method`, `torgb_method`, `epilogue_grad`: the Generator's), a batch of
    targets rendered from hidden latents, and the numerics' settings: what every part below is built from."""
    import jax
    import jax.numpy as jnp

    from i2spp_jax.generator import Generator, random_params
    from i2spp_jax.vgg import VGG16

    params, source = benchmark.vgg_trunk(vgg_spec)  # first: a refused --vgg costs no generator
    config = preset_config(preset, resolution)
    res = config.img_resolution
    G = Generator(params=random_params(config, jax.random.PRNGKey(0)), config=config,  # noise strengths > 0
                  up_method=up_method, torgb_method=torgb_method, epilogue_grad=epilogue_grad)
    dtype = "bfloat16" if numerics == "bf16" else "float32"
    vgg = VGG16(params=jax.tree.map(jnp.asarray, params), preprocessing="keras", compute_dtype=dtype)
    w = G.w_avg + 0.1 * jax.random.normal(jax.random.PRNGKey(1), (batch, G.num_ws, G.w_dim))
    target = jnp.clip(G.synthesis(w + 0.3, noise="const", fused_modconv=False), -1, 1)
    return {"G": G, "vgg": vgg, "vgg_source": source, "w": w, "target": target, "batch": batch, "dtype": dtype,
            "resize_to": resize_to, "resolution": res,
            "precision": "highest" if numerics == "fp32" else "tensorfloat32"}


def engine_step(su: dict, kind: str, fused_modconv: bool = False):
    """(the engine's compiled step, its arguments) for the W+ step (kind "w") or the noise step."""
    import dataclasses

    from i2spp_jax import embed
    from i2spp_jax.engine import step as step_lib

    G, vgg, target, batch = su["G"], su["vgg"], su["target"], su["batch"]
    phase = embed.W_l(0, resize_to=su["resize_to"]) if kind == "w" else embed.Mk_n(0)
    phase = dataclasses.replace(phase, fused_modconv=fused_modconv, compute_dtype=su["dtype"])
    init, opt, masks = step_state(G, batch, phase)
    tf = step_lib.target_features(vgg, target, target, phase)
    return embed.compiled_step(phase), (init, opt, G, vgg, target, target, masks, None, tf)


def step_state(G, batch: int, phase) -> tuple:
    """(variables at w_avg and the stored noise, their optimiser state, all-ones masks), each [batch, ...]:
    the engine's step arguments that do not depend on the targets."""
    import jax
    import jax.numpy as jnp

    from i2spp_jax import embed

    init = embed.initial_variables(G, batch, w_init="w_avg", noise_init="const")
    opt = jax.vmap(embed.make_optimizer(phase).init)(init)
    masks = jax.tree.map(lambda a: jnp.broadcast_to(a, (batch,) + a.shape), embed.make_masks(G))
    return init, opt, masks


def step_rows(su: dict, rounds: int, memory_only: bool = False) -> tuple[dict, dict]:
    """({name: (first call s, median s)}, {name: memory MB}) of the engine's W+ and noise steps. Each
    is timed before `_memory` compiles it, so that its first call includes the compile, as the other
    parts' first calls do (XLA's cache would otherwise hand the call the program `_memory` built)."""
    parts, memory = {}, {}
    for name, kind in (("W+ step", "w"), ("noise step", "noise")):
        step, args = engine_step(su, kind)
        if not memory_only:
            parts[name] = time_calls(step, args, rounds)
        memory[name] = _memory(step, args)
    return parts, memory


def measure(preset: str, batch: int, resize_to: int, numerics: str, rounds: int, vgg_spec: str,
            memory_only: bool = False, on_setup=lambda: None) -> dict:
    """The parts' records; `on_setup` runs once the inputs (--vgg) are read, before anything is timed."""
    import jax
    import jax.numpy as jnp

    from i2spp_jax import losses

    su = setup(preset, batch, resize_to, numerics, vgg_spec)
    on_setup()
    G, vgg, w, target, dtype = su["G"], su["vgg"], su["w"], su["target"], su["dtype"]
    r = jax.random.normal(jax.random.PRNGKey(2), target.shape)
    noise = [jnp.broadcast_to(m, (batch,) + m.shape) for m in G.noise_const]
    weights = losses.LossWeights(mse1=1e-5, percept=1e-5, style=0.0, mse2=0.0)
    feats = losses.target_features(vgg, target, target, weights=weights, resize_to=resize_to)
    sdt = None if dtype == "float32" else dtype

    def render(w1, n1):
        return G.synthesis(w1[None], noise=[m[None] for m in n1], fused_modconv=False, dtype=sdt)[0]

    g_fwd = jax.jit(jax.vmap(render))
    g_bwd = jax.jit(jax.vmap(jax.grad(lambda w1, n1, r1: jnp.sum(render(w1, n1) * r1)), in_axes=(0, 0, 0)))

    def percept(img1, f1):
        f1 = jax.tree.map(lambda a: a[None], f1)
        total, _ = losses.eq1_loss(vgg, img1[None], img1[None], img1[None], weights=losses.LossWeights(
            mse1=0.0, percept=1e-5, style=0.0, mse2=0.0), resize_to=resize_to, target_feats=f1)
        return total[0]

    v_bwd = jax.jit(jax.vmap(jax.grad(percept)))
    parts = {}
    with jax.default_matmul_precision(su["precision"]):
        if not memory_only:
            parts["G forward"] = time_calls(g_fwd, (w, noise), rounds)
            parts["G forward + backward"] = time_calls(g_bwd, (w, noise, r), rounds)
            parts["VGG forward + backward"] = time_calls(v_bwd, (target, feats), rounds)
        steps, memory = step_rows(su, rounds, memory_only)
        parts.update(steps)
    return {"preset": preset, "resolution": su["resolution"], "batch": batch, "resize_to": resize_to,
            "numerics": numerics, "vgg": su["vgg_source"], "device": str(jax.devices()[0].device_kind),
            "backend": jax.default_backend(), "jax": jax.__version__, "rounds": rounds, "memory_mb": memory,
            "parts": {} if memory_only else
            {k: {"first_call_s": f, "ms_per_iteration": 1e3 * m} for k, (f, m) in parts.items()}}


def table(rec: dict) -> str:
    step = rec["parts"]["W+ step"]["ms_per_iteration"]
    lines = ["| part | ms per iteration | per image | share of the W+ step | first call s (compile + one call) |",
             "|" + " --- |" * 5]
    for name, p in rec["parts"].items():
        ms = p["ms_per_iteration"]
        lines.append(f"| {name} | {ms:.1f} | {ms / rec['batch']:.1f} | {ms / step:.0%} | {p['first_call_s']:.1f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    import jax
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax's INFO lines would bury the table

    F = flags.FLAGS
    preset = F.preset if F.preset != "auto" else ("ffhq" if jax.default_backend() == "gpu" else "cpu")
    benchmark.check_out(F.out)  # before the minutes of measuring
    rec = measure(preset, F.batch, F.resize_to, F.numerics, F.rounds, F.vgg, F.memory_only,
                  on_setup=lambda: benchmark.make_out(F.out))
    cli.keep_earlier(F.out, ["step_parts.json"])
    with open(os.path.join(F.out, "step_parts.json"), "w") as f:
        json.dump(rec, f, indent=1)
    print(f"\n{rec['device']} ({rec['backend']}, jax {rec['jax']}); {rec['resolution']}x{rec['resolution']} generator "
          f"({preset} preset), batch {rec['batch']}, VGG16 at {rec['resize_to']} ({rec['vgg']}), {rec['numerics']}; "
          f"medians of {rec['rounds']} calls\n")
    if rec["parts"]:
        print(table(rec) + "\n")
    for name, m in rec["memory_mb"].items():
        print(f"{name}: arguments {m['argument']:.0f} MB, outputs {m['output']:.0f} MB, temporaries {m['temp']:.0f} MB "
              "(the compiled program's buffers)")


if __name__ == "__main__":
    define_flags()
    cli.run(main, persistent_cache=False)
