"""The shared body of the application commands (crossover, inpaint, scribble, style_transfer,
feature_transfer): flags, inputs checked first, the run folder, outputs, grid.png and metrics.json.

Each command is an `Edit`: its name, presets, its own flags, how it reads a user's inputs, the
demo's inputs (rendered by the generator from hidden latents, so every region has a true answer),
the call of its library function, its measurements and its grid. `main(edit)` does the rest:

    out/run.json, timing.json   the run (cli.prepare_out: another run's folder is refused; --fresh)
    out/inputs/*.png            every input image and mask (masks white = 1)
    out/outputs/*.png           every output image (one per batch entry)
    out/outputs/*.npy           the final W+ (and the fillings' / edits' variables)
    out/grid.png                inputs, masks, outputs, truths, with their numbers
    out/metrics.json            settings, measurements, timing (kept across resumes)
    out/ckpt/                   orbax checkpoints: the same command resumes
"""

import dataclasses
import json
import math
import os
import shutil
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from experiments import cli, presets
from i2spp_jax import io, metrics, plots
from i2spp_jax import masks as mask_ops

FLAGS = flags.FLAGS


@dataclasses.dataclass
class Inputs:
    """One run's inputs: named images [H, W, C] in [-1, 1] and masks [H, W] in [0, 1]."""

    images: dict  # name -> image
    masks: dict  # name -> mask
    truth: dict = dataclasses.field(default_factory=dict)  # name -> the true answer where one exists
    source: str = ""  # what they are, for metrics.json
    latents: dict = dataclasses.field(default_factory=dict)  # demo: the hidden variables, {name: vars}


@dataclasses.dataclass
class Edit:
    """What one application command adds to the shared body."""

    name: str  # e.g. "inpaint"
    doc: str  # one line for logs
    presets: dict  # {"demo"|"paper"|"smoke": {setting: value}}: step counts and the like
    image_flags: tuple  # flags that name image files, in order (e.g. ("image",))
    mask_flags: tuple  # flags that name masks (a file or a masks.from_spec string)
    demo: Callable  # (G, settings) -> Inputs, rendered from hidden latents
    call: Callable  # (G, inputs, vgg, settings, run_options) -> AppResult
    measure: Callable  # (G, inputs, result, vgg, settings) -> dict of numbers
    grid: Callable  # (inputs, result, measured) -> (rows, titles, row labels)
    extra_flags: Callable = lambda: None  # defines the command's own flags
    settings: Callable = lambda: {}  # the command's own flags' values
    check: Callable = lambda G, settings: None  # refuses settings this generator cannot take (cli.UserError)


def define_flags(edit: Edit) -> None:
    flags.DEFINE_string("generator", "demo", "'demo', a converted checkpoint dir, or a source .pkl/.pt")
    flags.DEFINE_string("out", f"runs/{edit.name}", "output directory (one run per folder; the same command resumes)")
    flags.DEFINE_bool("fresh", False, "move an existing --out aside (OUT.old-<time>) and start over")
    flags.DEFINE_bool("paper", False, "the paper's settings (iterations; VGG at 256)")
    flags.DEFINE_bool("smoke", False, "a seconds-long run: a few iterations, random-weight VGG (tests)")
    flags.DEFINE_string("vgg", "imagenet", "'imagenet' (load_vgg16), 'random' (tests), or a VGG16 weights path")
    flags.DEFINE_integer("resize_to", None, "VGG input size (default: 256 paper, 64 demo generator)",
                         lower_bound=presets.MIN_RESIZE_TO)
    flags.DEFINE_integer("seed", 0, "seed of the optimisation's random draws")
    flags.DEFINE_integer("truth_seed", 100, "demo: seed of the hidden latents")
    flags.DEFINE_integer("log_every", 100, "progress line every this many iterations")
    flags.DEFINE_integer("checkpoint_every", 500, "orbax checkpoint interval (iterations)")
    for f in edit.image_flags:
        flags.DEFINE_string(f, None, f"--{f}: an image file (default: the demo's, rendered from a hidden latent)")
    for f in edit.mask_flags:
        flags.DEFINE_string(f, None, f"--{f}: a mask image (white = 1) or {' | '.join(mask_ops.SPEC_FORMS[:3])}")
    edit.extra_flags()


