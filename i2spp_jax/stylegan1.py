"""StyleGAN (v1), the official G_style, as pure functions over a static config and a params pytree.

    G = i2spp_jax.formats.stylegan1.read_tf_pickle("karras2019stylegan-ffhq-1024x1024.pkl")  # config, params
    ws = mapping(cfg, params, z, truncation_psi=0.7)               # [N, num_ws, w_dim]; cutoff 8 by default
    img = synthesis(cfg, params, ws, noise=stored_noise(params, cfg))   # [N, R, R, C], about [-1, 1]

What the official network computes (NVlabs/stylegan networks_stylegan.py, its defaults):
- mapping: pixel-norm of z, `mapping_layers` dense layers with leaky ReLU (0.2), equalized learning
  rate with gain sqrt(2) and lr multiplier 0.01; the same w for all num_ws = 2 log2(R) - 2 layers;
  truncation towards w_avg with psi on the first `truncation_cutoff` (8) layers only.
- synthesis, per layer (two per resolution; the first of 4x4 is the learned constant): noise times
  a learned per-channel strength, bias, leaky ReLU, instance norm, then AdaIN: x * (s + 1) + b with
  [s, b] = dense(w of that layer). Convolutions are 3x3 (gain sqrt(2)); each block's first
  convolution up-samples (nearest neighbour then convolution below 128x128; from 128x128 on the
  official graph's fused transposed convolution with the 3x3 kernel padded and summed to 4x4,
  `fused_scale='auto'`, which is not the same function) and is followed by a [1, 2, 1] blur.
  The output is the last resolution's 1x1 ToRGB (`lod` = 0).
Images are NHWC here; the official graph is NCHW.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

Params = dict
SQRT2 = float(np.sqrt(2.0))
_DN = ("NHWC", "HWIO", "NHWC")


@dataclasses.dataclass(frozen=True)
class StyleGAN1Config:
    """The topology of a G_style generator (official names in comments)."""

    z_dim: int = 512  # latent_size
    w_dim: int = 512  # dlatent_size
    img_resolution: int = 1024  # resolution
    img_channels: int = 3  # num_channels
    channels: tuple = ()  # feature maps at 4, 8, ..., img_resolution (nf(1), nf(2), ...)
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01  # mapping_lrmul
    truncation_cutoff: Optional[int] = 8  # G_style's default: psi acts on the first 8 layers
    fused_scale_from: int = 128  # up-sampling to this resolution and above is the fused transposed conv

    @property
    def resolutions(self) -> list[int]:
        return [2 ** i for i in range(2, int(np.log2(self.img_resolution)) + 1)]

    @property
    def num_ws(self) -> int:
        return 2 * len(self.resolutions)

    @property
    def layer_names(self) -> list[str]:
        """Layer i's name, in W+ and noise order: b4.const, b4.conv, b8.conv0, b8.conv1, ..."""
        names = ["b4.const", "b4.conv"]
        for r in self.resolutions[1:]:
            names += [f"b{r}.conv0", f"b{r}.conv1"]
        return names

    @property
    def noise_shapes(self) -> list[tuple[int, int]]:
        return [(r, r) for r in self.resolutions for _ in range(2)]


def _lrelu(x):
    return jnp.where(x >= 0, x, 0.2 * x)


def _scaled(w, gain: float, lr_multiplier: float = 1.0):
    """Equalized learning rate: the stored weight times gain / sqrt(fan_in) (times the lr multiplier)."""
    fan_in = int(np.prod(w.shape[:-1]))
    return w * (gain / np.sqrt(fan_in) * lr_multiplier)


def _conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_DN)


def _blur(x):
    f = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0
    k = jnp.asarray(np.tile(f[:, :, None, None], (1, 1, 1, x.shape[-1])), x.dtype)
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=_DN,
                                        feature_group_count=x.shape[-1])


def _up_conv(x, w, fused: bool):
    """2x up-sampling and a 3x3 convolution, as upscale2d_conv2d computes it. w: [3, 3, in, out]."""
    w = _scaled(w, SQRT2)
    if not fused:
        return _conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2), w)
    f = jnp.pad(w, ((1, 1), (1, 1), (0, 0), (0, 0)))
    f = f[1:, 1:] + f[:-1, 1:] + f[1:, :-1] + f[:-1, :-1]  # [4, 4, in, out]: the official padded sum
    # tf.nn.conv2d_transpose(stride 2, 'SAME') = the input's gradient of a stride-2 convolution: a
    # convolution of the 2x-dilated input with the flipped kernel, padded 2 on each side.
    return jax.lax.conv_general_dilated(x, jnp.flip(f, (0, 1)), (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2),
                                        dimension_numbers=_DN)


