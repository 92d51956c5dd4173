"""Image2StyleGAN++ Algorithm 2: improved reconstruction (W+ optimisation, then noise optimisation).

Commands (each a complete configuration):

    # The demo: the shipped generator (trained on Fashion-MNIST, 32x32) embeds two images at once:
    # one it rendered from a hidden latent and hidden noise (PSNR against that true answer), and a
    # real held-out photograph from the Fashion-MNIST test split. W+ 600 + noise 600 iterations.
    python -m experiments.reconstruct

    # Embed your own image(s) (any size or mode: converted with a message, or refused clearly) into
    # a converted generator; the paper's settings (W+ 5000 + noise 3000, VGG at 256) are the default
    # for any generator but the demo ones. Several comma-separated images run as one batch.
    python -m experiments.reconstruct --image=face.png --generator=ckpt/ffhq1024 --out=runs/face

    # The paper's full settings on the demo generator.
    python -m experiments.reconstruct --paper

    # The ablation (paper Sec. on Alg. 2): the same targets, other schedules.
    python -m experiments.reconstruct --schedule=w_only|joint|noise_then_w --out=runs/abl_...

    # A seconds-long smoke run (used by the tests): 10 + 10 iterations, random-weight VGG.
    python -m experiments.reconstruct --smoke --out=/tmp/smoke

Outputs in --out: grid.png (every target's row: target, each phase's result with its PSNR, the
difference map), curves.png (loss and PSNR per iteration, a line per target), metrics.json
(settings, PSNR/SSIM per target and phase, the optimisation's seconds summed over the sessions
that ran it), history.npz (every iteration's loss terms and PSNR), run.json (what makes the run: a
folder holding another run is refused; --fresh moves it aside to OUT.old-<time> and starts over),
timing.json (each session's iterations and seconds), ckpt/ (orbax; the same command resumes, and
on a finished run says so and rewrites nothing), and per target a folder NAME/ with target.png,
w_result.png (after the W+ phase), wn_result.png (after W+ and noise), diff.png (|result - target|
x4), w_plus.npy, w_plus_phase*.npy, noise/noise_*.npy, and truth_* for a rendered target.

Every input (images, --w_init, --vgg, the generator's config) is read and checked before the
generator is built: a mistake ends in one line (`error: ...`, exit status 2) within seconds.
"""

import dataclasses
import json
import os
import time
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from experiments import cli, presets
from experiments.presets import PRESETS, hidden_target  # noqa: F401 (re-exported)
from i2spp_jax import checkpoint, embed, io, plots
from i2spp_jax.generator import GeneratorConfig


@dataclasses.dataclass(frozen=True)
class ReconstructConfig:
    """One reconstruction run. None fields take the preset's value (demo / paper / smoke)."""

    generator: str = "demo"  # "demo", a converted checkpoint dir, or a source .pkl/.pt
    image: Optional[str] = None  # image(s) to embed, comma-separated; None = render a target from a hidden latent
    real_image: Optional[str] = "heldout"  # demo only: also embed this real image ("heldout" = shipped; None = no)
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
    compute_dtype: str = "float32"  # "bfloat16": G's and VGG's convolutions in bf16 (the GPU fast mode)
    float32_tail: float = 0.1  # bfloat16 only: the fraction of each phase, at its end, run in float32
    float32_head: float = 0.1  # bfloat16 only: the fraction of each phase, at its start, run in float32
    # bfloat16 only: float32 once an image reaches this PSNR (dB); "auto" = 10 dB under bf16's rounding
    # floor (embed's default); None = never
    float32_above_db: Union[str, float, None] = "auto"
    seed: int = 0  # seed of every random draw of the optimisation (init)
    truth_seed: int = 123  # demo: seed of the hidden latent and noise
    truth_psi: float = 1.0  # demo: truncation of the hidden latent
    log_every: int = 100  # progress line every this many iterations
    checkpoint_every: int = 500  # orbax checkpoint every this many iterations (0 = phase ends only)


