"""Train a StyleGAN2 generator (the project's own networks.py) with a residual discriminator.

Commands (each a complete configuration):

    # The shipped demo generator: Fashion-MNIST (Debian's dataset-fashion-mnist), 32x32, grey.
    python -m experiments.train_generator --out=runs/fmnist

    # A folder of your own images (centre-cropped and resized to --resolution).
    python -m experiments.train_generator --data=path/to/images --resolution=64 --out=runs/mine

    # Seconds: a tiny network on the built-in toy set (used by the tests).
    python -m experiments.train_generator --smoke --out=/tmp/smoke

Rerunning the same command resumes from the last checkpoint in --out (bit-identically); a run
with other settings in an existing --out is refused (a larger --kimg extends a run), and --fresh
moves the old folder aside to OUT.old-<time> and starts over. Outputs in --out: ckpt/ (orbax: the
whole training state), history.npz (every logged step's losses), losses.png, samples/NNNNNN.png (a fixed
8x8 grid of the EMA generator), samples_latest.png, run.json (the settings), and at the end
generator/ (the EMA generator, loadable with i2spp_jax.load_generator).
"""

import dataclasses
import json
import math
import os
import shutil
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import flags, logging

from experiments import cli
from i2spp_jax import checkpoint, datasets, plots, training
from i2spp_jax.generator import Generator, GeneratorConfig

# One row per progress line: losses and logits are means over the steps since the previous line.
HISTORY_KEYS = ("step", "kimg", "G_loss", "D_loss", "R1", "D_real", "D_fake", "seconds")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run: the training settings plus where the data and outputs live."""

    train: training.TrainConfig
    data: str = "fashion-mnist"  # "fashion-mnist", "toy", or a directory of images
    out: str = "runs/train"
    kimg: float = 300.0  # thousands of real images shown to D
    log_every: int = 50  # progress line every this many steps
    sample_every: int = 500  # sample grid every this many steps
    checkpoint_every: int = 500  # orbax checkpoint every this many steps
    grid_seed: int = 123  # the fixed latents of the sample grid

    @property
    def total_steps(self) -> int:
        return int(np.ceil(self.kimg * 1000 / self.train.batch))

    def fingerprint(self) -> dict:
        """What must match for a resume: the training settings and the data set."""
        return {"train": json.loads(self.train.to_json()), "data": self.data}


def _history_load(path: str, upto: int) -> dict:
    if not os.path.exists(path):
        return {k: [] for k in HISTORY_KEYS}
    with np.load(path) as f:
        keep = f["step"] <= upto
        return {k: list(f[k][keep]) for k in HISTORY_KEYS}


def _history_save(path: str, history: dict) -> None:
    tmp = path + ".tmp.npz"
    np.savez(tmp, **{k: np.asarray(v) for k, v in history.items()})
    os.replace(tmp, path)


def grid_latents(cfg: RunConfig, n: int = 64):
    key = jax.random.PRNGKey(cfg.grid_seed)
    return jax.random.normal(key, (n, cfg.train.g.z_dim)), jax.random.fold_in(key, 1)


def sample_grid(cfg: RunConfig, g_params) -> np.ndarray:
    """The fixed 8x8 grid of EMA samples, [64, R, R, C] in about [-1, 1]."""
    z, noise_key = grid_latents(cfg)
    return np.asarray(training.sample(cfg.train.g, g_params, z, noise_key))


class _Checkpoints:
    """The training state in orbax (two kept), with the run's fingerprint beside it."""

    def __init__(self, directory: str):
        self.mgr = ocp.CheckpointManager(os.path.abspath(directory),
                                         options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))

    def latest(self) -> Optional[int]:
        return self.mgr.latest_step()

    def meta(self, step: int) -> dict:
        return self.mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def save(self, step: int, state, meta: dict) -> None:
        leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
        self.mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(leaves),
                                                    meta=ocp.args.JsonSave(meta)))
        self.mgr.wait_until_finished()

    def restore(self, step: int, template):
        leaves, treedef = jax.tree.flatten(template)
        abstract = [jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype) for x in leaves]
        got = self.mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        return jax.tree.unflatten(treedef, [jnp.asarray(x) for x in got.state])


