"""Algorithm 2 end to end, timed: the paper's W+ phase, then its noise phase, on a batch of images.

    python -m experiments.time_algorithm2 --resolution=32 --w_steps=50 --noise_steps=50 --resize_to=32   # a CPU check
    python -m experiments.time_algorithm2 --preset=ffhq --batch=8 --compute_dtype=bfloat16     # a GPU: config-f at 1024

The issue 9 goal "Algorithm 2 (5000 + 3000 iterations) in at most 30 s per image, amortised over a
batch" timed as a user runs it: one `embed()` call with `schedule("w_then_noise", ...)` (Adam on W+
with MSE + perceptual at 256, then Adam on the noise maps), the engine's defaults otherwise (25
iterations per dispatch on a GPU, the bf16 mode's float32 tail of 10% per phase). The generator is
random at the benchmark's sizes and the targets are its own renders from hidden latents, so the
PSNR after each phase says the run did its job. A warm-up `embed()` with the same settings and
--warmup_steps per phase compiles every program first; its wall time (compile + warm-up) is
reported apart, and the timed call's seconds per image are its wall time over the batch.
Writes --out/algorithm2.json and prints one line per phase.
"""

import json
import os
import time

from absl import flags

from experiments import benchmark, cli, presets, step_parts


def define_flags() -> None:
    flags.DEFINE_enum("preset", "auto", ["auto", "cpu", "ffhq"], "sizes: the benchmark's presets (auto = ffhq on a GPU)")
    flags.DEFINE_integer("resolution", 0, "generator output side, a power of two >= 4 (0 = the preset's)",
                         lower_bound=0)
    benchmark.power_of_two_flag("resolution")
    flags.DEFINE_integer("batch", 1, "images per embed() call", lower_bound=1)
    flags.DEFINE_integer("w_steps", 5000, "iterations of the W+ phase", lower_bound=1)
    flags.DEFINE_integer("noise_steps", 3000, "iterations of the noise phase", lower_bound=1)
    flags.DEFINE_integer("warmup_steps", 250, "iterations per phase of the untimed first call (compiles every "
                         "program the timed call runs: keep it at least 10x --steps_per_call)", lower_bound=1)
    benchmark.define_resize_to_flag()
    flags.DEFINE_enum("numerics", "tf32", ["fp32", "tf32"], "matrix precision of the float32 parts (fp32 = highest)")
    flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"], "the bf16 mode or float32")
    flags.DEFINE_float("float32_tail", 0.1, "the bf16 mode's float32 share of each phase, at its end",
                       lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("float32_head", 0.1, "the bf16 mode's float32 share of each phase, at its start",
                       lower_bound=0.0, upper_bound=1.0)
    presets.finite_floats(["float32_tail", "float32_head"])
    flags.DEFINE_string("float32_above_db", "auto", "the bf16 mode: float32 once an image reaches this PSNR (dB); "
                        "auto = 10 dB under bf16's rounding floor; none = never")
    flags.DEFINE_integer("steps_per_call", 0, "iterations per dispatch (0 = the engine's default)", lower_bound=0)
    flags.DEFINE_string("vgg", "auto", "auto (ImageNet if installed, else random), random, or a vgg16_trunk.npz")
    benchmark.define_method_flags()
    flags.DEFINE_string("out", "runs/time_algorithm2", "output folder (algorithm2.json)")
    flags.DEFINE_integer("log_every", 1000, "the timed call's progress line every this many iterations (PSNR, "
                         "img-it/s; 0 = none), so that a run cut short still says how far it got", lower_bound=0)


def _run(su, w_steps, noise_steps, F, above_db, log_every=0):
    import jax

    from i2spp_jax import embed

    G = su["G"]
    phases = embed.schedule("w_then_noise", w_steps, noise_steps, resize_to=F.resize_to)
    init = embed.initial_variables(G, su["batch"], w_init="w_avg", noise_init="normal", seed=0)
    t0 = time.perf_counter()
    with jax.default_matmul_precision(su["precision"]):
        res = embed.embed(G, su["target"], phases=phases, init_vars=init, vgg=su["vgg"], log=_say, log_every=log_every,
                          steps_per_call=F.steps_per_call or None, compute_dtype=F.compute_dtype,
                          float32_tail=F.float32_tail, float32_head=F.float32_head,
                          float32_above_db=above_db)
    jax.block_until_ready(res.vars)
    return res, time.perf_counter() - t0


def _say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


def main(argv):
    del argv
    import jax
    import numpy as np
    from absl import logging

    from i2spp_jax import embed
    from i2spp_jax.engine.driver import default_steps_per_call

    logging.set_verbosity(logging.WARNING)
    F = flags.FLAGS
    above_db = presets.parse_above_db(F.float32_above_db)  # a bad value refused before anything slow
    benchmark.check_out(F.out)
    preset = F.preset if F.preset != "auto" else ("ffhq" if jax.default_backend() == "gpu" else "cpu")
    numerics = "bf16" if F.compute_dtype == "bfloat16" else F.numerics
    su = step_parts.setup(preset, F.batch, F.resize_to, numerics, F.vgg, resolution=F.resolution,
                          **benchmark.method_kwargs(F))
    su["precision"] = "highest" if F.numerics == "fp32" else "tensorfloat32"
    benchmark.make_out(F.out)  # --vgg read: a refused one leaves no folder
    _say(f"{jax.devices()[0].device_kind}: the untimed first call ({F.warmup_steps} + {F.warmup_steps} iterations, "
         f"compiling every program)")
    _, warm_s = _run(su, F.warmup_steps, F.warmup_steps, F, above_db)
    _say(f"first call {warm_s:.1f} s; the timed call ({F.w_steps} + {F.noise_steps} iterations, batch {F.batch})")
    res, wall = _run(su, F.w_steps, F.noise_steps, F, above_db, F.log_every)
    psnr = [np.asarray(embed.evaluate(v, su["G"], su["target"])[1]) for v in res.phase_vars]
    rec = {"preset": preset, "resolution": su["resolution"], "batch": F.batch, "w_steps": F.w_steps,
           "noise_steps": F.noise_steps, "resize_to": F.resize_to, "numerics": F.numerics,
           "compute_dtype": F.compute_dtype, **benchmark.method_record(F, F.compute_dtype),
           "float32_tail": F.float32_tail if F.compute_dtype != "float32" else 0.0,
           "float32_head": F.float32_head if F.compute_dtype != "float32" else 0.0,
           "float32_above_db": [p.float32_above_db for p in res.phases],  # as resolved ("auto": the floor's)
           "low_dtype_iterations": list(res.low_dtype_iterations),  # per phase, in bf16 (the rest float32)
           "steps_per_call": F.steps_per_call or default_steps_per_call(), "vgg": su["vgg_source"],
           "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(), "jax": jax.__version__,
           "warmup_steps": F.warmup_steps, "compile_and_warmup_s": warm_s, "wall_s": wall,
           "seconds_per_image": wall / F.batch, "iterations_run": res.iterations_run,
           "psnr_db": {"W+ phase": psnr[0].tolist(), "noise phase": psnr[1].tolist()}}
    cli.keep_earlier(F.out, ["algorithm2.json"])
    with open(os.path.join(F.out, "algorithm2.json"), "w") as f:
        json.dump(rec, f, indent=1)
    print(f"{rec['device']} ({rec['backend']}, jax {rec['jax']}); {rec['resolution']}x{rec['resolution']} generator "
          f"({preset} preset), batch {F.batch}, VGG16 at {F.resize_to} ({rec['vgg']}), {F.compute_dtype}"
          f"{' with a float32 tail of %g' % rec['float32_tail'] if rec['float32_tail'] else ''}"
          f"{' and head of %g' % rec['float32_head'] if rec['float32_head'] else ''}, matmul precision "
          f"{su['precision']}, {rec['steps_per_call']} iterations per dispatch, up-sampling {rec['up_method']}, "
          f"ToRGB {rec['torgb_method']}, epilogue gradient {rec['epilogue_grad']}")
    print(f"Algorithm 2 ({F.w_steps} W+ + {F.noise_steps} noise iterations): {wall:.1f} s for {F.batch} images = "
          f"{wall / F.batch:.1f} s per image (after {warm_s:.1f} s of compiling and a {F.warmup_steps} + "
          f"{F.warmup_steps}-iteration warm-up)")
    if F.compute_dtype != "float32":
        print(f"  in {F.compute_dtype}: {' + '.join(map(str, res.low_dtype_iterations))} of the phases' iterations, "
              f"float32 past {rec['float32_above_db']} dB (the rest in float32)")
    for name, p in rec["psnr_db"].items():
        print(f"  PSNR after the {name}: mean {np.mean(p):.2f} dB (min {np.min(p):.2f}) against the hidden-latent targets")
    print(f"wrote {F.out}/algorithm2.json")


if __name__ == "__main__":
    define_flags()
    cli.run(main, persistent_cache=False)