def _resolve(cfg: ReconstructConfig, G) -> tuple[str, int, int, Optional[int]]:
    return presets.resolve(cfg.preset, cfg.generator, G.img_resolution, w_steps=cfg.w_steps,
                           noise_steps=cfg.noise_steps, resize_to=cfg.resize_to)



def _quality(img, target):
    from i2spp_jax import metrics

    a, b = jnp.clip(jnp.asarray(img)[None], -1, 1), jnp.asarray(target)[None]
    return {"psnr": float(metrics.psnr(a, b)[0]), "ssim": float(metrics.ssim(a, b)[0])}


@dataclasses.dataclass
class Target:
    """One image to embed: its name (the output subfolder), pixels, and the truth when known."""

    name: str
    image: jax.Array  # [H, W, C] in [-1, 1]
    source: str  # what it is, for metrics.json
    label: str  # what it is, in two short lines for grid.png
    truth: Optional[dict] = None  # {"w_plus", "noise"} for a rendered target


@dataclasses.dataclass
class _Inputs:
    """The user's inputs, read and checked before the generator or VGG is built."""

    config: Optional[GeneratorConfig]  # the generator's topology; None for a source file (known once parsed)
    images: dict  # path -> [R, R, C] in [-1, 1], or None until the generator's size is known
    real_image: Optional[str]  # demo: the real image embedded beside the rendered one
    w_init: Union[str, np.ndarray]  # a name of embed.W_INITS, or an embedding [num_ws, w_dim] / [B, ...]
    plan: Optional[tuple] = None  # (preset, phases, resize_to) when the config is known


def _plan(cfg: ReconstructConfig, G) -> tuple[str, tuple, int]:
    """(preset, phases, VGG resolution) for a generator (or its config)."""
    preset, w_steps, noise_steps, resize_to = _resolve(cfg, G)
    with cli.user_input(f"--schedule={cfg.schedule}"):
        phases = embed.schedule(cfg.schedule, w_steps, noise_steps, w_lr=cfg.w_lr, w_optimizer=cfg.w_optimizer,
                                noise_lr=cfg.noise_lr, percept=cfg.percept, resize_to=resize_to)
    return preset, phases, resize_to


def _read_inputs(cfg: ReconstructConfig, log) -> _Inputs:
    """Reads every input that the user names (images, --w_init, --vgg, the generator's config) and
    refuses a bad one in one line, in about a second: before anything slow is built."""
    config = cli.generator_config(cfg.generator)
    if cfg.image is not None and not cfg.image.strip():
        raise cli.UserError("--image is empty: give an image file (or several, comma-separated), or leave the flag "
                            "out for the demo")
    paths = cfg.image.split(",") if cfg.image else []
    images = {path: cli.load_image(path, config, log) for path in paths}
    real = None
    if not paths and cfg.generator == "demo" and cfg.real_image:
        shipped = cfg.real_image == "heldout"
        real = checkpoint.heldout_images()[0] if shipped else cfg.real_image
        images[real] = cli.load_image(real, config, (lambda _: None) if shipped else log)
    w_init = cfg.w_init
    if w_init.endswith(".npy"):
        n = len(paths) or 1 + (real is not None)
        shapes = None if config is None else [(config.num_ws, config.w_dim), (n, config.num_ws, config.w_dim)]
        w_init = cli.load_npy(w_init, f"--w_init={cfg.w_init}", shapes)
    elif w_init not in embed.W_INITS:
        raise cli.UserError(f"--w_init={w_init}: use one of {', '.join(embed.W_INITS)}, or a .npy embedding "
                            "(e.g. a run's NAME/w_plus.npy)")
    if cfg.vgg not in ("imagenet", "random") and not os.path.exists(cfg.vgg):
        raise FileNotFoundError(f"--vgg={cfg.vgg}: no such file or folder; give 'imagenet', 'random', or VGG16 "
                                "weights (.onnx, .pth, or a folder made by python -m converters.vgg16)")
    plan = _plan(cfg, config) if config is not None else None
    return _Inputs(config, images, real, w_init, plan)


