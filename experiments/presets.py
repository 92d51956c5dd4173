"""The embedding commands' presets (experiments.reconstruct, experiments.embed_folder): how many
iterations of each phase, and the resolution VGG sees, unless the flags say otherwise; and the
demo's target with a known answer (`hidden_target`)."""

import math
from typing import Optional

import jax
import jax.numpy as jnp

from i2spp_jax import checkpoint

PRESETS = {
    # name: (w_steps, noise_steps, resize_to (None = the generator's resolution))
    "demo": (600, 600, 64),  # VGG sees the 32x32 demo images upsampled 2x (conv3_3 at 16x16)
    "paper": (5000, 3000, 256),
    "smoke": (10, 10, None),
}


def resolve(preset: Optional[str], generator: str, resolution: int, *, w_steps: Optional[int] = None,
            noise_steps: Optional[int] = None, resize_to: Optional[int] = None) -> tuple[str, int, int, int]:
    """(preset, w_steps, noise_steps, VGG resolution): the preset's values where the flags give None.
    preset None = "demo" for the shipped generators, "paper" for any other."""
    preset = preset or ("demo" if generator in checkpoint.GENERATOR_NAMES else "paper")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    w, n, r = PRESETS[preset]
    w = w if w_steps is None else w_steps
    n = n if noise_steps is None else noise_steps
    r = resize_to if resize_to is not None else (r or resolution)
    return preset, w, n, r


# VGG16's conv3_3 (the deepest layer the losses read) sees the input at a quarter of its side.
MIN_RESIZE_TO = 16


def finite_floats(names) -> None:
    """Refuses nan / inf for these float flags (absl's bounds let nan through)."""
    import math

    from absl import flags

    for name in names:
        flags.register_validator(name, lambda v: v is None or math.isfinite(v), f"--{name} must be a finite number")


