"""Image2StyleGAN++ Algorithm 2: improved reconstruction (W+ optimisation, then noise optimisation).

Commands (each a complete configuration):

    # The demo: the built-in 64x64 generator, a target rendered from a hidden latent and hidden
    # noise, PSNR against that true answer. W+ 600 + noise 600 iterations, VGG at 64x64.
    python -m experiments.reconstruct

    # Embed your own image (any size or mode: converted with a message, or refused clearly) into a
    # converted generator; the paper's settings (W+ 5000 + noise 3000, VGG at 256) are the default
    # for any generator but the demo.
    python -m experiments.reconstruct --image=face.png --generator=ckpt/ffhq1024 --out=runs/face

    # The paper's full settings on the demo generator.
    python -m experiments.reconstruct --paper

    # The ablation (paper Sec. on Alg. 2): the same target, other schedules.
    python -m experiments.reconstruct --schedule=w_only|joint|noise_then_w --out=runs/abl_...

    # A seconds-long smoke run (used by the tests): 10 + 10 iterations, random-weight VGG.
    python -m experiments.reconstruct --smoke --out=/tmp/smoke

Outputs in --out: target.png, w_result.png (after the W+ phase), wn_result.png (after W+ and noise),
diff.png (|result − target|, x4), grid.png, curves.png, metrics.json (settings, PSNR/SSIM per phase,
times), history.npz (every iteration's loss terms and PSNR), w_plus.npy, w_plus_phase*.npy,
noise/noise_*.npy, truth_* (demo only), ckpt/ (orbax; a rerun with the same settings resumes).
"""

import dataclasses
import json
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

import i2spp_jax
from i2spp_jax import embed, io, plots


@dataclasses.dataclass(frozen=True)
class ReconstructConfig:
    """One reconstruction run. None fields take the preset's value (demo / paper / smoke)."""

    generator: str = "demo"  # "demo", a converted checkpoint dir, or a source .pkl/.pt
    image: Optional[str] = None  # the image to embed; None = render a target from a hidden latent
    out: str = "runs/reconstruct"  # output directory
    preset: Optional[str] = None  # "demo", "paper" or "smoke"; None = demo for the demo generator, else paper
    schedule: str = "w_then_noise"  # see embed.SCHEDULES
    w_steps: Optional[int] = None  # W+ iterations (paper: 5000)
    noise_steps: Optional[int] = None  # noise iterations (paper: 3000)
    w_lr: float = 0.01  # Adam lr for W+ (paper: 0.01; SGD: 0.8)
    w_optimizer: str = "adam"  # "adam" or "sgd"
    noise_lr: float = 5.0  # Adam lr for the noise maps (paper: 5)
    percept: float = 1e-5  # λ_p of the W+ phase (0 = MSE only)
    resize_to: Optional[int] = None  # VGG input size; None = preset (paper: 256, demo: own resolution)
    vgg: str = "imagenet"  # "imagenet" (load_vgg16), "random" (tests), or a weights path
    w_init: str = "w_avg"  # "w_avg", "uniform", "uniform_0.4", or a .npy path
    noise_init: str = "normal"  # "normal" (N(0, I)) or "const" (the generator's stored maps)
    seed: int = 0  # seed of every random draw of the optimisation (init)
    truth_seed: int = 123  # demo: seed of the hidden latent and noise
    truth_psi: float = 1.0  # demo: truncation of the hidden latent
    log_every: int = 100  # progress line every this many iterations
    checkpoint_every: int = 500  # orbax checkpoint every this many iterations (0 = phase ends only)


PRESETS = {
    # name: (w_steps, noise_steps, resize_to (None = the generator's resolution))
    "demo": (600, 600, None),
    "paper": (5000, 3000, 256),
    "smoke": (10, 10, None),
}


