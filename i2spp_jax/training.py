"""StyleGAN2 training (stylegan2-ada-pytorch's recipe, without augmentation), as pure functions.

    cfg = TrainConfig(g=GeneratorConfig(...), d_channels=(...), batch=32)
    state = init_state(cfg, seed=0)
    state, metrics = train_step(cfg, state, reals, do_r1=(step % cfg.r1_interval == 0))

What it does, as the official code does it:
- the non-saturating logistic loss: D minimises softplus(D(G(z))) + softplus(-D(x)), G minimises
  softplus(-D(G(z)));
- lazy R1 on reals, (gamma / 2) * E ||grad_x D(x)||^2, every `r1_interval` steps and scaled by it;
- Adam with betas (0, 0.99), eps 1e-8 for both networks; the mapping network's learning rate is
  `g.mapping_lr_multiplier` times the rest (built into its equalized-lr parametrisation);
- style mixing regularisation: with probability `style_mixing_prob` the ws from a crossover layer
  on come from a second z;
- fresh N(0, 1) noise maps every step; w_avg tracks the mapping output (beta 0.995);
- a generator EMA with a half-life of `ema_kimg` thousand images, ramped up over the first
  images (`ema_rampup`).
Deviations (see BUILD_NOTES.md): no path length regularisation and no ADA augmentation; the R1
term is added to the D step it falls on instead of running as a separate optimiser step.

The state is one pytree; the PRNG stream of step t is fold_in(key, t), so a run resumed from a
checkpoint of step t continues bit-identically.
"""

import dataclasses
import functools
import json
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from i2spp_jax import generator as gen
from i2spp_jax.discriminator import Discriminator
from i2spp_jax.generator import GeneratorConfig