# What a run writes into --out beside the targets' folders (a target is named by its file's stem)
RUN_FILES = {"ckpt", "grid.png", "curves.png", "metrics.json", "metrics.tmp.json", "history.npz", "history.tmp.npz",
             "history_partial.npz", cli.RUN_FILE, cli.RUN_FILE + ".tmp", cli.TIMING_FILE, cli.TIMING_FILE + ".tmp"}


def _targets(cfg: ReconstructConfig, G, inputs: _Inputs, log) -> list[Target]:
    """The images of this run: --image (one or several, comma-separated), else the hidden-latent
    render, plus, on the demo generator, a real held-out photograph."""

    def image(path, log=log):  # read before the generator, unless its size was unknown then
        img = inputs.images[path]
        return jnp.asarray(img if img is not None else cli.load_image(path, G.config, log))

    if cfg.image:
        out = []
        for path in cfg.image.split(","):
            name = os.path.splitext(os.path.basename(path))[0]
            if name.lower() in RUN_FILES or name.startswith("."):  # its folder would be one of the run's files
                log(f"{path}: its results go to {name}_image/ ({name} is a name the run uses itself)")
                name = f"{name}_image"
            if name in [t.name for t in out]:
                log(f"{path}: a second target named {name}: its results go to {name}_{len(out)}/")
                name = f"{name}_{len(out)}"
            out.append(Target(name, image(path), f"image {path}", f"your image\n{os.path.basename(path)}"))
        return out
    ws_true, noise_true, img = hidden_target(G, cfg.truth_seed, cfg.truth_psi)
    out = [Target("rendered", img, f"rendered from a hidden latent (seed {cfg.truth_seed}, psi {cfg.truth_psi}) "
                  "and hidden noise: PSNR is against the true answer", "rendered by G from a\nhidden latent (truth known)",
                  {"w_plus": ws_true, "noise": noise_true})]
    if inputs.real_image:
        path = inputs.real_image
        out.append(Target("real", image(path, lambda _: None),
                          f"real photograph {os.path.basename(path)} (Fashion-MNIST test split, never trained on)",
                          f"real photo, held out\n{os.path.splitext(os.path.basename(path))[0]}"))
    return out


def _run_fingerprint(cfg: ReconstructConfig, phases) -> dict:
    """The settings that make a run (the targets are added by content): a folder holding another
    run is refused, never mixed."""
    settings = presets.run_settings(cfg, exclude=("out", "log_every"))
    return {"settings": settings, "phases": [embed.phase_key(p) for p in phases]}


def _finished_metrics(out: str) -> Optional[dict]:
    """The metrics of a finished run in `out` (None if it has not finished). A run written before
    timing.json existed counts as finished when its metrics.json exists."""
    path = os.path.join(out, "metrics.json")
    legacy = not os.path.exists(os.path.join(out, cli.TIMING_FILE))
    if not os.path.exists(path) or not (legacy or cli.is_finished(out)):
        return None
    with open(path) as f:
        return json.load(f)