def _resolve(cfg: ReconstructConfig, G) -> tuple[str, int, int, Optional[int]]:
    preset = cfg.preset or ("demo" if cfg.generator == "demo" else "paper")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    w, n, r = PRESETS[preset]
    w = w if cfg.w_steps is None else cfg.w_steps
    n = n if cfg.noise_steps is None else cfg.noise_steps
    r = cfg.resize_to if cfg.resize_to is not None else (r or G.img_resolution)
    return preset, w, n, r


def _load_vgg(name: str):
    from i2spp_jax import vgg

    if name == "random":
        return vgg.random_vgg16(jax.random.PRNGKey(0))
    return vgg.load_vgg16(None if name == "imagenet" else name)


def hidden_target(G, truth_seed: int, psi: float = 1.0):
    """The demo's true answer: ws from z ~ N(0, I) (seed), noise ~ N(0, I) (seed + 1), its image."""
    z = jax.random.normal(jax.random.PRNGKey(truth_seed), (1, G.z_dim))
    ws = G.mapping(z, truncation_psi=psi)
    noise = G.make_noise(jax.random.PRNGKey(truth_seed + 1))
    img = jnp.clip(G.synthesis(ws, noise=noise), -1, 1)
    return ws[0], noise, img[0]


def _quality(img, target):
    from i2spp_jax import metrics

    a, b = jnp.clip(jnp.asarray(img)[None], -1, 1), jnp.asarray(target)[None]
    return {"psnr": float(metrics.psnr(a, b)[0]), "ssim": float(metrics.ssim(a, b)[0])}


def reconstruct(cfg: ReconstructConfig, log=logging.info) -> dict:
    """Runs Algorithm 2 (or an ablation schedule) and writes every output into cfg.out.

    Returns the metrics dict also written to metrics.json.
    """
    os.makedirs(cfg.out, exist_ok=True)
    G = i2spp_jax.load_generator(cfg.generator)
    preset, w_steps, noise_steps, resize_to = _resolve(cfg, G)
    phases = embed.schedule(cfg.schedule, w_steps, noise_steps, w_lr=cfg.w_lr, w_optimizer=cfg.w_optimizer,
                            noise_lr=cfg.noise_lr, percept=cfg.percept, resize_to=resize_to)
    log(f"generator {cfg.generator}: {G.img_resolution}x{G.img_resolution}, {G.num_ws} ws x {G.w_dim}, "
        f"{len(G.noise_shapes)} noise maps; preset {preset}; schedule {cfg.schedule}: "
        + " -> ".join(f"{p.name} {p.num_steps}" for p in phases) + f"; VGG at {resize_to}")

    truth = None
    if cfg.image is None:
        ws_true, noise_true, target = hidden_target(G, cfg.truth_seed, cfg.truth_psi)
        truth = {"w_plus": ws_true, "noise": noise_true}
        io.save_npy(os.path.join(cfg.out, "truth_w_plus.npy"), ws_true)
        io.save_noise(os.path.join(cfg.out, "truth_noise"), noise_true, G.noise_names)
        log(f"target: rendered from a hidden latent (seed {cfg.truth_seed}, psi {cfg.truth_psi}) and hidden noise")
    else:
        target, notes = io.load_image(cfg.image, G.img_resolution, G.img_channels)
        for n in notes:
            log(f"{cfg.image}: {n}")
        target = jnp.asarray(target)
    io.save_image(os.path.join(cfg.out, "target.png"), np.asarray(target))

    w_init = cfg.w_init
    if w_init.endswith(".npy"):
        w_init = np.load(w_init)
    init = embed.initial_variables(G, 1, w_init=w_init, noise_init=cfg.noise_init, seed=cfg.seed)
    vgg = _load_vgg(cfg.vgg) if any(p.weights.percept or p.weights.style for p in phases) else None
    names = _phase_files(cfg.schedule, phases)

    def on_phase_end(i, vars):  # write each phase's result as soon as it exists
        img, _ = embed.evaluate(vars, G, target[None])
        io.save_image(os.path.join(cfg.out, names[i] + ".png"), np.asarray(img[0]))
        io.save_npy(os.path.join(cfg.out, f"w_plus_phase{i + 1}.npy"), vars["w_plus"][0])
        log(f"phase {i + 1} ({phases[i].name}) done: {_quality(img[0], target)}; wrote {names[i]}.png")

    t0 = time.perf_counter()
    try:
        result = embed.embed(G, target[None], phases=phases, init_vars=init, vgg=vgg, seed=cfg.seed,
                             log_every=cfg.log_every, log=log, checkpoint_dir=os.path.join(cfg.out, "ckpt"),
                             checkpoint_every=cfg.checkpoint_every, on_phase_end=on_phase_end)
    except embed.NonFiniteLossError as e:  # keep what was computed: finished phases are on disk already
        np.savez(os.path.join(cfg.out, "history_partial.npz"), **e.history)
        log(f"stopped: {e} The history so far is in {cfg.out}/history_partial.npz.")
        raise
    seconds = time.perf_counter() - t0
    return _write_outputs(cfg, G, phases, names, result, target, truth, preset, resize_to, seconds, log, init)