def preset_name() -> str:
    if FLAGS.paper and FLAGS.smoke:
        raise cli.UserError("--paper and --smoke exclude each other: give one")
    return "paper" if FLAGS.paper else "smoke" if FLAGS.smoke else (
        "demo" if FLAGS.generator in ("demo", "demo-random") else "paper")


def _read_mask(flag: str, value: str, resolution: int) -> np.ndarray:
    with cli.user_input(f"--{flag}={value}", "give a black-and-white mask image or e.g. rect:0.25,0.25,0.5,0.5"):
        return np.asarray(mask_ops.from_spec(value, resolution), np.float32)


def read_user_inputs(edit: Edit, config) -> Optional[dict]:
    """Reads and checks the user's files before the generator is built; None when there are none (demo)."""
    given = [f for f in edit.image_flags + edit.mask_flags if getattr(FLAGS, f)]
    if not given:
        return None
    missing = [f for f in edit.image_flags + edit.mask_flags if not getattr(FLAGS, f)]
    if missing:
        raise cli.UserError(f"{edit.name} needs " + ", ".join(f"--{f}" for f in missing) + " too (or no input "
                            "flags at all for the demo)")
    out = {}
    for f in edit.image_flags:
        out[f] = cli.load_image(getattr(FLAGS, f), config)
    _check_mask_shapes(edit)
    for f in edit.mask_flags:
        v = getattr(FLAGS, f)
        if config is not None:
            out[f] = _read_mask(f, v, config.img_resolution)
        else:  # a source file: the size is known later; check now that the mask can be read at all
            _read_mask(f, v, 64)
            out[f] = None
    return out


def _file_size(path: str) -> Optional[tuple[int, int]]:
    try:
        return io.image_size(path)
    except (io.ImageError, OSError):  # unreadable: the image or mask reader names the cause
        return None


def _check_mask_shapes(edit: Edit) -> None:
    """A mask file is drawn on the image it goes with: it is cropped and resized exactly as the image
    is, so another aspect ratio (a mask of another picture, or turned) is refused, and another size said."""
    image = getattr(FLAGS, edit.image_flags[0])
    image_size = _file_size(image)
    for f in edit.mask_flags:
        v = getattr(FLAGS, f)
        size = _file_size(v) if os.path.isfile(v) else None
        if image_size is None or size is None or size == image_size:
            continue
        (w, h), (W, H) = size, image_size
        if abs(w / h - W / H) > 0.02 * W / H:
            raise cli.UserError(f"--{f}={v} is {w}x{h} but --{edit.image_flags[0]}={image} is {W}x{H}: another "
                                "aspect ratio; draw the mask on (a copy of) the image, or give a shape such as "
                                "rect:0.25,0.25,0.5,0.5")
        cli.log(f"--{f}={v}: {w}x{h}, scaled as --{edit.image_flags[0]} ({W}x{H}) is")


def _user_inputs(edit: Edit, G, read: dict) -> Inputs:
    images, masks = {}, {}
    for f in edit.image_flags:
        images[f] = read[f] if read[f] is not None else cli.load_image(getattr(FLAGS, f), G.config)
    for f in edit.mask_flags:
        masks[f] = read[f] if read[f] is not None else _read_mask(f, getattr(FLAGS, f), G.img_resolution)
    return Inputs(images, masks, source="the user's files: " + ", ".join(
        f"--{f}={getattr(FLAGS, f)}" for f in edit.image_flags + edit.mask_flags))