def reconstruct(cfg: ReconstructConfig, *, fresh: bool = False, log=logging.info) -> dict:
    """Runs Algorithm 2 (or an ablation schedule) on every target at once (one vmapped batch) and
    writes the outputs into cfg.out: one subfolder per target, and the shared figures.

    Every input is read and checked before the generator is built. cfg.out holding this run
    resumes it (a finished one is left as it is); holding another run is refused (cli.UserError),
    unless `fresh`: then the old folder is moved aside and a new run starts.

    Returns the metrics dict also written to metrics.json (a finished run's, as it was written).
    """
    inputs = _read_inputs(cfg, log)
    G = cli.load_generator(cfg.generator)
    preset, phases, resize_to = inputs.plan or _plan(cfg, G)
    targets = _targets(cfg, G, inputs, log)
    fingerprint = dict(_run_fingerprint(cfg, phases), generator_digest=cli.generator_digest(G))
    resuming = cli.prepare_out(cfg.out, fingerprint, fresh=fresh, log=log, lock=True,
                               arrays={"targets": {t.name: t.image for t in targets}}, derived=("phases",))
    done = _finished_metrics(cfg.out) if resuming else None
    if done is not None:
        log(f"{cfg.out} already holds this run, finished ({done['seconds']:.0f}s of optimisation); nothing "
            "rewritten (--fresh moves it aside and starts over)")
        return done
    log(f"generator {cfg.generator}: {G.img_resolution}x{G.img_resolution}, {G.num_ws} ws x {G.w_dim}, "
        f"{len(G.noise_shapes)} noise maps; preset {preset}; schedule {cfg.schedule}: "
        + " -> ".join(f"{p.name} {p.num_steps}" for p in phases) + f"; VGG at {resize_to}")
    for t in targets:
        d = os.path.join(cfg.out, t.name)
        os.makedirs(d, exist_ok=True)
        io.save_image(os.path.join(d, "target.png"), np.asarray(t.image))
        if t.truth is not None:
            io.save_npy(os.path.join(d, "truth_w_plus.npy"), t.truth["w_plus"])
            io.save_noise(os.path.join(d, "truth_noise"), t.truth["noise"], G.noise_names)
        log(f"target {t.name}: {t.source}")
    stack = jnp.stack([t.image for t in targets])

    with cli.user_input(f"--w_init={cfg.w_init}", "give an embedding made with this generator (NAME/w_plus.npy), "
                        "one per image or one for all"):
        init = embed.initial_variables(G, len(targets), w_init=inputs.w_init, noise_init=cfg.noise_init,
                                       seed=cfg.seed)
    vgg = None
    if any(p.weights.percept or p.weights.style for p in phases):
        with cli.user_input(f"--vgg={cfg.vgg}", "give 'imagenet', 'random', or VGG16 weights"):
            vgg = cli.load_vgg(cfg.vgg)
    names = _phase_files(cfg.schedule, phases)

    def on_phase_end(i, vars):  # write each phase's result as soon as it exists
        imgs, _ = embed.evaluate(vars, G, stack)
        for b, t in enumerate(targets):
            io.save_image(os.path.join(cfg.out, t.name, names[i] + ".png"), np.asarray(imgs[b]))
            io.save_npy(os.path.join(cfg.out, t.name, f"w_plus_phase{i + 1}.npy"), vars["w_plus"][b])
        log(f"phase {i + 1} ({phases[i].name}) done: " + "; ".join(
            f"{t.name} PSNR {_quality(imgs[b], t.image)['psnr']:.2f} dB" for b, t in enumerate(targets)))

    ran = []  # the iterations this session runs (a resumed run skips those done before)
    t0 = time.perf_counter()
    try:
        with cli.resumable(cfg.out):
            result = embed.embed(G, stack, phases=phases, init_vars=init, vgg=vgg, seed=cfg.seed,
                                 log_every=cfg.log_every, log=log, checkpoint_dir=os.path.join(cfg.out, "ckpt"),
                                 checkpoint_every=cfg.checkpoint_every, on_phase_end=on_phase_end,
                                 callback=lambda t, m: ran.append(t), compute_dtype=cfg.compute_dtype,
                                 float32_tail=cfg.float32_tail, float32_head=cfg.float32_head,
                                 float32_above_db=cfg.float32_above_db)
    except embed.NonFiniteLossError as e:  # keep what was computed: finished phases are on disk already
        np.savez(os.path.join(cfg.out, "history_partial.npz"), **e.history)
        raise FloatingPointError(f"{e} The history so far is in {cfg.out}/history_partial.npz.") from None
    timing = cli.record_session(cfg.out, iterations=len(ran), seconds=time.perf_counter() - t0)
    metrics = _write_outputs(cfg, G, phases, names, result, targets, preset, resize_to, timing, log, init)
    cli.mark_finished(cfg.out)
    return metrics