State = dict[str, Any]
FROZEN_G_LEAVES = ("noise_const", "w_avg")  # buffers in the official code: never trained


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that fixes a training run (its checkpoint refuses a run with other settings)."""

    g: GeneratorConfig  # the generator's topology
    d_channels: tuple[int, ...]  # discriminator feature maps, img_resolution .. 4
    batch: int = 32  # images per step
    lr: float = 0.0025  # Adam learning rate of both networks
    betas: tuple[float, float] = (0.0, 0.99)  # Adam betas (the official ones)
    r1_gamma: float = 0.0064  # R1 weight; the official 'auto' value 0.0002 * res^2 / batch
    r1_interval: int = 16  # lazy regularisation: R1 every this many steps
    style_mixing_prob: float = 0.9  # probability of mixing two latents at a random layer
    ema_kimg: float = 10.0  # generator EMA half-life in thousands of images
    ema_rampup: float = 0.05  # EMA half-life at most this fraction of the images seen (None = off)
    w_avg_beta: float = 0.995  # decay of the tracked mean latent
    mbstd_group: int = 4  # minibatch-stddev group size
    mirror: bool = True  # random horizontal flips of the reals
    seed: int = 0  # initialisation and the PRNG stream

    def __post_init__(self):
        if self.batch % min(self.mbstd_group, self.batch):
            raise ValueError(f"batch {self.batch} must be a multiple of mbstd_group {self.mbstd_group}")

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["g"] = json.loads(self.g.to_json())
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        d = json.loads(text)
        d["g"] = GeneratorConfig.from_json(json.dumps(d["g"]))
        d["d_channels"] = tuple(d["d_channels"])
        d["betas"] = tuple(d["betas"])
        return cls(**d)

    def discriminator(self) -> Discriminator:
        return Discriminator(img_resolution=self.g.img_resolution, channels=self.d_channels,
                             mbstd_group_size=self.mbstd_group)


def _labels(params) -> Any:
    flat = flax.traverse_util.flatten_dict(params)
    return flax.traverse_util.unflatten_dict(
        {k: "frozen" if k[-1] in FROZEN_G_LEAVES else "train" for k in flat})


def _optimizer(cfg: TrainConfig, params) -> optax.GradientTransformation:
    adam = optax.adam(cfg.lr, b1=cfg.betas[0], b2=cfg.betas[1], eps=1e-8)
    return optax.multi_transform({"train": adam, "frozen": optax.set_to_zero()}, _labels(params))


@functools.partial(jax.jit, static_argnums=0)  # one compile: op by op, flax's and optax's inits took 28 s
def init_state(cfg: TrainConfig) -> State:
    """Fresh state: G, G_ema (= G), D, both optimiser states, the step counter and the PRNG key."""
    key = jax.random.PRNGKey(cfg.seed)
    k_g, k_d, k_run = jax.random.split(key, 3)
    g_params = gen.init_params(cfg.g, k_g)
    r = cfg.g.img_resolution
    d_params = cfg.discriminator().init(k_d, jnp.zeros((cfg.batch, r, r, cfg.g.img_channels)))["params"]
    return {
        "G": g_params,
        "G_ema": jax.tree.map(jnp.copy, g_params),
        "D": d_params,
        "G_opt": _optimizer(cfg, g_params).init(g_params),
        "D_opt": _optimizer(cfg, d_params).init(d_params),
        "step": jnp.zeros((), jnp.int32),
        "key": k_run,
    }


def _random_noise(cfg: TrainConfig, key, n):
    return gen.make_noise(cfg.g, key, batch=n)


def _mapping_mixed(cfg: TrainConfig, g_params, key, n):
    """ws [n, num_ws, w_dim] from fresh z, with style mixing regularisation."""
    k_z, k_z2, k_cut, k_mix = jax.random.split(key, 4)
    ws = gen.mapping(cfg.g, g_params, jax.random.normal(k_z, (n, cfg.g.z_dim)))
    if cfg.style_mixing_prob > 0:
        ws2 = gen.mapping(cfg.g, g_params, jax.random.normal(k_z2, (n, cfg.g.z_dim)))
        cutoff = jax.random.randint(k_cut, (), 1, cfg.g.num_ws)
        cutoff = jnp.where(jax.random.uniform(k_mix) < cfg.style_mixing_prob, cutoff, cfg.g.num_ws)
        layer = jnp.arange(cfg.g.num_ws)[None, :, None]
        ws = jnp.where(layer < cutoff, ws, ws2)
    return ws


def generate(cfg: TrainConfig, g_params, key, n):
    """Training-mode fakes [n, R, R, C] (style mixing, random noise) and their ws [n, num_ws, w_dim]."""
    k_map, k_noise = jax.random.split(key)
    ws = _mapping_mixed(cfg, g_params, k_map, n)
    img = gen.synthesis(cfg.g, g_params, ws, noise=_random_noise(cfg, k_noise, n), fused_modconv=False)
    return img, ws


def _d_loss(d_params, cfg, fakes, reals, do_r1):
    D = cfg.discriminator()

    def d_real(x):
        logits = D.apply({"params": d_params}, x)
        return jnp.sum(logits), logits

    if do_r1:
        (_, real_logits), real_grad = jax.value_and_grad(d_real, has_aux=True)(reals)
        r1 = jnp.mean(jnp.sum(jnp.square(real_grad), axis=(1, 2, 3)))
    else:
        real_logits, r1 = D.apply({"params": d_params}, reals), jnp.zeros(())
    fake_logits = D.apply({"params": d_params}, fakes)
    loss_gan = jnp.mean(jax.nn.softplus(fake_logits)) + jnp.mean(jax.nn.softplus(-real_logits))
    loss = loss_gan + (cfg.r1_gamma / 2) * r1 * cfg.r1_interval if do_r1 else loss_gan
    return loss, {"D_loss": loss_gan, "R1": r1, "D_real": jnp.mean(real_logits),
                  "D_fake": jnp.mean(fake_logits)}


def _g_loss(g_params, cfg, d_params, key):
    fakes, ws = generate(cfg, g_params, key, cfg.batch)
    logits = cfg.discriminator().apply({"params": d_params}, fakes)
    return jnp.mean(jax.nn.softplus(-logits)), ws


def ema_beta(cfg: TrainConfig, images_seen) -> jax.Array:
    """The official EMA decay for one step after `images_seen` images."""
    ema_nimg = cfg.ema_kimg * 1000.0
    if cfg.ema_rampup is not None:
        ema_nimg = jnp.minimum(ema_nimg, images_seen * cfg.ema_rampup)
    return 0.5 ** (cfg.batch / jnp.maximum(ema_nimg, 1e-8))


@functools.partial(jax.jit, static_argnums=(0, 3), donate_argnums=1)
def train_step(cfg: TrainConfig, state: State, reals: jax.Array, do_r1: bool) -> tuple[State, dict]:
    """One iteration: a G step, then a D step (with R1 when `do_r1`), then the EMA.

    Args:
      reals: [batch, R, R, C] float32 in [-1, 1].
    Returns:
      (new state, metrics {G_loss, D_loss, R1, D_real, D_fake, finite}).
    """
    key = jax.random.fold_in(state["key"], state["step"])
    k_g, k_d, k_flip = jax.random.split(key, 3)
    if cfg.mirror:
        flip = jax.random.bernoulli(k_flip, 0.5, (reals.shape[0], 1, 1, 1))
        reals = jnp.where(flip, reals[:, :, ::-1], reals)

    # G: non-saturating loss through a fixed D.
    (g_loss, ws), g_grads = jax.value_and_grad(_g_loss, has_aux=True)(state["G"], cfg, state["D"], k_g)
    g_opt = _optimizer(cfg, state["G"])
    g_updates, g_opt_state = g_opt.update(g_grads, state["G_opt"], state["G"])
    g_params = optax.apply_updates(state["G"], g_updates)
    w_avg = g_params["mapping"]["w_avg"]
    g_params["mapping"]["w_avg"] = cfg.w_avg_beta * w_avg + (1 - cfg.w_avg_beta) * jnp.mean(ws[:, 0], axis=0)

    # D: fakes from the updated G (fresh latents), reals, lazy R1.
    fakes, _ = generate(cfg, g_params, k_d, cfg.batch)
    fakes = jax.lax.stop_gradient(fakes)
    (_, d_metrics), d_grads = jax.value_and_grad(_d_loss, has_aux=True)(state["D"], cfg, fakes, reals, do_r1)
    d_opt = _optimizer(cfg, state["D"])
    d_updates, d_opt_state = d_opt.update(d_grads, state["D_opt"], state["D"])
    d_params = optax.apply_updates(state["D"], d_updates)

    # EMA of G (buffers are copied).
    step = state["step"] + 1
    beta = ema_beta(cfg, step.astype(jnp.float32) * cfg.batch)
    g_ema = jax.tree.map(lambda e, p: p + (e - p) * beta, state["G_ema"], g_params)
    g_ema["mapping"]["w_avg"] = g_params["mapping"]["w_avg"]

    metrics = dict(d_metrics, G_loss=g_loss)
    metrics["finite"] = jnp.all(jnp.stack([jnp.isfinite(v) for v in metrics.values()]))
    new_state = {"G": g_params, "G_ema": g_ema, "D": d_params, "G_opt": g_opt_state, "D_opt": d_opt_state,
                 "step": step, "key": state["key"]}
    return new_state, metrics


@functools.partial(jax.jit, static_argnums=0)
def d_loss_on(cfg: TrainConfig, state: State, reals: jax.Array, key: jax.Array) -> jax.Array:
    """The discriminator's GAN loss on `reals` and fresh fakes (no R1, no flips): for tests."""
    fakes, _ = generate(cfg, state["G"], key, reals.shape[0])
    return _d_loss(state["D"], cfg, fakes, reals, False)[1]["D_loss"]


@functools.partial(jax.jit, static_argnums=(0,))
def sample(config: GeneratorConfig, g_params, z: jax.Array, noise_key: jax.Array) -> jax.Array:
    """Images [N, R, R, C] in about [-1, 1] from z [N, z_dim], random noise, no truncation."""
    ws = gen.mapping(config, g_params, z)
    noise = gen.make_noise(config, noise_key, batch=z.shape[0])
    return gen.synthesis(config, g_params, ws, noise=noise, fused_modconv=False)


def num_params(tree) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(tree)))