def hidden_vars(G, seed: int) -> dict:
    """The demo's hidden variables: ws from z ~ N(0, I) (seed), noise ~ N(0, I) (seed + 1), batched [1, ...]."""
    z = jax.random.normal(jax.random.PRNGKey(seed), (1, G.z_dim))
    return {"w_plus": G.mapping(z), "noise": [n[None] for n in G.make_noise(jax.random.PRNGKey(seed + 1))]}


def hidden_render(G, seed: int) -> np.ndarray:
    """The generator's own image from `hidden_vars(G, seed)`: [H, W, C] in [-1, 1]."""
    v = hidden_vars(G, seed)
    return np.clip(np.asarray(G.synthesis(v["w_plus"], noise=v["noise"])[0]), -1, 1)



def as_image(mask: np.ndarray) -> np.ndarray:
    """A mask [H, W] in [0, 1] as an RGB image in [-1, 1] (white = 1)."""
    m = np.asarray(mask, np.float32)
    return np.repeat(m[..., None] * 2 - 1, 3, axis=-1)


def region_psnr(a, b, mask) -> float:
    """PSNR (dB) of [H, W, C] images in [-1, 1] over the pixels where mask [H, W] > 0.5 (NaN for a
    region with no pixel; metrics.json then holds null)."""
    m = (np.asarray(mask) > 0.5).astype(np.float32)[None, :, :, None]
    return float(metrics.psnr(jnp.clip(jnp.asarray(a)[None], -1, 1), jnp.clip(jnp.asarray(b)[None], -1, 1),
                              mask=m)[0])


