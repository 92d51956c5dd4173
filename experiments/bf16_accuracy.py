"""What the bf16 mode costs in quality: Algorithm 2's W+ phase at its full length on targets with a
known answer, float32 against bf16 variants, seed by seed, beside a float32 control that changes
only the rounding. Issue 9 asks for a bf16 mode that "loses < 0.1 dB on the known-ground-truth
reconstruction"; this command measures it.

    python -m experiments.bf16_accuracy --out=runs/bf16_accuracy --seeds=0,1,2

Variants (--variants, in this order in the table):
  float32           the reference.
  float32_rounding  float32 with the last block's up-sampling in its other form (`polyphase_last` where
                    the reference traces `transposed`, and the reverse on a GPU): the same function,
                    other rounding. Its spread is how far rounding alone moves the end PSNR.
  bfloat16          the bf16 mode with its float32 tail alone: G's and VGG's convolutions in bf16, the
                    last 10% of the iterations (--tail) in float32.
  bfloat16_head     the same, with the first 10% (--head) in float32 too.
  bfloat16_vgg32    G in bf16, VGG16 in float32, the same tail.
  bfloat16_switch   the bf16 mode until an image of the batch reaches --switch_db dB of PSNR, float32
                    from there (`Phase.float32_above_db`), the same tail.
  bfloat16_auto     the same switch at `driver.AUTO_MARGIN_DB` (10 dB) under the bf16 rounding floor of
                    the batch's initial variables (`driver.bf16_floor_db`: 45-46 dB on the demo), the
                    same tail.
  bfloat16_head_auto  bfloat16_auto with bfloat16_head's float32 head: the bf16 mode as
                    `embed(compute_dtype="bfloat16")` runs it by default.

Each seed S has its own initialisation (seed S) and its own hidden latent (truth seed 123 + S), the same
in every variant. On the demo generator a real held-out photograph is embedded beside the rendered
target (one vmapped batch of two, as `experiments.reconstruct` runs it). The W+ phase is
reconstruct's, bit for bit: `reconstruct --noise_steps=0 --seed=S --truth_seed=123+S` ends where
the float32 row does.

Each run checkpoints into OUT/runs/VARIANT_sS/ and writes its result.json there; the same command
resumes, skips finished runs, and may add seeds or variants. OUT holding runs of other settings is
refused (--fresh moves it aside); the generator and VGG16 are read before OUT is touched. It prints the
table of every finished run in OUT (this command's and earlier ones') and writes it to OUT/summary.json.
A StyleGAN (v1) generator runs every variant but float32_rounding (it has one up-sampling form).
"""

import dataclasses
import functools
import json
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from experiments import benchmark, cli
from experiments.presets import hidden_target
from i2spp_jax import checkpoint, embed, metrics, networks
from i2spp_jax.engine import driver
from i2spp_jax.engine.phases import in_compute_dtype

VARIANTS = ("float32", "float32_rounding", "bfloat16", "bfloat16_head", "bfloat16_vgg32", "bfloat16_switch",
            "bfloat16_auto", "bfloat16_head_auto")
