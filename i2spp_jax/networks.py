"""Flax modules of the StyleGAN2 generator (stylegan2-ada-pytorch's 'skip' architecture), NHWC.

Parameter names follow stylegan2-ada-pytorch (`mapping/fc0/weight`, `synthesis/b8/conv0/affine/bias`,
`synthesis/b8/conv0/noise_const`, ...) so that the converters read as a renaming table. Layouts are
JAX's: dense weights [in, out], conv weights [k, k, in, out], `const` [4, 4, C]. Stored weights are
the raw parameters; equalized-learning-rate gains and lr multipliers are applied in the forward pass,
as in the original. `w_avg` and `noise_const` are buffers in PyTorch; here they sit in the params tree
because nothing here trains the generator.
"""

from typing import Any, Callable, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from i2spp_jax import activations, ops

NoiseInput = Union[None, str, jax.Array]  # None = no noise, "const" = the stored map, or a map
# {activation point: edit}; an edit is a function of that point's tensor, or an `activations.Mix`
# (data: combines the point's features and skip image with another image's).
Edits = Mapping[str, Union[Callable[[jax.Array], jax.Array], activations.Mix]]


def param(module: nn.Module, name: str, init: Callable, shape: tuple) -> jax.Array:
    """`module.param(name, init, shape)`, without flax's check of a stored parameter, which traces
    `init` under `jax.eval_shape` on every apply (0.8 s of a 3.5 s cProfile of the W+ step's trace at
    config-f; BUILD_NOTES.md, issue 9). A stored parameter's shape is checked against `shape` here."""
    if module.has_variable("params", name):
        value = module.get_variable("params", name)
        if jnp.shape(value) != tuple(shape):
            raise ValueError(f"parameter {'/'.join(module.scope.path + (name,))} has shape {jnp.shape(value)}; "
                             f"this network expects {tuple(shape)}: the weights are for another architecture")
        return value
    return module.param(name, init, shape)


class FullyConnectedLayer(nn.Module):
    """Equalized-lr dense layer: y = act(x @ (W * lr / sqrt(in)) + b * lr)."""

    features: int  # output features
    activation: str = "linear"  # 'linear' or 'lrelu'
    lr_multiplier: float = 1.0  # learning-rate multiplier of the equalized-lr parametrisation
    bias_init: float = 0.0  # initial bias value (1 for the style affines)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        weight = param(self, "weight", lambda k, s: jax.random.normal(k, s) / self.lr_multiplier,
                       (in_features, self.features))
        bias = param(self, "bias", lambda k, s: jnp.full(s, self.bias_init, jnp.float32), (self.features,))
        w = weight * (self.lr_multiplier / np.sqrt(in_features))
        return ops.bias_act(x @ w, bias * self.lr_multiplier, act=self.activation)


class MappingNetwork(nn.Module):
    """z [N, z_dim] -> ws [N, num_ws, w_dim], with truncation toward `w_avg`."""

    z_dim: int  # input latent (Z) dimensionality
    w_dim: int  # intermediate latent (W) dimensionality
    num_ws: int  # number of ws to broadcast to
    num_layers: int = 8  # dense layers
    layer_features: Optional[int] = None  # hidden width, None = w_dim
    lr_multiplier: float = 0.01  # learning-rate multiplier of the mapping layers

    @nn.compact
    def __call__(
        self,
        z: jax.Array,  # [N, z_dim]
        truncation_psi: float = 1.0,
        truncation_cutoff: Optional[int] = None,
    ) -> jax.Array:
        hidden = self.layer_features or self.w_dim
        x = ops.normalize_2nd_moment(z.astype(_at_least_f32(z)))
        for idx in range(self.num_layers):
            out = self.w_dim if idx == self.num_layers - 1 else hidden
            x = FullyConnectedLayer(out, "lrelu", self.lr_multiplier, name=f"fc{idx}")(x)
        w_avg = param(self, "w_avg", nn.initializers.zeros, (self.w_dim,))
        x = jnp.broadcast_to(x[:, None, :], (x.shape[0], self.num_ws, self.w_dim))
        if truncation_psi != 1:
            truncated = w_avg + truncation_psi * (x - w_avg)  # torch.lerp(w_avg, x, psi)
            if truncation_cutoff is None:
                x = truncated
            else:
                layer = jnp.arange(self.num_ws)[None, :, None]
                x = jnp.where(layer < truncation_cutoff, truncated, x)
        return x