def _phase_files(schedule, phases):
    if schedule == "w_then_noise":
        return ["w_result", "wn_result"]
    return [f"phase{i + 1}_{p.name}" for i, p in enumerate(phases)]


_PHASE_LABELS = {"W_l": "W+ (noise fixed)", "Mk_n": "noise maps (W+ fixed)", "joint": "W+ and noise together"}
# Why the loss curve jumps at a phase change (printed beside the marker in curves.png).
_PHASE_NOTES = {
    ("W_l", "Mk_n"): "W+ -> noise: the loss changes from\nMSE + perceptual to MSE only, so it drops",
    ("Mk_n", "W_l"): "noise -> W+: the loss gains the\nperceptual term, so it rises",
}


def _write_outputs(cfg, G, phases, names, result, targets, preset, resize_to, timing, log, init):
    out = cfg.out
    stack = jnp.stack([t.image for t in targets])
    phase_imgs = [np.asarray(embed.evaluate(v, G, stack)[0]) for v in result.phase_vars]  # [P][B, H, W, C]
    final = result.vars
    w_only = np.asarray(embed.evaluate({"w_plus": final["w_plus"], "noise": init["noise"]}, G, stack)[0])
    per_target, rows, titles = {}, [], []
    for b, t in enumerate(targets):
        d = os.path.join(out, t.name)
        target = np.asarray(t.image)
        diff = io.difference_map(phase_imgs[-1][b], target)
        io.save_image(os.path.join(d, "diff.png"), diff)
        io.save_npy(os.path.join(d, "w_plus.npy"), final["w_plus"][b])
        io.save_noise(os.path.join(d, "noise"), [m[b] for m in final["noise"]], G.noise_names)
        per_phase = [dict(phase=p.name, iterations=p.num_steps, **_quality(im[b], target))
                     for p, im in zip(phases, phase_imgs)]
        entry = {"source": t.source, "per_phase": per_phase, "final": per_phase[-1],
                 # How much of the fit lives in the latent: the final W+ rendered with the *initial*
                 # noise. High = an editable W+; low = the image sits in the noise maps.
                 "final_w_plus_with_initial_noise": _quality(w_only[b], target)}
        if t.truth is not None:
            entry["truth"] = {
                "w_plus_rmse_vs_hidden": float(jnp.sqrt(jnp.mean((final["w_plus"][b] - t.truth["w_plus"]) ** 2))),
                "target": "rendered from a hidden latent and hidden noise; PSNR is against the true answer"}
        per_target[t.name] = entry
        row, row_titles = [target], ["target"]
        for p, q, im in zip(result.phases, per_phase, phase_imgs):  # each phase's result and its difference map
            row += [im[b], io.difference_map(im[b], target)]
            mode = " (bf16 mode)" if p.compute_dtype == "bfloat16" else ""
            row_titles += [f"after {_PHASE_LABELS.get(p.name, p.name)}\n{q['iterations']} it{mode}: {q['psnr']:.2f} dB",
                           "|that result - target| x4\n(black = equal)"]
        rows.append(row)
        titles.append(row_titles)
    labels = [t.label for t in targets]
    plots.image_grid(os.path.join(out, "grid.png"), rows, titles, labels)
    notes = [_PHASE_NOTES.get((a.name, b.name), f"{a.name} -> {b.name}") for a, b in zip(phases, phases[1:])]
    plots.curves(os.path.join(out, "curves.png"), result.history,
                 phase_names=[_PHASE_LABELS.get(p.name, p.name) for p in phases],
                 image_names=[t.name for t in targets], phase_notes=notes)
    tmp = os.path.join(out, "history.tmp.npz")
    np.savez(tmp, **result.history)
    os.replace(tmp, os.path.join(out, "history.npz"))
    metrics = {
        "config": dataclasses.asdict(cfg),
        "preset": preset,
        "phases": [dataclasses.asdict(p) | {"weights": dataclasses.asdict(p.weights)} for p in result.phases],
        "vgg_resolution": resize_to,
        "generator": {"img_resolution": G.img_resolution, "num_ws": G.num_ws, "w_dim": G.w_dim,
                      "noise_shapes": G.noise_shapes},
        "targets": per_target,
        # The optimisation's wall time (compiling included) summed over the sessions that ran it
        # (a resumed run's too); `timing` has each session. A finished run is never re-timed.
        "seconds": timing["seconds"],
        "iterations_per_second": timing["iterations_per_second"],
        "timing": dict(timing, iterations_total=int(len(result.history["phase"]))),
        "machine": f"{jax.default_backend()} ({os.cpu_count()} cores)",
    }
    tmp = os.path.join(out, "metrics.tmp.json")
    with open(tmp, "w") as f:
        json.dump(metrics, f, indent=1, default=lambda o: o if not isinstance(o, tuple) else list(o))
    os.replace(tmp, os.path.join(out, "metrics.json"))
    for name, e in per_target.items():
        summary = "; ".join(f"{q['phase']}: PSNR {q['psnr']:.2f} dB, SSIM {q['ssim']:.4f}" for q in e["per_phase"])
        log(f"{name}: {summary}")
    sessions = len(timing["sessions"])
    log(f"done: {timing['iterations']} iterations in {timing['seconds']:.0f}s of optimisation"
        + (f" over {sessions} sessions" if sessions > 1 else "")
        + f". Outputs in {out} (grid.png, curves.png, metrics.json, one folder per target)")
    return metrics


