"""StyleGAN (v1), the official G_style, as pure functions over a static config and a params pytree,
and `StyleGAN1Generator`, the same public face as the StyleGAN2 `Generator`.

    G = i2spp_jax.load_generator("karras2019stylegan-ffhq-1024x1024.pkl")   # Gs, read without TensorFlow
    ws = G.mapping(z, truncation_psi=0.7)          # [N, 18, 512]; psi on the first 8 layers (G_style's cutoff)
    img = G.synthesis(ws, noise="const")           # [N, 1024, 1024, 3], about [-1, 1]

The engine and every application take either generation. Where they differ: StyleGAN has
num_ws = 2 log2(R) - 2 layers, each with its own noise map (18 and 18 at 1024x1024; StyleGAN2 has 17
noise maps), and W+ layer j is exactly the style of layer j (its AdaIN); there is no RGB skip image,
so the activation points are b{R}.conv0 (the block's first layer's output; at 4x4 the constant
layer's) and b{R}.x (the block's output).

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
import functools
import json
from typing import Any, Optional, Sequence, Union

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from i2spp_jax import activations, face
from i2spp_jax.face import GeneratorFace

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
    def block_resolutions(self) -> list[int]:
        """4, 8, ..., img_resolution (the name the StyleGAN2 GeneratorConfig uses)."""
        return [2 ** i for i in range(2, int(np.log2(self.img_resolution)) + 1)]

    @property
    def num_ws(self) -> int:
        return 2 * len(self.block_resolutions)

    @property
    def layer_names(self) -> list[str]:
        """Layer i's name, in W+ and noise order: b4.const, b4.conv, b8.conv0, b8.conv1, ..."""
        names = ["b4.const", "b4.conv"]
        for r in self.block_resolutions[1:]:
            names += [f"b{r}.conv0", f"b{r}.conv1"]
        return names

    @property
    def noise_shapes(self) -> list[tuple[int, int]]:
        return [(r, r) for r in self.block_resolutions for _ in range(2)]

    # The names the engine and the applications use (as the StyleGAN2 GeneratorConfig's).
    generation = 1  # class constant: which StyleGAN

    @property
    def noise_names(self) -> list[str]:
        """One noise map per layer, in W+ order (each layer has its own)."""
        return self.layer_names

    @property
    def activation_names(self) -> list[str]:
        """Points whose tensors synthesis can return and replace: b{R}.conv0 (the block's first layer:
        on 4x4 the constant layer), b{R}.x (its second layer, the block's output)."""
        return [f"b{r}.{p}" for r in self.block_resolutions for p in ("conv0", "x")]

    def activation_point(self, j: int) -> str:
        """The point holding the output of the layer that W+ layer j drives (its AdaIN)."""
        return f"b{self.block_resolutions[j // 2]}.{'x' if j % 2 else 'conv0'}"

    def last_noise_of(self, point: str) -> int:
        """Index (noise_names) of the last noise map that enters before `point`'s tensor."""
        if point not in self.activation_names:
            raise ValueError(f"activation point {point!r}: use one of {self.activation_names}")
        return self.activation_names.index(point)

    def to_json(self) -> str:
        return json.dumps({"generation": 1, **dataclasses.asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "StyleGAN1Config":
        d = json.loads(text)
        d.pop("generation", None)
        d["channels"] = tuple(d["channels"])
        return cls(**d)


def _lrelu(x):
    return jnp.where(x >= 0, x, 0.2 * x)


def _scaled(w, gain: float, lr_multiplier: float = 1.0):
    """Equalized learning rate: the stored weight times gain / sqrt(fan_in) (times the lr multiplier)."""
    fan_in = int(np.prod(w.shape[:-1]))
    return w * (gain / np.sqrt(fan_in) * lr_multiplier)


def _conv(x, w):
    return jax.lax.conv_general_dilated(x, w.astype(x.dtype), (1, 1), "SAME", dimension_numbers=_DN)


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
    return jax.lax.conv_general_dilated(x, jnp.flip(f, (0, 1)).astype(x.dtype), (1, 1), ((2, 2), (2, 2)),
                                        lhs_dilation=(2, 2), dimension_numbers=_DN)


def _epilogue(layer: Params, x, w, noise):
    """Noise, bias, leaky ReLU, instance norm, AdaIN with this layer's w [N, w_dim]."""
    if noise is not None:
        x = x + (noise[:, :, :, None] * layer["noise_strength"]).astype(x.dtype)
    x = _lrelu(x + layer["bias"].astype(x.dtype))
    x = x - jnp.mean(x, axis=(1, 2), keepdims=True)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=(1, 2), keepdims=True) + 1e-8)
    style = (w @ _scaled(layer["style_weight"], 1.0) + layer["style_bias"]).astype(x.dtype)
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