def main(edit: Edit) -> None:
    """Runs `edit` from the flags: inputs, generator, run folder, the application, the outputs."""
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint at INFO
    preset = preset_name()
    settings = dict(edit.presets[preset])
    settings.update({k: v for k, v in edit.settings().items() if v is not None})
    config = cli.generator_config(FLAGS.generator)
    read = read_user_inputs(edit, config)  # before anything slow
    G = cli.load_generator(FLAGS.generator)
    edit.check(G, settings)  # before the run folder is made
    # VGG's input side: the paper's 256; the demo's 32x32 images at 64 (conv3_3 at 16x16); smoke runs
    # at the generator's own resolution.
    settings["resize_to"] = FLAGS.resize_to or {"paper": 256, "smoke": G.img_resolution}.get(
        preset, 64 if G.img_resolution < 64 else 256)
    settings["seed"] = FLAGS.seed
    if read is None:
        settings["truth_seed"] = FLAGS.truth_seed
        inputs = edit.demo(G, settings)
    else:
        inputs = _user_inputs(edit, G, read)
    vgg_name = "random" if FLAGS.smoke and FLAGS.vgg == "imagenet" else FLAGS.vgg
    fingerprint = {"command": edit.name, "preset": preset, "generator": FLAGS.generator, "vgg": vgg_name,
                   "settings": settings, "generator_digest": cli.generator_digest(G)}
    resuming = cli.prepare_out(FLAGS.out, fingerprint, fresh=FLAGS.fresh, lock=True,
                               arrays={"images": inputs.images, "masks": inputs.masks})
    if resuming and cli.is_finished(FLAGS.out):
        cli.log(f"{FLAGS.out} holds this run, finished: nothing to do (metrics.json and grid.png are there; "
                "--fresh starts over)")
        return
    cli.log(f"{edit.name}: {edit.doc}; generator {FLAGS.generator} ({G.img_resolution}x{G.img_resolution}, "
            f"{G.num_ws} W+ layers); preset {preset}: " + ", ".join(f"{k} {v}" for k, v in settings.items()))
    _write_inputs(FLAGS.out, inputs)
    vgg = cli.load_vgg(vgg_name)
    from i2spp_jax import apps

    run = apps.RunOptions(checkpoint_dir=os.path.join(os.path.abspath(FLAGS.out), "ckpt"),
                          checkpoint_every=FLAGS.checkpoint_every, log=cli.log,
                          log_every=5 if FLAGS.smoke else FLAGS.log_every)
    t0 = time.perf_counter()
    try:
        with cli.resumable(FLAGS.out), cli.user_input(f"{edit.name} inputs",
                                                      "check that the masks and images fit the generator"):
            result = edit.call(G, inputs, vgg, settings, run)
    except cli.UserError:
        if not resuming and not _computed_anything(FLAGS.out):
            # refused before any iteration (the application checks its inputs): the folder holds only what
            # this command wrote, so it goes, and the corrected command is a new run, not "another run"
            shutil.rmtree(FLAGS.out, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    iterations = sum(r.iterations_run for r in result.runs.values())
    timing = cli.record_session(FLAGS.out, iterations=iterations, seconds=seconds)
    measured = edit.measure(G, inputs, result, vgg, settings)
    _write_outputs(FLAGS.out, edit, G, inputs, result, measured, settings, preset, fingerprint, timing)
    cli.mark_finished(FLAGS.out)


def _computed_anything(out: str) -> bool:
    """Whether out/ckpt holds any file (a checkpoint of some iteration)."""
    return any(files for _, _, files in os.walk(os.path.join(out, "ckpt")))


def _write_inputs(out: str, inputs: Inputs) -> None:
    d = os.path.join(out, "inputs")
    os.makedirs(d, exist_ok=True)
    for name, img in inputs.images.items():
        io.save_image(os.path.join(d, f"{name}.png"), np.asarray(img))
    for name, m in inputs.masks.items():
        io.save_image(os.path.join(d, f"{name}.png"), as_image(m))
    for name, img in inputs.truth.items():
        io.save_image(os.path.join(d, f"truth_{name}.png"), np.asarray(img))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None  # strict JSON (a region with no pixel measures NaN)
    if isinstance(x, (np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    return x


def _write_outputs(out, edit, G, inputs, result, measured, settings, preset, fingerprint, timing) -> None:
    d = os.path.join(out, "outputs")
    os.makedirs(d, exist_ok=True)
    for name, imgs in result.images.items():
        for i, img in enumerate(np.asarray(imgs)):
            io.save_image(os.path.join(d, f"{name}_{i}.png" if len(imgs) > 1 else f"{name}.png"), img)
    for name, m in result.masks.items():
        m = np.asarray(m)
        io.save_image(os.path.join(d, f"mask_{name}.png"), as_image(m if m.ndim == 2 else m[0]))
    if result.vars:
        io.save_npy(os.path.join(d, "w_plus.npy"), np.asarray(result.vars["w_plus"]))
        io.save_noise(os.path.join(d, "noise"), [np.asarray(n) for n in result.vars["noise"]], G.noise_names)
    rows, titles, labels = edit.grid(inputs, result, measured)
    plots.image_grid(os.path.join(out, "grid.png"), rows, titles, labels)
    report = {"command": edit.name, "preset": preset, "inputs": inputs.source, "settings": settings,
              "app_settings": result.settings, "measured": measured, "timing": timing,
              "generator": {"name": fingerprint["generator"], "img_resolution": G.img_resolution,
                            "num_ws": G.num_ws}, "vgg": fingerprint["vgg"]}
    tmp = os.path.join(out, "metrics.tmp.json")
    with open(tmp, "w") as f:
        json.dump(_jsonable(report), f, indent=1, allow_nan=False)
    os.replace(tmp, os.path.join(out, "metrics.json"))
    for k, v in measured.items():
        if isinstance(v, (float, int)):
            cli.log(f"{k}: {v:.4g}" if math.isfinite(v) else f"{k}: n/a (no pixel in that region)")
    cli.log(f"done in {timing['seconds']:.0f} s of optimisation. Outputs in {out} (grid.png, metrics.json, "
            "inputs/, outputs/)")