def train(cfg: RunConfig, *, images: Optional[np.ndarray] = None, steps: Optional[int] = None,
          fresh: bool = False, log: Callable[[str], None] = print) -> dict:
    """Trains (or resumes) until cfg.total_steps, or `steps` more steps in this call.

    Args:
      images: uint8 [N, R, R, C]; None = load cfg.data.
      steps: stop after this many steps of this call (tests; a later call resumes).
      fresh: if cfg.out holds a run, move it aside to OUT.old-<time> (nothing is deleted) and start
        over; without it the same settings resume, and other settings are refused (cli.UserError).
    Returns:
      {"state": final state, "history": {...}, "step": last step}
    """
    tc = cfg.train
    r, c = tc.g.img_resolution, tc.g.img_channels
    if images is None:
        images = datasets.load(cfg.data, r, c)
    if images.shape[1:] != (r, r, c):
        raise cli.UserError(f"training images are {images.shape[1:]}; the generator makes {(r, r, c)}")
    if len(images) < tc.batch:
        raise cli.UserError(f"{len(images)} training images are fewer than one batch ({tc.batch})")
    cli.prepare_out(cfg.out, cfg.fingerprint(), fresh=fresh, log=log)  # run.json: the settings
    ckpts = _Checkpoints(os.path.join(cfg.out, "ckpt"))
    hist_path = os.path.join(cfg.out, "history.npz")
    state = training.init_state(tc)
    start = 0
    latest = ckpts.latest()
    if latest is not None:
        state = ckpts.restore(latest, state)
        start = int(state["step"])
        log(f"resumed from step {start} ({start * tc.batch / 1000:.1f} kimg) in {cfg.out}/ckpt")
    else:
        log(f"G {training.num_params(state['G']):,} params, D {training.num_params(state['D']):,} params; "
            f"{len(images)} training images {r}x{r}x{c}; {cfg.total_steps} steps of {tc.batch}")
    history = _history_load(hist_path, start)
    end = cfg.total_steps if steps is None else min(cfg.total_steps, start + steps)
    os.makedirs(os.path.join(cfg.out, "samples"), exist_ok=True)
    t_prev, last_logged = time.perf_counter(), start
    elapsed = float(history["seconds"][-1]) if history["seconds"] else 0.0
    sums, count, r1_sum, r1_count = None, 0, 0.0, 0  # on-device sums since the last progress line
    rate = None  # images/s over the last logged interval (the first one of a call holds the compile)

    def checkpoint_now(step):
        ckpts.save(step, state, {"step": step, **cfg.fingerprint()})
        _history_save(hist_path, history)
        plots.training_curves(os.path.join(cfg.out, "losses.png"), history)

    for step in range(start, end):
        idx = datasets.batch_indices(len(images), tc.batch, step, tc.seed)
        reals = jnp.asarray(datasets.to_float(images[idx]))
        state, m = training.train_step(tc, state, reals, step % tc.r1_interval == 0)
        finite = m.pop("finite")
        sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
        all_finite = finite if count == 0 else jnp.logical_and(all_finite, finite)
        count += 1
        if step % tc.r1_interval == 0:  # R1 runs every r1_interval steps: average those
            r1_sum, r1_count = r1_sum + m["R1"], r1_count + 1
        done = step + 1
        if done % cfg.log_every == 0 or done % cfg.checkpoint_every == 0 or done == end:  # check before saving
            m = {k: float(v) / count for k, v in jax.device_get(sums).items()}
            m.update(finite=bool(all_finite), R1=float(r1_sum) / r1_count if r1_count else float("nan"))
            sums, count, r1_sum, r1_count = None, 0, 0.0, 0
            now = time.perf_counter()
            if not m["finite"]:
                raise FloatingPointError(
                    f"non-finite loss at step {done} ({ {k: float(v) for k, v in m.items()} }); the last good "
                    f"checkpoint is step {ckpts.latest()} in {cfg.out}/ckpt: lower --lr or raise --r1_gamma")
            if last_logged > start:
                rate = (done - last_logged) * tc.batch / (now - t_prev)
            elapsed += now - t_prev
            t_prev, last_logged = now, done
            history_row = {"step": done, "kimg": done * tc.batch / 1000, "seconds": elapsed,
                           **{k: float(m[k]) for k in ("G_loss", "D_loss", "R1", "D_real", "D_fake")}}
            for k in HISTORY_KEYS:
                history[k].append(history_row[k])
            eta = f"{(cfg.total_steps - done) * tc.batch / rate / 60:.1f} min" if rate else "?"
            log(f"step {done}/{cfg.total_steps} kimg {done * tc.batch / 1000:.1f}  G {m['G_loss']:.3f}  "
                f"D {m['D_loss']:.3f}  R1 {m['R1']:.4f}  D(x) {m['D_real']:+.2f} D(G(z)) {m['D_fake']:+.2f}  "
                f"{rate or float('nan'):.1f} img/s  ETA {eta}")
        if done % cfg.sample_every == 0 or done == end:
            grid = sample_grid(cfg, state["G_ema"])
            plots.sample_grid(os.path.join(cfg.out, "samples", f"{done:06d}.png"), grid, nrow=8)
            plots.sample_grid(os.path.join(cfg.out, "samples_latest.png"), grid, nrow=8)
        if done % cfg.checkpoint_every == 0 or done == end:
            checkpoint_now(done)
    if end == cfg.total_steps:  # (re)write the EMA generator of the last step (--kimg may have grown)
        gen_dir = os.path.join(cfg.out, "generator")
        tmp_dir = gen_dir + ".new"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        G = Generator(params=state["G_ema"], config=tc.g)
        checkpoint.save_generator(G, tmp_dir, source=f"experiments.train_generator: {cfg.data}, "
                                                     f"{end} steps of {tc.batch}")
        shutil.rmtree(gen_dir, ignore_errors=True)
        os.rename(tmp_dir, gen_dir)
        log(f"wrote the EMA generator of step {end} to {gen_dir}")
    return {"state": state, "history": history, "step": end}