NoiseSpec = Union[str, None, Sequence[Any]]


def _noise_maps(config: StyleGAN1Config, params: Params, noise: NoiseSpec, n: int) -> list[Optional[jax.Array]]:
    """One [N, R, R] map (or None) per layer from "const" / None (the stored maps), "none", or a list
    of entries [R, R], [N, R, R], "const" or None."""
    stored = stored_noise(config, params)
    if noise is None or (isinstance(noise, str) and noise == "const"):
        noise = ["const"] * config.num_ws
    elif isinstance(noise, str):
        if noise != "none":
            raise ValueError(f"noise={noise!r}: use 'const', 'none', or a list of {config.num_ws} maps")
        noise = [None] * config.num_ws
    noise = list(noise)
    if len(noise) != config.num_ws:
        raise ValueError(f"{len(noise)} noise maps given; this StyleGAN has {config.num_ws} (one per layer)")
    maps = []
    for entry, const, (r, _) in zip(noise, stored, config.noise_shapes):
        if entry is None:
            maps.append(None)
            continue
        m = const if isinstance(entry, str) and entry == "const" else jnp.asarray(entry)
        if m.shape[-2:] != (r, r) or m.ndim not in (2, 3) or (m.ndim == 3 and m.shape[0] not in (1, n)):
            raise ValueError(f"noise map for a {r}x{r} layer has shape {m.shape}; expected [{r}, {r}] or [{n}, {r}, {r}]")
        maps.append(jnp.broadcast_to(m, (n, r, r)))
    return maps


def synthesis(config: StyleGAN1Config, params: Params, ws: jax.Array, noise: NoiseSpec = None, *,
              edits: Optional[dict] = None, return_activations: bool = False, dtype: Optional[str] = None):
    """ws [N, num_ws, w_dim] -> images [N, R, R, C] (about [-1, 1]).

    Args:
      noise: None or "const" (the stored maps), "none", or one entry per layer ([R, R], [N, R, R],
        "const" or None).
      edits: {activation point: edit} (`config.activation_names`): an `activations.Mix` or a function
        of the point's tensor; synthesis continues from the edited tensor.
      return_activations: also return {point: tensor} (after edits).
      dtype: None (float32) or "bfloat16": the feature maps and convolutions in that dtype; the
        styles and the returned image stay float32.
    """
    syn = params["synthesis"]
    ws = jnp.asarray(ws)
    n = ws.shape[0]
    if ws.ndim != 3 or ws.shape[1:] != (config.num_ws, config.w_dim):
        raise ValueError(f"ws has shape {ws.shape}; expected [N, {config.num_ws}, {config.w_dim}]")
    edits = dict(edits or {})
    unknown = set(edits) - set(config.activation_names)
    if unknown:
        raise ValueError(f"edits name unknown activation points {sorted(unknown)}; valid: {config.activation_names}")
    maps = _noise_maps(config, params, noise, n)
    aux = {}

    def tap(point, x):
        edit = edits.get(point)
        if activations.is_data_edit(edit):
            x = edit.apply(x, None)[0].astype(x.dtype)
        elif edit is not None:
            x = edit(x).astype(x.dtype)
        aux[point] = x
        return x

    b4 = syn["b4"]
    x = jnp.broadcast_to(b4["const"]["const"], (n,) + b4["const"]["const"].shape)
    x = x if dtype is None else x.astype(dtype)
    x = tap("b4.conv0", _epilogue(b4["const"], x, ws[:, 0], maps[0]))
    x = tap("b4.x", _epilogue(b4["conv"], _conv(x, _scaled(b4["conv"]["weight"], SQRT2)), ws[:, 1], maps[1]))
    for i, r in enumerate(config.block_resolutions[1:], start=1):
        blk = syn[f"b{r}"]
        x = _blur(_up_conv(x, blk["conv0"]["weight"], fused=r >= config.fused_scale_from))
        x = tap(f"b{r}.conv0", _epilogue(blk["conv0"], x, ws[:, 2 * i], maps[2 * i]))
        x = _conv(x, _scaled(blk["conv1"]["weight"], SQRT2))
        x = tap(f"b{r}.x", _epilogue(blk["conv1"], x, ws[:, 2 * i + 1], maps[2 * i + 1]))
    torgb = syn["torgb"]
    img = (_conv(x, _scaled(torgb["weight"], 1.0)) + torgb["bias"].astype(x.dtype)).astype(jnp.float32)
    return (img, aux) if return_activations else img