# ----------------------------------------------------------------------------------------------
# Command line: parses flags, calls reconstruct().

FLAGS = flags.FLAGS
_D = ReconstructConfig()
flags.DEFINE_string("generator", _D.generator, "'demo', a converted checkpoint dir, or a source .pkl/.pt")
flags.DEFINE_string("image", None, "image(s) to embed, comma-separated (default: a target rendered from a "
                    "hidden latent, and on the demo generator a real held-out image too)")
flags.DEFINE_string("out", _D.out, "output directory")
flags.DEFINE_string("real_image", _D.real_image, "demo generator: the real image embedded beside the rendered "
                    "one ('heldout' = the first shipped test image; empty = none)")
presets.define_flags(_D, schedule_help="phase order (the ablation)")
flags.DEFINE_string("w_init", _D.w_init, "'w_avg', 'uniform', 'uniform_0.4', or a .npy embedding")
flags.DEFINE_integer("seed", _D.seed, "seed of the initialisation")
flags.DEFINE_integer("truth_seed", _D.truth_seed, "demo: seed of the hidden latent and noise")
flags.DEFINE_integer("log_every", _D.log_every, "progress line every this many iterations", lower_bound=0)
flags.DEFINE_integer("checkpoint_every", _D.checkpoint_every, "orbax checkpoint interval (iterations)", lower_bound=0)
flags.DEFINE_bool("fresh", False, "if --out holds a run, move it aside to OUT.old-<time> (nothing is deleted) "
                  "and start over; without it the same command resumes, and other settings are refused")


def main(argv):
    del argv
    common = presets.from_flags(FLAGS, _D)
    cfg = ReconstructConfig(
        generator=FLAGS.generator, image=FLAGS.image, real_image=FLAGS.real_image or None, out=FLAGS.out,
        w_init=FLAGS.w_init, seed=FLAGS.seed, truth_seed=FLAGS.truth_seed,
        log_every=FLAGS.log_every if not FLAGS.smoke else 5, checkpoint_every=FLAGS.checkpoint_every, **common)
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    reconstruct(cfg, fresh=FLAGS.fresh, log=cli.log)


if __name__ == "__main__":
    cli.run(main)