def _phase_files(schedule, phases):
    if schedule == "w_then_noise":
        return ["w_result", "wn_result"]
    return [f"phase{i + 1}_{p.name}" for i, p in enumerate(phases)]


def _write_outputs(cfg, G, phases, names, result, target, truth, preset, resize_to, seconds, log, init):
    out = cfg.out
    final = result.vars
    imgs = [np.asarray(embed.evaluate(v, G, target[None])[0][0]) for v in result.phase_vars]
    diff = io.difference_map(imgs[-1], np.asarray(target))
    io.save_image(os.path.join(out, "diff.png"), diff)
    io.save_npy(os.path.join(out, "w_plus.npy"), final["w_plus"][0])
    io.save_noise(os.path.join(out, "noise"), [m[0] for m in final["noise"]], G.noise_names)
    per_phase = [dict(phase=p.name, iterations=p.num_steps, **_quality(im, target)) for p, im in zip(phases, imgs)]
    captions = ["target"] + [f"{n}\n{q['psnr']:.2f} dB" for n, q in zip(names, per_phase)] + ["|diff| x4"]
    plots.image_grid(os.path.join(out, "grid.png"), [np.asarray(target)] + imgs + [diff], captions)
    plots.curves(os.path.join(out, "curves.png"), result.history, phase_names=[p.name for p in phases])
    tmp = os.path.join(out, "history.tmp.npz")
    np.savez(tmp, **result.history)
    os.replace(tmp, os.path.join(out, "history.npz"))
    metrics = {
        "config": dataclasses.asdict(cfg),
        "preset": preset,
        "phases": [dataclasses.asdict(p) | {"weights": dataclasses.asdict(p.weights)} for p in phases],
        "vgg_resolution": resize_to,
        "generator": {"img_resolution": G.img_resolution, "num_ws": G.num_ws, "w_dim": G.w_dim,
                      "noise_shapes": G.noise_shapes},
        "per_phase": per_phase,
        "final": per_phase[-1],
        # How much of the fit lives in the latent: the final W+ rendered with the *initial* noise.
        # High = an editable W+ (the paper's reason for W+ first); low = the image sits in the noise maps.
        "final_w_plus_with_initial_noise": _quality(
            embed.evaluate({"w_plus": final["w_plus"], "noise": init["noise"]}, G, target[None])[0][0], target),
        "seconds": seconds,
        "iterations_per_second": float(len(result.history["phase"]) / max(result.seconds, 1e-9)),
        "machine": f"{jax.default_backend()} ({os.cpu_count()} cores)",
    }
    if truth is not None:
        metrics["truth"] = {
            "w_plus_rmse_vs_hidden": float(jnp.sqrt(jnp.mean((final["w_plus"][0] - truth["w_plus"]) ** 2))),
            "target": "rendered from a hidden latent and hidden noise; PSNR is against the true answer",
        }
    tmp = os.path.join(out, "metrics.tmp.json")
    with open(tmp, "w") as f:
        json.dump(metrics, f, indent=1, default=lambda o: o if not isinstance(o, tuple) else list(o))
    os.replace(tmp, os.path.join(out, "metrics.json"))
    summary = "; ".join(f"{q['phase']}: PSNR {q['psnr']:.2f} dB, SSIM {q['ssim']:.4f}" for q in per_phase)
    log(f"done in {seconds:.0f}s. {summary}. Outputs in {out}")
    return metrics


