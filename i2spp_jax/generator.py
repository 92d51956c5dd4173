"""The StyleGAN2 generator: a static config, a params pytree, and pure functions over both.

    G = load_generator("demo")                     # or a converted checkpoint dir, or a source file
    ws = G.mapping(z, truncation_psi=0.7)           # [N, num_ws, w_dim]
    img = G.synthesis(ws, noise="const")            # [N, H, W, C], about [-1, 1]

`Generator` is a pytree (params are leaves, the config is static), so it can be passed straight into
`jax.jit`, `jax.grad` and `jax.vmap`. Nothing here draws random numbers: noise maps are inputs.
"""

import dataclasses
import functools
import json
from typing import Any, Optional, Sequence, Union

import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from i2spp_jax import activations, face, networks
from i2spp_jax.face import GeneratorFace
from i2spp_jax.networks import Edits, NoiseInput

Params = Any  # {"mapping": {...}, "synthesis": {...}}
NoiseSpec = Union[str, None, Sequence[NoiseInput]]


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """Everything that fixes the generator's topology (what a .pkl stores as init_kwargs)."""

    z_dim: int  # input latent (Z) dimensionality
    w_dim: int  # intermediate latent (W) dimensionality
    img_resolution: int  # output resolution, a power of two >= 4
    img_channels: int = 3  # output colour channels
    channels: tuple[int, ...] = ()  # feature maps per block, resolutions 4 .. img_resolution
    mapping_layers: int = 8  # dense layers in the mapping network
    mapping_layer_features: Optional[int] = None  # hidden width of the mapping network, None = w_dim
    mapping_lr_multiplier: float = 0.01  # equalized-lr multiplier of the mapping layers
    conv_clamp: Optional[float] = None  # clamp conv outputs to +-X (stylegan2-ada), None = off
    resample_filter: tuple[float, ...] = (1.0, 3.0, 3.0, 1.0)  # FIR taps for upsampling

    def __post_init__(self):
        r = self.img_resolution
        if r < 4 or r & (r - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {r}")
        if len(self.channels) != len(self.block_resolutions):
            raise ValueError(f"channels has {len(self.channels)} entries; a {r}x{r} generator has "
                             f"{len(self.block_resolutions)} blocks ({self.block_resolutions})")

    @classmethod
    def from_channel_base(cls, *, img_resolution: int, channel_base: int = 32768, channel_max: int = 512,
                          **kwargs) -> "GeneratorConfig":
        """Channels as stylegan2-ada-pytorch computes them: min(channel_base // res, channel_max)."""
        log2 = int(np.log2(img_resolution))
        chans = tuple(min(channel_base // 2**i, channel_max) for i in range(2, log2 + 1))
        return cls(img_resolution=img_resolution, channels=chans, **kwargs)

    @property
    def block_resolutions(self) -> list[int]:
        return [2**i for i in range(2, int(np.log2(self.img_resolution)) + 1)]

    @property
    def num_ws(self) -> int:
        """W+ layers: one per conv plus the last ToRGB (18 at 1024x1024)."""
        return 2 * len(self.block_resolutions)

    @property
    def noise_names(self) -> list[str]:
        """Noise maps in synthesis order, with stylegan2-ada names: b4.conv1, b8.conv0, b8.conv1, ..."""
        names = ["b4.conv1"]
        for res in self.block_resolutions[1:]:
            names += [f"b{res}.conv0", f"b{res}.conv1"]
        return names

    @property
    def noise_shapes(self) -> list[tuple[int, int]]:
        return [(int(n.split(".")[0][1:]),) * 2 for n in self.noise_names]

    @property
    def activation_names(self) -> list[str]:
        """Points whose tensors synthesis can return and replace: b{R}.conv0, b{R}.x, b{R}.img."""
        names = []
        for res in self.block_resolutions:
            names += ([f"b{res}.conv0"] if res > 4 else []) + [f"b{res}.x", f"b{res}.img"]
        return names

    generation = 2  # class constant: which StyleGAN

    def activation_point(self, j: int) -> str:
        """The point holding the output of the convolution that W+ layer j drives: b{R}.conv0 (j odd),
        b{R}.img (j even: the block's output, features and skip image); the last W+ layer drives only
        the last ToRGB: the last block's output."""
        if j >= self.num_ws - 1:
            return f"b{self.img_resolution}.img"
        res = 4 * 2 ** ((j + 1) // 2)
        return f"b{res}.conv0" if j % 2 else f"b{res}.img"

    def last_noise_of(self, point: str) -> int:
        """Index (noise_names) of the last noise map that enters before `point`'s tensor."""
        if point not in self.activation_names:
            raise ValueError(f"activation point {point!r}: use one of {self.activation_names}")
        block, _, where = point.partition(".")
        return self.noise_names.index(f"{block}.conv0" if where == "conv0" else f"{block}.conv1")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "GeneratorConfig":
        d = json.loads(text)
        d["channels"] = tuple(d["channels"])
        d["resample_filter"] = tuple(d["resample_filter"])
        return cls(**d)

    def mapping_module(self) -> networks.MappingNetwork:
        return networks.MappingNetwork(
            z_dim=self.z_dim, w_dim=self.w_dim, num_ws=self.num_ws, num_layers=self.mapping_layers,
            layer_features=self.mapping_layer_features, lr_multiplier=self.mapping_lr_multiplier,
        )

    def synthesis_module(self, up_method: str = "auto", torgb_method: str = "auto",
                         epilogue_grad: str = "recompute") -> networks.SynthesisNetwork:
        """The synthesis network; up_method, torgb_method and epilogue_grad are how its up-sampling
        convolutions (`ops.conv2d_up2`), its ToRGB layers and its layers' backward (`ops.layer_epilogue`)
        are computed, which changes the speed, not the function."""
        return networks.SynthesisNetwork(
            w_dim=self.w_dim, img_resolution=self.img_resolution, img_channels=self.img_channels,
            channels=self.channels, conv_clamp=self.conv_clamp, resample_filter=self.resample_filter,
            up_method=up_method, torgb_method=torgb_method, epilogue_grad=epilogue_grad,
        )


@functools.partial(jax.jit, static_argnums=0)
def init_params(config: GeneratorConfig, key: jax.Array) -> Params:
    """Random parameters with the original initialisation (noise strengths and w_avg are zero)."""
    k_map, k_syn = jax.random.split(key)
    z = jnp.zeros((1, config.z_dim))
    ws = jnp.zeros((1, config.num_ws, config.w_dim))
    mapping = config.mapping_module().init(k_map, z)["params"]
    synthesis = config.synthesis_module().init(k_syn, ws, ["const"] * len(config.noise_names))["params"]
    return {"mapping": mapping, "synthesis": synthesis}


def mapping(config: GeneratorConfig, params: Params, z: jax.Array, *, truncation_psi: float = 1.0,
            truncation_cutoff: Optional[int] = None) -> jax.Array:
    """z [N, z_dim] -> ws [N, num_ws, w_dim]. Truncation lerps toward w_avg for the first
    `truncation_cutoff` ws (all when None)."""
    z = jnp.asarray(z)
    if z.ndim != 2 or z.shape[1] != config.z_dim:
        raise ValueError(f"z has shape {z.shape}; expected [N, {config.z_dim}]")
    return config.mapping_module().apply({"params": params["mapping"]}, z, truncation_psi, truncation_cutoff)


def noise_list(config: GeneratorConfig, noise: NoiseSpec) -> list[NoiseInput]:
    """Expands "const" / "none" / a list of maps into one entry per noise layer, checking the count."""
    n = len(config.noise_names)
    if isinstance(noise, str):
        if noise == "const":
            return ["const"] * n
        if noise == "none":
            return [None] * n
        raise ValueError(f"noise={noise!r}: use 'const', 'none', or a list of {n} maps "
                         "(the generator draws no random numbers; see make_noise)")
    if noise is None:
        return [None] * n
    noise = list(noise)
    if len(noise) != n:
        raise ValueError(f"noise has {len(noise)} maps; this generator has {n}: {config.noise_names}")
    for name, entry in zip(config.noise_names, noise):
        if isinstance(entry, str) and entry != "const":
            raise ValueError(f"noise entry for {name} is {entry!r}: use 'const', None, or an array")
    return noise


def synthesis(config: GeneratorConfig, params: Params, ws: jax.Array, *, noise: NoiseSpec = "const",
              fused_modconv: bool = True, edits: Optional[Edits] = None,
              return_activations: bool = False, dtype: Optional[str] = None, up_method: str = "auto",
              torgb_method: str = "auto", epilogue_grad: str = "recompute"):
    """ws [N, num_ws, w_dim] -> image [N, R, R, C] (about [-1, 1]).

    Args:
      noise: "const" (the stored maps), "none", or one entry per noise layer in synthesis order
        (`config.noise_names`), each [R, R] (shared by the batch), [N, R, R], "const" or None.
      fused_modconv: modulate weights and run a grouped convolution (True), or modulate activations
        around one shared convolution (False). Same numbers, different speed.
      edits: {activation name: edit}; synthesis continues from the edited tensor (activation-tensor
        editing). An edit is an `activations.Mix` (data: combines the point's features and skip
        image with another image's, see i2spp_jax.activations) or a function of the tensor.
        Names: `config.activation_names`.
      return_activations: also return {name: tensor} for every activation point (after edits).
      dtype: the feature maps' and convolutions' dtype: None (the parameters', float32) or
        "bfloat16" (the engine's bf16 mode: convolutions in bf16 on the tensor cores; the styles,
        demodulation coefficients and the skip image, hence the returned image, stay float32).
      up_method: how the blocks' up-sampling convolutions are computed (`networks.UP_METHODS`):
        "transposed" (the reference's order), "polyphase" (`ops.conv2d_up2_polyphase`, every block),
        "polyphase_last" (in the last block only), "polyphase_last2" (the last two) or "auto" (the
        fastest measured on the backend: `networks.resolve_up_method`). Same numbers up to rounding.
      torgb_method: how the ToRGB layers are computed (`networks.TORGB_METHODS`): "conv" (the
        reference's modulated 1x1 convolution), "matmul" (`ops.modulated_matmul`), "reduce"
        (`ops.modulated_reduce`) or "auto" (the fastest measured for the backend and `dtype`:
        `networks.resolve_torgb_method`, "reduce" in bfloat16 on a GPU). Same numbers up to rounding.
      epilogue_grad: how reverse mode gets through the layers' activations (`ops.EPILOGUE_GRADS`):
        "recompute" (the default: no stored mask) or "autodiff" (JAX's own). The same numbers, the
        gradients bit for bit.
    Returns:
      image, or (image, activations) when return_activations.
    """
    ws = jnp.asarray(ws)
    if ws.ndim != 3 or ws.shape[1:] != (config.num_ws, config.w_dim):
        raise ValueError(f"ws has shape {ws.shape}; expected [N, {config.num_ws}, {config.w_dim}]")
    unknown = set(edits or {}) - set(config.activation_names)
    if unknown:
        raise ValueError(f"edits name unknown activation points {sorted(unknown)}; "
                         f"valid: {config.activation_names}")
    img, aux = config.synthesis_module(up_method, torgb_method, epilogue_grad).apply(
        {"params": params["synthesis"]}, ws, noise_list(config, noise), fused_modconv, edits,
        return_activations, None if dtype is None else jnp.dtype(dtype),
    )
    return (img, aux) if return_activations else img


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _mapping_jit(config, params, z, truncation_psi, truncation_cutoff):
    return mapping(config, params, z, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 7, 8, 9, 10))
def _synthesis_jit(config, params, ws, noise, fused_modconv, return_activations, edits, dtype, up_method,
                   torgb_method, epilogue_grad):
    return synthesis(config, params, ws, noise=noise, fused_modconv=fused_modconv, edits=edits,
                     return_activations=return_activations, dtype=dtype, up_method=up_method,
                     torgb_method=torgb_method, epilogue_grad=epilogue_grad)


def make_noise(config: GeneratorConfig, key: jax.Array, batch: Optional[int] = None) -> list[jax.Array]:
    """N(0, I) noise maps, one per layer, from an explicit key (fold_in(key, layer index)).

    Returns [R, R] maps, or [batch, R, R] when batch is given.
    """
    return face.make_noise(config.noise_shapes, key, batch)


@flax.struct.dataclass
class Generator(GeneratorFace):
    """A StyleGAN2 generator: static `config` and a `params` pytree. Itself a pytree.

    `up_method` is how the up-sampling convolutions are computed (`networks.UP_METHODS`): "auto" (the
    default: the fastest measured on the backend, `networks.resolve_up_method`: "polyphase_last" on a
    GPU, "transposed" elsewhere), "transposed" (the reference's order), "polyphase", "polyphase_last"
    or "polyphase_last2" (`G.replace(up_method="transposed")`). `torgb_method` is how the ToRGB layers
    are computed (`networks.TORGB_METHODS`): "auto" (the default: `networks.resolve_torgb_method`, "reduce"
    in the bf16 mode on a GPU, "conv" elsewhere), "conv" (the reference's), "matmul" or "reduce".
    `epilogue_grad` is how the layers' backward finds where each leaky ReLU was negative
    (`ops.EPILOGUE_GRADS`): "recompute" (the default) or "autodiff". Each is the same function up to
    float rounding; static, so every program compiled for G keys on it. Not part of a checkpoint.
    """

    params: Params
    config: GeneratorConfig = flax.struct.field(pytree_node=False)
    up_method: str = flax.struct.field(pytree_node=False, default="auto")
    torgb_method: str = flax.struct.field(pytree_node=False, default="auto")
    epilogue_grad: str = flax.struct.field(pytree_node=False, default="recompute")

    def mapping(self, z: jax.Array, truncation_psi: float = 1.0, truncation_cutoff: Optional[int] = None):
        """z [N, z_dim] -> ws [N, num_ws, w_dim]; see `mapping`. Compiled once per shape."""
        return _mapping_jit(self.config, self.params, jnp.asarray(z), float(truncation_psi),
                            truncation_cutoff)

    def synthesis(self, ws: jax.Array, noise: NoiseSpec = "const", *, fused_modconv: bool = True,
                  edits: Optional[Edits] = None, return_activations: bool = False, dtype: Optional[str] = None):
        """ws [N, num_ws, w_dim] -> image [N, R, R, C]; see `synthesis`. Compiled once per shape and
        edit structure (edits that are functions run the functional core: wrap it in your own jax.jit)."""
        edits = dict(edits or {})
        # The functional core runs unjitted for edits that are functions, and inside a caller's trace (the
        # engine's step), where a nested jit would only lengthen the trace (face.traced).
        if face.traced(ws) or any(not activations.is_data_edit(e) for e in edits.values()):
            return synthesis(self.config, self.params, ws, noise=noise, fused_modconv=fused_modconv,
                             edits=edits, return_activations=return_activations, dtype=dtype,
                             up_method=self.up_method, torgb_method=self.torgb_method,
                             epilogue_grad=self.epilogue_grad)
        # "const" entries become the stored maps (the same numbers), so that the noise is a pytree.
        maps = [c if isinstance(n, str) else n for n, c in zip(noise_list(self.config, noise), self.noise_const)]
        return _synthesis_jit(self.config, self.params, jnp.asarray(ws), maps, fused_modconv, return_activations,
                              edits, dtype, self.up_method, self.torgb_method, self.epilogue_grad)


def replicate_channels(G: "Generator", img_channels: int) -> "Generator":
    """A 1-channel generator as one with `img_channels` channels that draws the same (grey) image in
    each: the ToRGB weights and biases are copied per channel, nothing else changes, so every
    channel is the original output (ToRGB does not demodulate, so its output channels are
    independent; float32 convolutions with 3 outputs may round differently, by ~1e-6)."""
    if G.img_channels != 1:
        raise ValueError(f"replicate_channels takes a 1-channel generator; this one has {G.img_channels}")
    flat = flax.traverse_util.flatten_dict(G.params)
    out = {}
    for path, leaf in flat.items():
        if "torgb" in path and "affine" not in path and path[-1] in ("weight", "bias"):
            leaf = jnp.repeat(leaf, img_channels, axis=-1)
        out[path] = leaf
    config = dataclasses.replace(G.config, img_channels=img_channels)
    return G.replace(params=flax.traverse_util.unflatten_dict(out), config=config)


# The random-weight demo generator ("demo-random"): no files, used by tests. Its weights are the original
# initialisation from a fixed seed with three stated changes, so that every parameter matters and
# images land in about [-1, 1]: biases ~ N(0, 0.1^2), noise strengths ~ U[0.05, 0.2] per layer,
# ToRGB weights scaled by 0.25; w_avg is the mean of mapping() over 4096 z from a fixed seed.
DEMO_CONFIG = GeneratorConfig.from_channel_base(
    img_resolution=64,  # 64x64 RGB
    channel_base=4096,  # widths 128 (4..32) and 64 (64x64)
    channel_max=128,
    z_dim=128,
    w_dim=128,
    mapping_layers=4,
)
DEMO_SEED = 2020
DEMO_NOISE_STRENGTH = (0.05, 0.2)
DEMO_TORGB_SCALE = 0.25


def random_params(config: GeneratorConfig, key: jax.Array) -> Params:
    """`init_params`, then what a trained generator has and a fresh one lacks, so that every parameter
    matters: random biases (0.1 N(0, 1); the mapping's affine layers keep theirs), noise strengths
    uniform in DEMO_NOISE_STRENGTH (a fresh layer's 0 would make its noise map unused), ToRGB weights
    scaled by DEMO_TORGB_SCALE, and w_avg the mean of 4096 mapped z."""
    params = init_params(config, key)
    flat = flax.traverse_util.flatten_dict(params)
    out = {}
    for i, (path, leaf) in enumerate(sorted(flat.items())):
        k = jax.random.fold_in(key, i + 1)
        name = path[-1]
        if name == "bias" and "affine" not in path:
            leaf = 0.1 * jax.random.normal(k, leaf.shape)
        elif name == "noise_strength":
            lo, hi = DEMO_NOISE_STRENGTH
            leaf = jax.random.uniform(k, leaf.shape, minval=lo, maxval=hi)
        elif name == "weight" and "torgb" in path and "affine" not in path:
            leaf = leaf * DEMO_TORGB_SCALE
        out[path] = leaf
    params = flax.traverse_util.unflatten_dict(out)
    z = jax.random.normal(jax.random.fold_in(key, 0), (4096, config.z_dim))
    params["mapping"]["w_avg"] = jnp.mean(_mapping_jit(config, params, z, 1.0, None)[:, 0], axis=0)
    return params


@functools.lru_cache(maxsize=2)
def random_demo_generator(seed: int = DEMO_SEED) -> Generator:
    """The small seeded random-weight generator ("demo-random", see DEMO_CONFIG), for tests. Cached.
    The trained demo generator is `i2spp_jax.demo_generator()` / load_generator("demo")."""
    return Generator(params=random_params(DEMO_CONFIG, jax.random.PRNGKey(seed)), config=DEMO_CONFIG)