def _at_least_f32(x: jax.Array):
    """float32 for lower precisions (as the original's .to(torch.float32)); float64 stays float64."""
    return jnp.promote_types(x.dtype, jnp.float32)


def _noise_map(noise: NoiseInput, const: jax.Array, n: int, res: int) -> Optional[jax.Array]:
    """One layer's noise input as [N or 1, res, res, 1], or None."""
    if noise is None:
        return None
    if isinstance(noise, str):
        if noise != "const":
            raise ValueError(f"noise entry {noise!r}: use 'const', None, or an array")
        noise = const
    noise = jnp.asarray(noise)
    if noise.ndim == 2:
        noise = noise[None]
    if noise.shape[-2:] != (res, res) or noise.ndim != 3 or noise.shape[0] not in (1, n):
        raise ValueError(f"noise map for a {res}x{res} layer has shape {noise.shape}; expected "
                         f"[{res}, {res}] or [{n}, {res}, {res}]")
    return noise[..., None]


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x up), noise, bias, lrelu * sqrt(2), optional clamp."""

    out_channels: int  # output feature maps
    resolution: int  # output resolution
    up: int = 1  # 1 or 2
    conv_clamp: Optional[float] = None  # clamp activations to +-X, None = off
    resample_filter: Sequence[float] = (1, 3, 3, 1)  # FIR taps for upsampling
    up_method: str = "transposed"  # how up=2 is computed (ops.conv2d_up2): the same function either way
    epilogue_grad: str = "recompute"  # ops.EPILOGUE_GRADS: how the backward finds the activation's mask
    kernel_size: int = 3

    @nn.compact
    def __call__(
        self,
        x: jax.Array,  # [N, H, W, I]
        w: jax.Array,  # [N, w_dim]
        noise: NoiseInput,
        fused_modconv: bool = True,
    ) -> jax.Array:
        in_channels = x.shape[-1]
        styles = FullyConnectedLayer(in_channels, bias_init=1.0, name="affine")(w)  # [N, I]
        k = self.kernel_size
        weight = param(self, "weight", nn.initializers.normal(1.0), (k, k, in_channels, self.out_channels))
        noise_const = param(self, "noise_const", nn.initializers.normal(1.0), (self.resolution, self.resolution))
        noise_strength = param(self, "noise_strength", nn.initializers.zeros, ())
        bias = param(self, "bias", nn.initializers.zeros, (self.out_channels,))

        x, dcoefs = ops.modulated_conv2d(
            x, weight, styles, up=self.up, resample_filter=ops.setup_filter(self.resample_filter),
            up_method=self.up_method,
            fused_modconv=fused_modconv,
        )
        n_map = _noise_map(noise, noise_const, x.shape[0], self.resolution)
        noise_term = None if n_map is None else n_map * noise_strength
        return ops.layer_epilogue(x, dcoefs, noise_term, bias, clamp=self.conv_clamp, grad=self.epilogue_grad)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv without demodulation, plus bias (linear), optional clamp."""

    out_channels: int  # image channels
    conv_clamp: Optional[float] = None
    method: str = "conv"  # TORGB_METHODS: a modulated 1x1 convolution, or a matrix product per sample

    @nn.compact
    def __call__(self, x: jax.Array, w: jax.Array, fused_modconv: bool = True) -> jax.Array:
        in_channels = x.shape[-1]
        styles = FullyConnectedLayer(in_channels, bias_init=1.0, name="affine")(w)
        styles = styles * (1.0 / np.sqrt(in_channels))
        weight = param(self, "weight", nn.initializers.normal(1.0), (1, 1, in_channels, self.out_channels))
        bias = param(self, "bias", nn.initializers.zeros, (self.out_channels,))
        if self.method == "matmul":  # the same function either way (and either fused_modconv)
            x = ops.modulated_matmul(x, weight, styles)
        elif self.method == "reduce":
            x = ops.modulated_reduce(x, weight, styles)
        else:
            x, _ = ops.modulated_conv2d(x, weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return ops.bias_act(x, bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the 'skip' synthesis network: [conv0 (up)], conv1, torgb, skip image."""

    in_channels: int  # 0 = the first (4x4, constant-input) block
    out_channels: int
    resolution: int
    img_channels: int
    conv_clamp: Optional[float] = None
    resample_filter: Sequence[float] = (1, 3, 3, 1)
    up_method: str = "transposed"  # conv0's up-sampling (ops.conv2d_up2's method)
    torgb_method: str = "conv"  # ToRGBLayer.method
    epilogue_grad: str = "recompute"  # SynthesisLayer.epilogue_grad

    @property
    def num_conv(self) -> int:
        return 1 if self.in_channels == 0 else 2

    @nn.compact
    def __call__(
        self,
        x: Optional[jax.Array],  # [N, R/2, R/2, in_channels] or None for the first block
        img: Optional[jax.Array],  # [N, R/2, R/2, img_channels] or None
        ws: jax.Array,  # [N, num_conv + 1, w_dim]
        noise: Sequence[NoiseInput],  # one entry per conv
        fused_modconv: bool,
        edits: Edits,
        aux: Optional[dict],
        dtype: Any = None,  # the feature maps' and convolutions' dtype; the skip image stays at least float32
    ) -> tuple[jax.Array, jax.Array]:
        name = f"b{self.resolution}"

        def tap(point: str, x: jax.Array, img: Optional[jax.Array]) -> tuple[jax.Array, Optional[jax.Array]]:
            key = f"{name}.{point}"
            edit = edits.get(key)
            x_dtype = x.dtype
            if activations.is_data_edit(edit):
                x, img = edit.apply(x, img)
            elif edit is not None and point == "img":
                img = edit(img)
            elif edit is not None:
                x = edit(x)
            x = x.astype(x_dtype)  # an edit mixing in float32 data leaves a bfloat16 network bfloat16
            if aux is not None:
                aux[key] = img if point == "img" else x
            return x, img

        layer = dict(resolution=self.resolution, conv_clamp=self.conv_clamp, resample_filter=self.resample_filter,
                     epilogue_grad=self.epilogue_grad)
        if self.in_channels == 0:
            const = param(self, "const", nn.initializers.normal(1.0),
                          (self.resolution, self.resolution, self.out_channels))
            x = jnp.broadcast_to(const[None], (ws.shape[0],) + const.shape)
            x = x if dtype is None else x.astype(dtype)
            x = SynthesisLayer(self.out_channels, name="conv1", **layer)(x, ws[:, 0], noise[0], fused_modconv)
        else:
            x = SynthesisLayer(self.out_channels, up=2, up_method=self.up_method, name="conv0", **layer)(
                x, ws[:, 0], noise[0], fused_modconv)
            x, img = tap("conv0", x, img)
            x = SynthesisLayer(self.out_channels, name="conv1", **layer)(x, ws[:, 1], noise[1], fused_modconv)
        x, img = tap("x", x, img)

        if img is not None:
            img = ops.upsample2d(img, ops.setup_filter(self.resample_filter))
        y = ToRGBLayer(self.img_channels, conv_clamp=self.conv_clamp, method=self.torgb_method, name="torgb")(
            x, ws[:, self.num_conv], fused_modconv)
        y = y.astype(_at_least_f32(y))  # the skip image accumulates in float32 (float64 under x64)
        img = y if img is None else img + y
        x, img = tap("img", x, img)
        return x, img


# How the synthesis network's up-sampling convolutions are computed, all the same function (issue 9's
# "FIR up-sampling" lever): "transposed" (the reference's order in every block), "polyphase" (the FIR
# folded into the kernel in every block), "polyphase_last" (only in the last block, the largest map
# with the fewest channels, where the FIR's passes cost most and the folded kernel's 4x multiply-adds
# least), "polyphase_last2" (the last two blocks: on an H200 in bf16 the 512 block's up-sampling layer
# alone ran faster folded too), or "auto": the one measured fastest on the backend the program is
# traced for (`resolve_up_method`). "transposed_dw" and "polyphase_last_dw": as "transposed" and
# "polyphase_last", with the FIR after the transposed convolutions as one depthwise convolution
# (`ops.fir2d_depthwise`: no fused pad, so no scalar loads in XLA's GPU code; but on an H200 cuDNN's
# depthwise kernels made the W+ step 2.4-2.7x slower: 163 against 447 img-it/s in bf16; BUILD_NOTES.md).
# "transposed_pl" and "polyphase_last_pl": the same with that FIR as one Pallas kernel (`ops.fir2d_pallas`:
# vector loads, one pass each way; interpreted, so slow, off a GPU). On an H200 in bf16 "polyphase_last_pl"
# measured 472 against 455 img-it/s, 484-487 with the ToRGB sums; it is not what "auto" picks because a
# Pallas kernel is one custom call, which jit's automatic partitioning cannot split over a batch mesh.
UP_METHODS = ("auto", "transposed", "polyphase", "polyphase_last", "polyphase_last2", "transposed_dw",
              "polyphase_last_dw", "transposed_pl", "polyphase_last_pl")


def resolve_up_method(up_method: str, backend: Optional[str] = None) -> str:
    """The concrete method `up_method` stands for on `backend` (None: JAX's default backend). "auto"
    is "polyphase_last" on a GPU (an H200 at config-f, batch 8, the W+ step: 271 against 264 img-it/s
    in TF32, 408 against 388 in bf16; "polyphase" in every block lost: 252 and 387, and
    "polyphase_last_dw": 117 and 163 against 282 and 447; BUILD_NOTES.md, issue 9) and "transposed"
    elsewhere (on the CPU the folded kernel's 4x multiply-adds lose: 581 against 499 ms per step at
    batch 1; TPUs are not measured)."""
    if up_method not in UP_METHODS:
        raise ValueError(f"up_method={up_method!r}: use one of {UP_METHODS}")
    if up_method != "auto":
        return up_method
    return "polyphase_last" if (backend or jax.default_backend()) == "gpu" else "transposed"


def block_up_method(up_method: str, resolution: int, img_resolution: int) -> str:
    """`ops.conv2d_up2`'s method for the block of output side `resolution` under `up_method`."""
    up_method = resolve_up_method(up_method)
    fir = next((sfx for sfx in ("_dw", "_pl") if up_method.endswith(sfx)), "")  # how the FIR runs, if not fused
    folded = {"transposed": 0, "polyphase_last": 1, "polyphase_last2": 2}.get(up_method.removesuffix(fir))
    if folded is None or resolution * 2**folded > img_resolution:  # None: every block
        return "polyphase"
    return "transposed" + fir


# How the ToRGB layers (modulated 1x1 convolutions, 3 outputs) are computed, the same function (issue
# 9's ToRGB levers): "conv" (the modulated convolution, as the reference), "matmul" (one matrix product
# per sample with modulated weights and a hand-written gradient, `ops.modulated_matmul`), "reduce"
# (products summed over the input channels, no convolution and no matrix product, `ops.modulated_reduce`),
# or "auto" (the default): the one measured fastest for the backend and the feature maps' dtype
# (`resolve_torgb_method`).
TORGB_METHODS = ("auto", "conv", "matmul", "reduce")


def resolve_torgb_method(torgb_method: str, dtype: Any = None, backend: Optional[str] = None) -> str:
    """The concrete method `torgb_method` stands for with feature maps of `dtype` (None: the
    parameters', float32) on `backend` (None: JAX's default backend). "auto" is "reduce" on a GPU in
    bfloat16 and "conv" everywhere else. Measured on an H200 (config-f, batch 8, the W+ step, 25
    iterations per dispatch, each process compiling cold; BUILD_NOTES.md, issue 9): in bf16 "reduce"
    469-471 img-it/s against 455 for "conv", its first call 26.5-30.1 s against 32.1 (18 fewer
    convolutions to autotune); in TF32 283 against 288, so "conv" stays there; "matmul" lost in both
    (0.6% in bf16). On the CPU "reduce" was neutral (2.43-2.69 against 2.54-2.77 img-it/s); TPUs are
    not measured."""
    check_torgb_method(torgb_method)
    if torgb_method != "auto":
        return torgb_method
    low = dtype is not None and jnp.dtype(dtype) == jnp.bfloat16
    return "reduce" if low and (backend or jax.default_backend()) == "gpu" else "conv"


def check_torgb_method(torgb_method: str) -> str:
    if torgb_method not in TORGB_METHODS:
        raise ValueError(f"torgb_method={torgb_method!r}: use one of {TORGB_METHODS}")
    return torgb_method


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, R, R, img_channels] (about [-1, 1]) and named activations."""

    w_dim: int
    img_resolution: int
    img_channels: int
    channels: Sequence[int]  # feature maps per block resolution, 4 .. img_resolution
    conv_clamp: Optional[float] = None
    resample_filter: Sequence[float] = (1, 3, 3, 1)
    up_method: str = "auto"  # UP_METHODS: how the blocks' conv0 up-sample
    torgb_method: str = "auto"  # TORGB_METHODS: how the blocks' ToRGB layers multiply
    epilogue_grad: str = "recompute"  # ops.EPILOGUE_GRADS: how the layers' backward finds the activation's mask

    @nn.compact
    def __call__(
        self,
        ws: jax.Array,  # [N, num_ws, w_dim]
        noise: Sequence[NoiseInput],  # one entry per noise layer, synthesis order
        fused_modconv: bool = True,
        edits: Optional[Edits] = None,
        return_activations: bool = False,
        dtype: Any = None,  # the feature maps' and convolutions' dtype (e.g. bfloat16); None = the parameters'
    ) -> tuple[jax.Array, dict]:
        log2 = int(np.log2(self.img_resolution))
        resolutions = [2**i for i in range(2, log2 + 1)]
        edits = dict(edits or {})
        aux = {} if return_activations else None
        ws = ws.astype(_at_least_f32(ws))
        x = img = None
        w_idx = noise_idx = 0
        torgb_method = resolve_torgb_method(self.torgb_method, dtype)
        if self.epilogue_grad not in ops.EPILOGUE_GRADS:
            raise ValueError(f"epilogue_grad={self.epilogue_grad!r}: use one of {ops.EPILOGUE_GRADS}")
        for i, res in enumerate(resolutions):
            block = SynthesisBlock(
                in_channels=0 if i == 0 else self.channels[i - 1],
                out_channels=self.channels[i],
                resolution=res,
                img_channels=self.img_channels,
                conv_clamp=self.conv_clamp,
                resample_filter=self.resample_filter,
                up_method=block_up_method(self.up_method, res, self.img_resolution),
                torgb_method=torgb_method,
                epilogue_grad=self.epilogue_grad,
                name=f"b{res}",
            )
            num_conv = 1 if i == 0 else 2
            x, img = block(
                x, img, ws[:, w_idx : w_idx + num_conv + 1], noise[noise_idx : noise_idx + num_conv],
                fused_modconv, edits, aux, dtype,
            )
            w_idx += num_conv
            noise_idx += num_conv
        return img, (aux or {})