TRUTH_SEED_BASE = 123


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every run of one OUT shares (seeds and variants may grow between invocations)."""

    generator: str = "demo"
    w_steps: int = 5000  # Algorithm 2's W+ iterations
    percept: float = 1e-5  # λ_p
    resize_to: int = 64  # VGG input size (the demo preset's)
    head: float = 0.1  # bfloat16_head: the fraction of iterations, at the start, in float32
    tail: float = 0.1  # every bf16 variant: the fraction of iterations, at the end, in float32
    # The float32 products' precision (jax.default_matmul_precision): "default" is TF32 on an NVIDIA
    # GPU (what users run), "highest" full float32. The same on the CPU.
    precision: str = "default"
    switch_db: float = 36.0  # bfloat16_switch: float32 once an image reaches this PSNR
    torgb_method: str = "auto"  # the generator's ToRGB layers in every variant (networks.TORGB_METHODS)


def phase_for(variant: str, s: Settings, floor_db: Optional[float] = None) -> embed.Phase:
    """The W+ phase of Algorithm 2 (Adam lr 0.01, MSE + λ_p perceptual) as `variant` runs it
    (bfloat16_auto: with `floor_db`, the batch's `driver.bf16_floor_db`)."""
    w = embed.schedule("w_then_noise", s.w_steps, 0, percept=s.percept, resize_to=s.resize_to)[0]
    if variant.startswith("float32"):
        return w
    low = functools.partial(in_compute_dtype, w, "bfloat16", tail=s.tail)
    auto = None if floor_db is None else floor_db - driver.AUTO_MARGIN_DB
    if variant == "bfloat16":
        return low()
    if variant == "bfloat16_head":
        return low(head=s.head)
    if variant == "bfloat16_vgg32":
        return dataclasses.replace(low(), vgg_dtype="float32")
    if variant == "bfloat16_switch":
        return low(above_db=s.switch_db)
    if variant == "bfloat16_auto":
        return low(above_db=auto)
    if variant == "bfloat16_head_auto":
        return low(head=s.head, above_db=auto)
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def generator_for(variant: str, G):
    """The reference generator, or for the rounding control its other up-sampling form."""
    if variant != "float32_rounding":
        return G
    other = "transposed" if networks.resolve_up_method(G.up_method) != "transposed" else "polyphase_last"
    return G.replace(up_method=other)


def targets(G, seed: int, generator: str) -> dict:
    """{"rendered": image of the hidden latent of truth seed 123 + seed, "real": the held-out photo (demo)}."""
    out = {"rendered": hidden_target(G, TRUTH_SEED_BASE + seed)[2]}
    if generator in checkpoint.GENERATOR_NAMES:
        out["real"] = jnp.asarray(cli.load_image(checkpoint.heldout_images()[0], G.config, lambda _: None))
    return out


def _bf16_iterations(phase, psnr) -> int:
    """How many of the phase's iterations ran in bf16 (with one iteration per dispatch, as on the CPU;
    on a GPU a switch waits for the end of its dispatch of up to 25)."""
    if phase.compute_dtype == "float32":
        return 0
    end = phase.num_steps - phase.float32_steps
    if phase.float32_above_db is not None:
        over = np.flatnonzero(psnr.max(axis=1) >= phase.float32_above_db)
        end = min(end, max(int(over[0]) + 1, phase.float32_head_steps) if over.size else end)
    return max(0, end - phase.float32_head_steps)


def run_one(out: str, variant: str, seed: int, s: Settings, G, vgg, log) -> dict:
    """One variant at one seed; its result.json (resumed from its checkpoints; read back if done)."""
    d = os.path.join(out, "runs", f"{variant}_s{seed}")
    path = os.path.join(d, "result.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    os.makedirs(d, exist_ok=True)
    G_run = generator_for(variant, G)
    ts = targets(G, seed, s.generator)
    stack = jnp.stack(list(ts.values()))
    init = embed.initial_variables(G, len(ts), w_init="w_avg", noise_init="normal", seed=seed)
    phase = phase_for(variant, s, driver.bf16_floor_db(G, init) if variant.endswith("_auto") else None)
    t0 = time.perf_counter()
    result = embed.embed(G_run, stack, phases=(phase,), init_vars=init, vgg=vgg, seed=seed, log=None,
                         log_every=0, checkpoint_dir=os.path.join(d, "ckpt"), checkpoint_every=1000)
    seconds = time.perf_counter() - t0
    # Judged on the reference generator, as reconstruct judges every run.
    imgs, _ = embed.evaluate(result.vars, G, stack)
    psnr = np.asarray(metrics.psnr(jnp.clip(imgs, -1, 1), stack))
    every = 500
    curve = result.history["psnr"][every::every]  # [., B]: after every-th, 2*every-th, ... update
    v2 = G_run.generation != 1  # a StyleGAN (v1) generator has one up-sampling and one ToRGB form: null
    res = {"variant": variant, "seed": seed, "truth_seed": TRUTH_SEED_BASE + seed,
           "phase": embed.phase_key(phase), "up_method": networks.resolve_up_method(G_run.up_method) if v2 else None,
           # the form the variant's bf16 iterations ran (its float32 ones: resolve_torgb_method(G_run.torgb_method))
           "torgb_method": networks.resolve_torgb_method(G_run.torgb_method, phase.compute_dtype) if v2 else None,
           "psnr": {name: float(psnr[b]) for b, name in enumerate(ts)},
           "bf16_iterations": _bf16_iterations(phase, result.history["psnr"]),
           f"psnr_every_{every}": {name: [float(v) for v in curve[:, b]] for b, name in enumerate(ts)},
           "seconds": seconds}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, path)
    log(f"{variant} seed {seed}: " + ", ".join(f"{k} {v:.2f} dB" for k, v in res["psnr"].items())
        + f" ({res['bf16_iterations']} of {phase.num_steps} iterations in bf16; {seconds:.0f} s)")
    return res


def table(results: dict, variants, seeds) -> tuple[str, dict]:
    """Markdown rows (seed x target, a column per variant: dB and the difference to float32) and
    the summary {target: {variant: {"mean_delta", "worst_delta", "deltas"}}}."""
    names = sorted({n for r in results.values() for n in r["psnr"]}, key=lambda n: n != "rendered")
    rows = ["| seed | target | " + " | ".join(variants) + " |", "|" + " --- |" * (len(variants) + 2)]
    summary = {n: {v: [] for v in variants if v != "float32"} for n in names}
    for seed in seeds:
        for n in names:
            ref = results[("float32", seed)]["psnr"][n]
            cells = []
            for v in variants:
                if (v, seed) not in results:  # a variant another command ran at other seeds
                    cells.append("–")
                    continue
                p = results[(v, seed)]["psnr"][n]
                if v == "float32":
                    cells.append(f"{p:.2f}")
                else:
                    summary[n][v].append(p - ref)
                    cells.append(f"{p:.2f} ({p - ref:+.2f})")
            rows.append(f"| {seed} | {n} | " + " | ".join(cells) + " |")
    out = {n: {v: {"deltas": d, "mean_delta": float(np.mean(d)), "worst_delta": float(np.min(d))}
               for v, d in per.items() if d} for n, per in summary.items()}
    for n in names:
        rows.append(f"| mean / worst | {n} | – | " + " | ".join(
            f"{out[n][v]['mean_delta']:+.2f} / {out[n][v]['worst_delta']:+.2f}" if v in out[n] else "–"
            for v in variants if v != "float32") + " |")
    return "\n".join(rows), out


def load_generator(s: Settings, variants, log=cli.log):
    """(the generator of every variant, the variants it can run). A StyleGAN (v1) generator has one
    ToRGB form and one up-sampling form: --torgb_method other than auto or conv is refused (cli.UserError),
    and the float32_rounding control (another up-sampling form) is left out with a note."""
    G = cli.load_generator(s.generator)
    if G.generation != 1:
        return G.replace(torgb_method=s.torgb_method), variants
    if s.torgb_method not in ("auto", "conv"):
        raise cli.UserError(f"--torgb_method={s.torgb_method}: {s.generator} is a StyleGAN (v1) generator, whose "
                            "ToRGB layer has one form; drop --torgb_method")
    if "float32_rounding" in variants:
        log("float32_rounding left out: a StyleGAN (v1) generator has one up-sampling form, so the rounding "
            "control has no other form to run")
    return G, [v for v in variants if v != "float32_rounding"]


def finished_runs(out: str) -> dict:
    """{(variant, seed): result} of every run in out/runs that finished (its result.json written)."""
    results = {}
    runs = os.path.join(out, "runs")
    for name in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
        path = os.path.join(runs, name, "result.json")
        if os.path.exists(path):
            with open(path) as f:
                r = json.load(f)
            results[(r["variant"], r["seed"])] = r
    return results


def sweep(out: str, s: Settings, seeds, variants, vgg: str = "imagenet", *, fresh: bool = False,
          log=cli.log) -> tuple[str, dict]:
    """Runs (or resumes) every variant at every seed into `out`; returns the table and the summary of
    every finished run in `out` (this call's and earlier ones', also written to out/summary.json).
    float32 always runs: every other variant is read against it. The generator and VGG16 are read
    before `out` is touched; an `out` holding runs of other settings is refused (cli.UserError), or
    with `fresh` moved aside."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise cli.UserError(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if s.head + s.tail > 1:
        raise cli.UserError(f"--head={s.head} and --tail={s.tail} add up to more than 1; lower one")
    benchmark.check_out(out)
    G, variants = load_generator(s, ["float32"] + [v for v in VARIANTS if v in variants and v != "float32"], log)
    vgg_tree, _ = benchmark.load_vgg(vgg)
    settings = dataclasses.asdict(s) | {"vgg": vgg}
    # "auto" is recorded as "conv" where it means conv for every variant (off a GPU), so that an earlier
    # sweep's folder (made when conv was the default) is resumed there, and refused on a GPU
    if s.torgb_method == "auto" and networks.resolve_torgb_method("auto", "bfloat16") == "conv":
        settings["torgb_method"] = "conv"
    # settings added later, left out at their defaults: an earlier sweep's folder keeps its settings
    for name, before in (("precision", "default"), ("switch_db", 36.0), ("torgb_method", "conv")):
        if settings[name] == before:
            settings.pop(name)
    cli.prepare_out(out, {"settings": settings}, fresh=fresh, log=log)
    with jax.default_matmul_precision(s.precision):
        for seed in seeds:
            for v in variants:
                run_one(out, v, seed, s, G, vgg_tree, log)
    results = finished_runs(out)
    all_seeds = sorted({seed for v, seed in results if ("float32", seed) in results})
    all_variants = [v for v in VARIANTS if any(v == rv for rv, _ in results)]
    text, summary = table(results, all_variants, all_seeds)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"settings": dataclasses.asdict(s), "seeds": all_seeds, "variants": all_variants,
                   "summary": summary,
                   "machine": f"{jax.devices()[0].device_kind} ({jax.default_backend()}, {os.cpu_count()} cores)",
                   "runs": [results[(v, seed)] for seed in all_seeds for v in all_variants if (v, seed) in results]},
                  f, indent=1)
    return (f"W+ phase, {s.w_steps} iterations, PSNR in dB after it (difference to float32), every finished run "
            f"in {out}:\n{text}"), summary


FLAGS = flags.FLAGS


def define_flags() -> None:
    d = Settings()
    flags.DEFINE_string("out", "runs/bf16_accuracy", "output folder (resumes; refuses other settings)")
    flags.DEFINE_string("generator", d.generator, "'demo', a converted checkpoint dir, or a source .pkl/.pt")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds: each its own initialisation and hidden latent (123 + seed)")
    flags.DEFINE_list("variants", list(VARIANTS), f"from {', '.join(VARIANTS)}; float32 is always run")
    flags.DEFINE_integer("w_steps", d.w_steps, "W+ iterations (Algorithm 2: 5000)", lower_bound=1)
    flags.DEFINE_float("percept", d.percept, "λ_p of the W+ phase", lower_bound=0.0)
    flags.DEFINE_integer("resize_to", d.resize_to, "VGG input size", lower_bound=16)
    flags.DEFINE_float("head", d.head, "bfloat16_head: the float32 fraction at the start", lower_bound=0, upper_bound=0.9)
    flags.DEFINE_float("tail", d.tail, "bf16 variants: the float32 fraction at the end", lower_bound=0, upper_bound=0.9)
    flags.DEFINE_string("vgg", "imagenet", "'imagenet', 'random', or VGG16 weights (e.g. a vgg16_trunk.npz)")
    flags.DEFINE_float("switch_db", d.switch_db, "bfloat16_switch: float32 once an image reaches this PSNR (dB)")
    flags.register_validator("percept", np.isfinite, "--percept must be a finite number")
    flags.register_validator("switch_db", np.isfinite, "--switch_db must be a finite number")
    flags.DEFINE_enum("precision", d.precision, ["default", "highest"], "float32 products: default (TF32 on an "
                      "NVIDIA GPU) or highest (full float32)")
    flags.DEFINE_enum("torgb_method", d.torgb_method, list(networks.TORGB_METHODS),
                      "the generator's ToRGB layers in every variant (Generator.torgb_method)")
    flags.DEFINE_bool("fresh", False, "move an existing --out aside to OUT.old-<time> (nothing is deleted) "
                      "and start over; without it the same command resumes, and other settings are refused")


def main(argv):
    del argv
    try:
        seeds = [int(x) for x in FLAGS.seeds]
    except ValueError:
        seeds = [-1]
    if not seeds or min(seeds) < 0:
        raise cli.UserError(f"--seeds={','.join(FLAGS.seeds)}: give whole numbers >= 0, comma-separated")
    s = Settings(generator=FLAGS.generator, w_steps=FLAGS.w_steps, percept=FLAGS.percept,
                 resize_to=FLAGS.resize_to, head=FLAGS.head, tail=FLAGS.tail, precision=FLAGS.precision,
                 switch_db=FLAGS.switch_db, torgb_method=FLAGS.torgb_method)
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    text, _ = sweep(FLAGS.out, s, seeds, FLAGS.variants, FLAGS.vgg, fresh=FLAGS.fresh)
    print(text)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