FLAGS = flags.FLAGS
def define_flags() -> None:
    """The command line's flags (defined on demand, so that modules import side by side)."""
    flags.DEFINE_string("data", "fashion-mnist", "'fashion-mnist' (apt-get install dataset-fashion-mnist), or a folder")
    flags.DEFINE_string("out", "runs/train", "output directory (rerun to resume)")
    flags.DEFINE_integer("resolution", 32, "image resolution (power of two >= 4)")
    flags.DEFINE_integer("img_channels", None, "image channels; default 1 for Fashion-MNIST (grey: shipped as "
                         "RGB by replicate_channels), 3 for a folder", lower_bound=1)
    flags.DEFINE_list("channels", ["128", "64", "32", "16"], "G feature maps per block, 4x4 .. resolution")
    flags.DEFINE_list("d_channels", ["16", "32", "64", "128"], "D feature maps per block, resolution .. 4x4")
    flags.DEFINE_integer("z_dim", 128, "latent (Z) size", lower_bound=1)
    flags.DEFINE_integer("w_dim", 128, "intermediate latent (W) size", lower_bound=1)
    flags.DEFINE_integer("mapping_layers", 4, "mapping network depth", lower_bound=1)
    flags.DEFINE_float("mapping_lr_multiplier", 0.01, "mapping network lr multiplier (> 0)")
    flags.DEFINE_integer("batch", 32, "images per step", lower_bound=1)
    flags.DEFINE_float("lr", 0.0025, "Adam learning rate (> 0)")
    flags.DEFINE_float("r1_gamma", 0.01, "R1 weight (0.01: the official 32x32 CIFAR value)", lower_bound=0)
    flags.DEFINE_integer("r1_interval", 16, "lazy R1 interval", lower_bound=1)
    flags.DEFINE_float("style_mixing_prob", 0.9, "style mixing probability", lower_bound=0, upper_bound=1)
    flags.DEFINE_float("ema_kimg", None, "G EMA half-life (kimg, > 0); default batch * 10 / 32 (official 'auto')")
    flags.DEFINE_boolean("mirror", True, "random horizontal flips")
    flags.DEFINE_float("kimg", 300, "training length in thousands of images", lower_bound=0)
    flags.DEFINE_integer("seed", 0, "initialisation and PRNG seed")
    flags.DEFINE_integer("log_every", 50, "progress line interval (steps)", lower_bound=1)
    flags.DEFINE_integer("sample_every", 500, "sample grid interval (steps)", lower_bound=1)
    flags.DEFINE_integer("checkpoint_every", 500, "checkpoint interval (steps)", lower_bound=1)
    flags.DEFINE_boolean("smoke", False, "tiny network on the toy set, a few steps")
    flags.DEFINE_boolean("fresh", False, "if --out holds a run, move it aside to OUT.old-<time> (nothing is "
                         "deleted) and start over; without it the same settings resume")
    for name in ("lr", "mapping_lr_multiplier", "ema_kimg"):
        flags.register_validator(name, lambda v: v is None or (math.isfinite(v) and v > 0),
                                 f"--{name} must be a finite number > 0")
    flags.register_validator("kimg", math.isfinite, "--kimg must be a finite number of thousands of images")
    flags.register_validator("resolution", lambda r: r >= 4 and r & (r - 1) == 0,
                             "--resolution must be a power of two >= 4, such as 32 or 64")
    for name in ("channels", "d_channels"):
        flags.register_validator(name, lambda v: all(x.isdigit() and int(x) > 0 for x in v),
                                 f"--{name} must be positive integers separated by commas, such as 128,64,32,16")
    flags.register_multi_flags_validator(["resolution", "channels", "d_channels", "smoke"], _blocks_fit)