def _epilogue(layer: Params, x, w, noise):
    """Noise, bias, leaky ReLU, instance norm, AdaIN with this layer's w [N, w_dim]."""
    if noise is not None:
        x = x + noise[:, :, :, None] * layer["noise_strength"]
    x = _lrelu(x + layer["bias"])
    x = x - jnp.mean(x, axis=(1, 2), keepdims=True)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=(1, 2), keepdims=True) + 1e-8)
    style = w @ _scaled(layer["style_weight"], 1.0) + layer["style_bias"]
    c = x.shape[-1]
    return x * (style[:, None, None, :c] + 1) + style[:, None, None, c:]


def mapping(config: StyleGAN1Config, params: Params, z: jax.Array, *, truncation_psi: float = 1.0,
            truncation_cutoff: Optional[int] = -1) -> jax.Array:
    """z [N, z_dim] -> ws [N, num_ws, w_dim]; truncation towards w_avg on the first `truncation_cutoff`
    layers (-1 = the config's, 8 as G_style; None = all)."""
    p = params["mapping"]
    lr = config.mapping_lr_multiplier
    x = z * jax.lax.rsqrt(jnp.mean(jnp.square(z), axis=1, keepdims=True) + 1e-8)
    for i in range(config.mapping_layers):
        fc = p[f"fc{i}"]
        x = _lrelu(x @ _scaled(fc["weight"], SQRT2, lr) + fc["bias"] * lr)
    ws = jnp.repeat(x[:, None], config.num_ws, axis=1)
    if truncation_psi == 1.0:
        return ws
    cutoff = config.truncation_cutoff if truncation_cutoff == -1 else truncation_cutoff
    cutoff = config.num_ws if cutoff is None else cutoff
    coefs = jnp.where(jnp.arange(config.num_ws)[None, :, None] < cutoff, truncation_psi, 1.0)
    return p["w_avg"] + (ws - p["w_avg"]) * coefs


def stored_noise(config: StyleGAN1Config, params: Params) -> list[jax.Array]:
    """The network's stored noise maps, [R, R] each, in layer order."""
    syn = params["synthesis"]
    return [syn[b][c]["noise_const"] for b, c in (n.split(".") for n in config.layer_names)]


def synthesis(config: StyleGAN1Config, params: Params, ws: jax.Array, noise=None) -> jax.Array:
    """ws [N, num_ws, w_dim] -> images [N, R, R, C].

    noise: a list of num_ws maps ([R, R] or [N, R, R]), None = the stored maps, "none" = no noise."""
    syn = params["synthesis"]
    n = ws.shape[0]
    if noise is None:
        noise = stored_noise(config, params)
    maps = [None] * config.num_ws if isinstance(noise, str) and noise == "none" else [
        jnp.broadcast_to(m, (n,) + tuple(np.shape(m)[-2:])) for m in noise]
    b4 = syn["b4"]
    x = jnp.broadcast_to(b4["const"]["const"], (n,) + b4["const"]["const"].shape)
    x = _epilogue(b4["const"], x, ws[:, 0], maps[0])
    x = _epilogue(b4["conv"], _conv(x, _scaled(b4["conv"]["weight"], SQRT2)), ws[:, 1], maps[1])
    for i, r in enumerate(config.resolutions[1:], start=1):
        blk = syn[f"b{r}"]
        x = _blur(_up_conv(x, blk["conv0"]["weight"], fused=r >= config.fused_scale_from))
        x = _epilogue(blk["conv0"], x, ws[:, 2 * i], maps[2 * i])
        x = _conv(x, _scaled(blk["conv1"]["weight"], SQRT2))
        x = _epilogue(blk["conv1"], x, ws[:, 2 * i + 1], maps[2 * i + 1])
    torgb = syn["torgb"]
    return _conv(x, _scaled(torgb["weight"], 1.0)) + torgb["bias"]