def init_params_like(config: StyleGAN1Config, params: Params, key: jax.Array) -> Params:
    """Fresh params of `params`' shapes, drawn as the official G_style initialises them (the hidden width
    of the mapping network is not in the config, hence a template): equalized-lr weights N(0, 1 / lr
    multiplier) (mapping 0.01, the rest 1), stored noise maps N(0, 1), the constant input ones; biases,
    noise strengths and w_avg zero.

    Raises:
      ValueError: a leaf whose initialisation is not known (so that a new parameter is never guessed).
    """
    fixed = {"bias": 0.0, "style_bias": 0.0, "noise_strength": 0.0, "w_avg": 0.0, "const": 1.0}
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    keys = jax.random.split(key, len(leaves))

    def init(path, leaf, k):
        name, shape = path[-1].key, jnp.shape(leaf)
        if name in fixed:
            return jnp.full(shape, fixed[name], jnp.float32)
        if name in ("weight", "style_weight", "noise_const"):
            std = 1.0 / config.mapping_lr_multiplier if path[0].key == "mapping" else 1.0
            return std * jax.random.normal(k, shape, jnp.float32)
        raise ValueError(f"no initialisation known for StyleGAN (v1) parameter {jax.tree_util.keystr(path)}")

    inits = [init(path, leaf, k) for (path, leaf), k in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), inits)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _mapping_jit(config, params, z, truncation_psi, truncation_cutoff):
    return mapping(config, params, z, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)


@functools.partial(jax.jit, static_argnums=(0, 4, 6))
def _synthesis_jit(config, params, ws, noise, return_activations, edits, dtype):
    return synthesis(config, params, ws, noise, edits=edits, return_activations=return_activations, dtype=dtype)


@flax.struct.dataclass
class StyleGAN1Generator(GeneratorFace):
    """A StyleGAN (v1) generator with `Generator`'s face: static `config`, a `params` pytree; a pytree."""

    params: Params
    config: StyleGAN1Config = flax.struct.field(pytree_node=False)

    def mapping(self, z: jax.Array, truncation_psi: float = 1.0, truncation_cutoff: Optional[int] = -1):
        """z [N, z_dim] -> ws [N, num_ws, w_dim]; psi on the first `truncation_cutoff` layers (-1 = the
        network's own, 8 as G_style; None = all)."""
        z = jnp.asarray(z)
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z has shape {z.shape}; expected [N, {self.z_dim}]")
        return _mapping_jit(self.config, self.params, z, float(truncation_psi), truncation_cutoff)

    def synthesis(self, ws: jax.Array, noise: NoiseSpec = "const", *, fused_modconv: bool = True,
                  edits: Optional[dict] = None, return_activations: bool = False, dtype: Optional[str] = None):
        """ws [N, num_ws, w_dim] -> image [N, R, R, C]; see `synthesis`. `fused_modconv` is accepted and
        has no effect (StyleGAN has no modulated convolution)."""
        del fused_modconv
        edits = dict(edits or {})
        # The functional core runs unjitted for edits that are functions, and inside a caller's trace (the
        # engine's step), where a nested jit would only lengthen the trace (face.traced).
        if face.traced(ws) or any(not activations.is_data_edit(e) for e in edits.values()):
            return synthesis(self.config, self.params, ws, noise, edits=edits, return_activations=return_activations,
                             dtype=dtype)
        maps = _noise_maps(self.config, self.params, noise, jnp.shape(ws)[0])
        return _synthesis_jit(self.config, self.params, jnp.asarray(ws), maps, return_activations, edits, dtype)