# ----------------------------------------------------------------------------------------------
# Command line: parses flags, calls reconstruct().

FLAGS = flags.FLAGS
_D = ReconstructConfig()
flags.DEFINE_string("generator", _D.generator, "'demo', a converted checkpoint dir, or a source .pkl/.pt")
flags.DEFINE_string("image", None, "image to embed (default: a target rendered from a hidden latent)")
flags.DEFINE_string("out", _D.out, "output directory")
flags.DEFINE_bool("paper", False, "the paper's settings: W+ 5000 + noise 3000, VGG at 256")
flags.DEFINE_bool("smoke", False, "a seconds-long run: 10 + 10 iterations, random-weight VGG")
flags.DEFINE_enum("schedule", _D.schedule, list(embed.SCHEDULES), "phase order (the ablation)")
flags.DEFINE_integer("w_steps", None, "W+ iterations (overrides the preset)")
flags.DEFINE_integer("noise_steps", None, "noise iterations (overrides the preset)")
flags.DEFINE_float("w_lr", _D.w_lr, "learning rate for W+")
flags.DEFINE_enum("w_optimizer", _D.w_optimizer, ["adam", "sgd"], "optimiser for W+ (paper: Adam 0.01 or SGD 0.8)")
flags.DEFINE_float("noise_lr", _D.noise_lr, "Adam learning rate for the noise maps")
flags.DEFINE_float("percept", _D.percept, "λ_p of the W+ phase (0 = MSE only)")
flags.DEFINE_integer("resize_to", None, "VGG input resolution (default: 256 paper, own resolution demo)")
flags.DEFINE_string("vgg", _D.vgg, "'imagenet', 'random', or a VGG16 weights path")
flags.DEFINE_string("w_init", _D.w_init, "'w_avg', 'uniform', 'uniform_0.4', or a .npy embedding")
flags.DEFINE_enum("noise_init", _D.noise_init, ["normal", "const"], "initial noise maps")
flags.DEFINE_integer("seed", _D.seed, "seed of the initialisation")
flags.DEFINE_integer("truth_seed", _D.truth_seed, "demo: seed of the hidden latent and noise")
flags.DEFINE_integer("log_every", _D.log_every, "progress line every this many iterations")
flags.DEFINE_integer("checkpoint_every", _D.checkpoint_every, "orbax checkpoint interval (iterations)")


def main(argv):
    del argv
    if FLAGS.paper and FLAGS.smoke:
        raise app.UsageError("--paper and --smoke exclude each other")
    preset = "paper" if FLAGS.paper else "smoke" if FLAGS.smoke else None
    cfg = ReconstructConfig(
        generator=FLAGS.generator, image=FLAGS.image, out=FLAGS.out, preset=preset, schedule=FLAGS.schedule,
        w_steps=FLAGS.w_steps, noise_steps=FLAGS.noise_steps, w_lr=FLAGS.w_lr, w_optimizer=FLAGS.w_optimizer,
        noise_lr=FLAGS.noise_lr, percept=FLAGS.percept, resize_to=FLAGS.resize_to,
        vgg="random" if FLAGS.smoke and FLAGS.vgg == _D.vgg else FLAGS.vgg, w_init=FLAGS.w_init,
        noise_init=FLAGS.noise_init, seed=FLAGS.seed, truth_seed=FLAGS.truth_seed,
        log_every=FLAGS.log_every if not FLAGS.smoke else 5, checkpoint_every=FLAGS.checkpoint_every)
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    reconstruct(cfg, log=_print)


def _print(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


if __name__ == "__main__":
    app.run(main)