def _blocks_fit(f: dict) -> bool:
    """--channels and --d_channels give one width per block (4x4 .. resolution), unless --smoke sets them."""
    r = f["resolution"]
    if f["smoke"] or r < 4 or r & (r - 1):  # a wrong --resolution has its own message
        return True
    blocks = int(math.log2(r)) - 1
    if len(f["channels"]) != blocks or len(f["d_channels"]) != blocks:
        raise flags.ValidationError(
            f"a {r}x{r} generator has {blocks} blocks ({', '.join(str(2 ** i) for i in range(2, blocks + 2))}): give "
            f"--channels and --d_channels {blocks} widths each (got {len(f['channels'])} and {len(f['d_channels'])})")
    return True


def config_from_flags() -> RunConfig:
    if FLAGS.smoke:
        g = GeneratorConfig(z_dim=16, w_dim=16, img_resolution=16, channels=(16, 16, 8), mapping_layers=2)
        tc = training.TrainConfig(g=g, d_channels=(8, 16, 16), batch=8, r1_gamma=0.01, ema_kimg=0.1,
                                  seed=FLAGS.seed)
        return RunConfig(train=tc, data="toy", out=FLAGS.out, kimg=0.16, log_every=5, sample_every=10,
                         checkpoint_every=10)
    chans = tuple(int(x) for x in FLAGS.channels)
    channels = FLAGS.img_channels or (1 if FLAGS.data == "fashion-mnist" else 3)
    g = GeneratorConfig(z_dim=FLAGS.z_dim, w_dim=FLAGS.w_dim, img_resolution=FLAGS.resolution,
                        img_channels=channels, channels=chans, mapping_layers=FLAGS.mapping_layers,
                        mapping_lr_multiplier=FLAGS.mapping_lr_multiplier)
    gamma = FLAGS.r1_gamma
    ema = FLAGS.ema_kimg if FLAGS.ema_kimg is not None else FLAGS.batch * 10 / 32
    tc = training.TrainConfig(g=g, d_channels=tuple(int(x) for x in FLAGS.d_channels), batch=FLAGS.batch,
                              lr=FLAGS.lr, r1_gamma=gamma, r1_interval=FLAGS.r1_interval,
                              style_mixing_prob=FLAGS.style_mixing_prob, ema_kimg=ema, mirror=FLAGS.mirror,
                              seed=FLAGS.seed)
    return RunConfig(train=tc, data=FLAGS.data, out=FLAGS.out, kimg=FLAGS.kimg, log_every=FLAGS.log_every,
                     sample_every=FLAGS.sample_every, checkpoint_every=FLAGS.checkpoint_every)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint at INFO
    cfg = config_from_flags()
    train(cfg, fresh=FLAGS.fresh, log=cli.log)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