def define_flags(defaults, *, schedule_help: str = "phase order") -> None:
    """The flags of an embedding command that pick its preset and its phases (--paper, --smoke,
    --schedule, --w_steps, --noise_steps, --w_lr, --w_optimizer, --noise_lr, --percept,
    --resize_to, --vgg, --noise_init, --compute_dtype, --float32_tail, --float32_head, --float32_above_db), defaulting to `defaults` (the command's config)."""
    from absl import flags

    from i2spp_jax import embed

    flags.DEFINE_bool("paper", False, "the paper's settings: W+ 5000 + noise 3000, VGG at 256")
    flags.DEFINE_bool("smoke", False, "a seconds-long run: 10 + 10 iterations, random-weight VGG")
    flags.DEFINE_enum("schedule", defaults.schedule, list(embed.SCHEDULES), schedule_help)
    flags.DEFINE_integer("w_steps", None, "W+ iterations (overrides the preset)", lower_bound=0)
    flags.DEFINE_integer("noise_steps", None, "noise iterations (overrides the preset)", lower_bound=0)
    flags.DEFINE_float("w_lr", defaults.w_lr, "learning rate for W+", lower_bound=0.0)
    flags.DEFINE_enum("w_optimizer", defaults.w_optimizer, ["adam", "sgd"],
                      "optimiser for W+ (paper: Adam 0.01 or SGD 0.8)")
    flags.DEFINE_float("noise_lr", defaults.noise_lr, "Adam learning rate for the noise maps", lower_bound=0.0)
    flags.DEFINE_float("percept", defaults.percept, "λ_p of the W+ phase (0 = MSE only)", lower_bound=0.0)
    flags.DEFINE_integer("resize_to", None, "VGG input resolution (default: 256 paper, 64 on the demo generator)",
                         lower_bound=MIN_RESIZE_TO)
    flags.DEFINE_string("vgg", defaults.vgg, "'imagenet', 'random', or a VGG16 weights path")
    flags.DEFINE_enum("noise_init", defaults.noise_init, ["normal", "const"], "initial noise maps")
    flags.DEFINE_enum("compute_dtype", defaults.compute_dtype, ["float32", "bfloat16"],
                      "the convolutions' dtype in G and VGG: bfloat16 is the fast mode for GPUs (variables, "
                      "Adam and losses stay float32; results are rendered in float32)")
    flags.DEFINE_float("float32_tail", defaults.float32_tail, "with --compute_dtype=bfloat16: the fraction of each "
                       "phase's iterations, at its end, that runs in float32", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("float32_head", defaults.float32_head, "with --compute_dtype=bfloat16: the fraction of each "
                       "phase's iterations, at its start, that runs in float32 (with --float32_tail at most 1)", lower_bound=0.0,
                       upper_bound=1.0)
    finite_floats(["w_lr", "noise_lr", "percept", "float32_tail", "float32_head"])
    flags.DEFINE_string("float32_above_db", str(defaults.float32_above_db).lower(), "with --compute_dtype=bfloat16: "
                        "once an image reaches this PSNR (dB), the rest of the phase runs in float32, as bf16's "
                        "gradients stall near its rounding floor; auto = 10 dB under that floor; none = never")


def from_flags(FLAGS, defaults) -> dict:
    """The config fields that `define_flags` sets, from parsed flags (--smoke takes the random-weight
    VGG unless --vgg says otherwise). Refuses --paper with --smoke (cli.UserError)."""
    from experiments import cli

    if FLAGS.paper and FLAGS.smoke:
        raise cli.UserError("--paper and --smoke exclude each other: give one")
    if FLAGS.float32_head + FLAGS.float32_tail > 1:
        raise cli.UserError(f"--float32_head={FLAGS.float32_head} and --float32_tail={FLAGS.float32_tail} add up to "
                            "more than 1 (the fractions of each phase in float32 at its start and end): lower one")
    return dict(preset="paper" if FLAGS.paper else "smoke" if FLAGS.smoke else None, schedule=FLAGS.schedule,
                w_steps=FLAGS.w_steps, noise_steps=FLAGS.noise_steps, w_lr=FLAGS.w_lr, w_optimizer=FLAGS.w_optimizer,
                noise_lr=FLAGS.noise_lr, percept=FLAGS.percept, resize_to=FLAGS.resize_to,
                vgg="random" if FLAGS.smoke and FLAGS.vgg == defaults.vgg else FLAGS.vgg, noise_init=FLAGS.noise_init,
                compute_dtype=FLAGS.compute_dtype, float32_tail=FLAGS.float32_tail, float32_head=FLAGS.float32_head,
                float32_above_db=parse_above_db(FLAGS.float32_above_db))


def parse_above_db(text: str):
    """--float32_above_db: "auto", "none" (None) or a PSNR in dB (float); cli.UserError otherwise."""
    from experiments import cli

    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        raise cli.UserError(f"--float32_above_db={text}: give auto, none, or a PSNR in dB such as 36")
    return value


def run_settings(cfg, exclude=()) -> dict:
    """The config's fields that make a run (for run.json), less `exclude`. Settings added after run
    folders were first written are left out where they hold their old meaning (float32; no float32
    head; the float32 head and tail of a float32 run mean nothing), so that a folder of an earlier
    version resumes."""
    import dataclasses

    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in exclude}
    if settings.get("compute_dtype") == "float32":
        settings.pop("compute_dtype")
        settings.pop("float32_tail", None)
        settings.pop("float32_head", None)
        settings.pop("float32_above_db", None)
    for name, before in (("float32_head", 0.0), ("float32_above_db", None)):  # as before they existed
        if name in settings and settings[name] == before:
            settings.pop(name)
    return settings


def hidden_target(G, truth_seed: int, psi: float = 1.0):
    """The demo's true answer: ws from z ~ N(0, I) (seed), noise ~ N(0, I) (seed + 1), its image."""
    z = jax.random.normal(jax.random.PRNGKey(truth_seed), (1, G.z_dim))
    ws = G.mapping(z, truncation_psi=psi)
    noise = G.make_noise(jax.random.PRNGKey(truth_seed + 1))
    img = jnp.clip(G.synthesis(ws, noise=noise), -1, 1)
    return ws[0], noise, img[0]
