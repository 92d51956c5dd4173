"""StyleGAN2's low-level operations in JAX, NHWC.

The numerics follow stylegan2-ada-pytorch's reference implementations (`upfirdn2d._upfirdn2d_ref`,
`bias_act._bias_act_ref`, `modulated_conv2d`, `conv2d_resample`) so that a converted network gives
the official numbers. Every function is pure and works under jit, grad and vmap. The FIR filter
(`upfirdn2d`) carries a hand-written gradient (a custom VJP, issue 9's speed work), so the networks
are differentiable in reverse mode (jax.grad, jax.vjp, jax.jacrev) and not in forward mode (jax.jvp
and jax.jacfwd raise JAX's "can't apply forward-mode autodiff (jvp) to a custom_vjp function").
"""

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_DIMS = ("NHWC", "HWIO", "NHWC")
LRELU_ALPHA = 0.2
LRELU_GAIN = float(np.sqrt(2.0))


def normalize_2nd_moment(x: jax.Array, axis: int = -1, eps: float = 1e-8) -> jax.Array:
    """Pixel norm of the mapping network's input: x / sqrt(mean(x**2) + eps) along `axis`."""
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + eps)


def bias_act(
    x: jax.Array,
    b: Optional[jax.Array] = None,
    *,
    act: str = "linear",
    gain: Optional[float] = None,
    clamp: Optional[float] = None,
) -> jax.Array:
    """Adds a per-channel bias (last axis), applies `act`, scales by `gain`, clamps to +-clamp.

    `gain` defaults to the activation's own (sqrt(2) for lrelu, 1 for linear), as in the original.
    """
    if b is not None:
        x = x + b.astype(x.dtype)
    if act == "lrelu":
        x = jnp.where(x >= 0, x, x * LRELU_ALPHA)
        default_gain = LRELU_GAIN
    elif act == "linear":
        default_gain = 1.0
    else:
        raise ValueError(f"bias_act: unsupported activation {act!r} (StyleGAN2 uses 'lrelu' and 'linear')")
    gain = default_gain if gain is None else gain
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = jnp.clip(x, -clamp, clamp)
    return x


# How a synthesis layer's backward finds where its leaky ReLU was negative (issue 9's
# rematerialisation lever; the same numbers either way): "recompute" keeps the layer's inputs and
# recomputes its pre-activation inside the backward; "autodiff" is JAX's own, which keeps the comparison
# as a residual. On a GPU XLA then writes that mask (a byte per element) in the forward and reads it
# back, in the 1024x1024 block's first layer in a pass of its own. Per W+ step (config-f, batch 8, 25 per
# dispatch) on a compile-only H200 (`experiments.gpu_hlo`): bf16 34.78 -> 30.97 GB, TF32 65.06 -> 62.45;
# measured on an H200, 447 against 428 img-it/s in bf16 (BUILD_NOTES.md, GPU, sixth lease).
EPILOGUE_GRADS = ("recompute", "autodiff")


def layer_epilogue(
    y: jax.Array,  # [N, H, W, O] the modulated convolution's output
    dcoefs: Optional[jax.Array],  # [N, O] demodulation coefficients to apply, or None
    noise: Optional[jax.Array],  # [N or 1, H, W, 1] noise map times its strength, or None
    bias: jax.Array,  # [O]
    *,
    clamp: Optional[float] = None,
    grad: str = "recompute",  # EPILOGUE_GRADS
) -> jax.Array:
    """A synthesis layer after its convolution: lrelu(y * dcoefs + noise + bias) * sqrt(2), clamped to
    +-clamp, in y's dtype and the reference's order of operations. `grad` only changes how reverse mode
    gets there (EPILOGUE_GRADS): "recompute" saves no mask, and its gradients are autodiff's bit for
    bit (the backward runs autodiff's own on the recomputed forward)."""
    if grad == "autodiff":
        return _epilogue(y, dcoefs, noise, bias, clamp)
    if grad != "recompute":
        raise ValueError(f"layer_epilogue: grad={grad!r}; use one of {EPILOGUE_GRADS}")
    return _epilogue_recompute(y, dcoefs, noise, bias, clamp)


def _epilogue(y, dcoefs, noise, bias, clamp):
    if dcoefs is not None:
        y = y * dcoefs[:, None, None, :].astype(y.dtype)
    if noise is not None:
        y = y + noise.astype(y.dtype)
    return bias_act(y, bias, act="lrelu", clamp=clamp)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _epilogue_recompute(y, dcoefs, noise, bias, clamp):
    return _epilogue(y, dcoefs, noise, bias, clamp)


def _epilogue_recompute_fwd(y, dcoefs, noise, bias, clamp):
    return _epilogue(y, dcoefs, noise, bias, clamp), (y, dcoefs, noise, bias)


def _epilogue_recompute_bwd(clamp, res, g):
    # The barrier on the small inputs keeps XLA from merging the recomputed pre-activation with the
    # forward's (common subexpressions: the mask would be stored as before). One on y too would make
    # y's producer (the polyphase interleave) write its output instead of fusing into the readers.
    y, small = res[0], jax.lax.optimization_barrier(res[1:])
    if y.dtype == jnp.bfloat16:
        # y + 0 * g is y (for a finite g) but cannot be computed before g: without it XLA computes the
        # recomputed mask in the forward's kernel that also reads y, and writes it (sibling fusion). In
        # bfloat16 the tie makes XLA fuse the recomputation into the backward's reductions (gpu_hlo, W+
        # step: 33.21 -> 30.97 GB; noise step 30.21 either way); in float32 XLA then writes the mask in a kernel
        # of its own (62.45 -> 65.99 GB), so float32 goes without.
        y = y + g * jnp.zeros((), g.dtype)
    _, vjp = jax.vjp(lambda *a: _epilogue(*a, clamp), y, *small)
    return vjp(g)


_epilogue_recompute.defvjp(_epilogue_recompute_fwd, _epilogue_recompute_bwd)


def setup_filter(taps: Sequence[float]) -> np.ndarray:
    """Normalised separable 1-D FIR filter: [1, 3, 3, 1] -> [1, 3, 3, 1] / 8 (2-D sum is 1)."""
    f = np.asarray(taps, dtype=np.float32)
    if f.ndim != 1 or f.size == 0:
        raise ValueError(f"resample filter must be a non-empty list of taps, got {taps!r}")
    return f / f.sum()


def _fir_valid(x: jax.Array, f: tuple[float, ...], axis: int) -> jax.Array:
    """Valid correlation of x with the flipped 1-D filter along `axis` (true convolution): one fused
    pass of shifted slices, each times its tap."""
    taps = f[::-1]
    out_len = x.shape[axis] - len(taps) + 1
    acc = None
    for j, t in enumerate(taps):
        term = jax.lax.slice_in_dim(x, j, j + out_len, axis=axis) * jnp.asarray(t, x.dtype)  # keeps bf16 bf16
        acc = term if acc is None else acc + term
    return acc


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _fir_1d(x: jax.Array, f: tuple[float, ...], axis: int) -> jax.Array:
    """`_fir_valid` with its transpose written as the same kind of pass: the full correlation of the
    cotangent with the reversed taps (zero-padded, then valid). JAX's own transpose of the slices pads
    the cotangent once per tap and adds the padded copies, one pass each, which XLA's CPU backend
    does not fuse: 21 of the 453 ms W+ step at the benchmark's 256x256 sizes (BUILD_NOTES.md, issue 9)."""
    return _fir_valid(x, f, axis)


def _fir_1d_fwd(x, f, axis):
    return _fir_valid(x, f, axis), None


def _fir_1d_bwd(f, axis, _, g):
    pad = [(0, 0, 0)] * g.ndim
    pad[axis] = (len(f) - 1, len(f) - 1, 0)
    return (_fir_valid(jax.lax.pad(g, jnp.zeros((), g.dtype), pad), f[::-1], axis),)


_fir_1d.defvjp(_fir_1d_fwd, _fir_1d_bwd)


def upfirdn2d(
    x: jax.Array,  # [N, H, W, C]
    f: np.ndarray,  # [taps], normalised separable filter
    *,
    up: int = 1,
    padding: Sequence[int] = (0, 0, 0, 0),  # (x0, x1, y0, y1), may be negative (crop)
    gain: float = 1.0,
) -> jax.Array:
    """Upsample (zero insertion), pad, FIR-filter: `upfirdn2d._upfirdn2d_ref` with down=1.

    The 2-D filter is the outer product of `f` with itself, times `gain`.
    """
    px0, px1, py0, py1 = padding
    # The reference inserts up-1 zeros after every sample; interior padding puts them between
    # samples, so the trailing zeros are added to the high-side padding.
    zero = jnp.zeros((), x.dtype)
    cfg = [(0, 0, 0), (py0, py1 + up - 1, up - 1), (px0, px1 + up - 1, up - 1), (0, 0, 0)]
    x = jax.lax.pad(x, zero, cfg)
    f1 = tuple(float(t) for t in f * np.float32(np.sqrt(gain)))  # static taps (hashable), float32 values
    x = _fir_1d(x, f1, axis=1)
    x = _fir_1d(x, f1, axis=2)
    return x


def upsample2d(x: jax.Array, f: np.ndarray, up: int = 2) -> jax.Array:
    """2x FIR upsampling of the ToRGB skip image: `upfirdn2d.upsample2d` (gain up**2)."""
    fw = len(f)
    p = ((fw + up - 1) // 2, (fw - up) // 2)
    return upfirdn2d(x, f, up=up, padding=(p[0], p[1], p[0], p[1]), gain=up * up)


def conv2d(x: jax.Array, w: jax.Array, *, groups: int = 1) -> jax.Array:
    """'Same' correlation with an odd square kernel: x [N, H, W, I], w [k, k, I/groups, O]."""
    p = w.shape[0] // 2
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), [(p, p), (p, p)], dimension_numbers=_DIMS, feature_group_count=groups
    )


def up2_fir_padding(k: int, fw: int) -> tuple[int, int]:
    """(low, high) padding of the FIR filter after `conv2d_up2`'s transposed convolution: the
    reference's px0 and px1 after its adjustments, for a k x k kernel and fw FIR taps."""
    up = 2
    return k // 2 + (fw + up - 1) // 2 - (k - 1), k // 2 + (fw - up) // 2 - (k - up)


def conv_transpose2d_up2(x: jax.Array, w: jax.Array, *, groups: int = 1) -> jax.Array:
    """Stride-2 transposed convolution, [N, H, W, I] -> [N, 2H + k - 2, 2W + k - 2, O]: a correlation
    of the zero-dilated input with the spatially flipped kernel."""
    k = w.shape[0]
    return jax.lax.conv_general_dilated(
        x,
        w[::-1, ::-1],
        (1, 1),
        [(k - 1, k - 1), (k - 1, k - 1)],
        lhs_dilation=(2, 2),
        dimension_numbers=_DIMS,
        feature_group_count=groups,
    )


UP2_METHODS = ("transposed", "transposed_dw", "transposed_pl", "polyphase")


def conv2d_up2(x: jax.Array, w: jax.Array, f: np.ndarray, *, groups: int = 1,
               method: str = "transposed") -> jax.Array:
    """3x3 convolution with 2x upsampling, as `conv2d_resample(up=2, padding=1)`: x [N, H, W, I],
    w [k, k, I/groups, O] -> [N, 2H, 2W, O].

    method "transposed" (the reference's order): a stride-2 transposed convolution (output 2H+1),
    then the FIR filter with gain 4 and padding 1 (output 2H). "transposed_dw": the same, the FIR as
    one depthwise convolution (`fir2d_depthwise`); "transposed_pl": the FIR as one Pallas kernel
    (`fir2d_pallas`). "polyphase": the same function as one convolution
    at the input's resolution (`conv2d_up2_polyphase`).
    """
    if method == "polyphase":
        return conv2d_up2_polyphase(x, w, f, groups=groups)
    if method not in UP2_METHODS:
        raise ValueError(f"up-sampling method {method!r}: use one of {UP2_METHODS}")
    pad0, pad1 = up2_fir_padding(w.shape[0], len(f))
    x = conv_transpose2d_up2(x, w, groups=groups)
    if method == "transposed_dw":
        return fir2d_depthwise(x, f, padding=(pad0, pad1), gain=4)
    if method == "transposed_pl":
        return fir2d_pallas(x, f, padding=(pad0, pad1), gain=4)
    return upfirdn2d(x, f, padding=(pad0, pad1, pad0, pad1), gain=4)


def fir2d_depthwise(x: jax.Array, f: np.ndarray, *, padding: tuple[int, int], gain: float) -> jax.Array:
    """`upfirdn2d(x, f, padding=(p0, p1, p0, p1), gain=gain)` (no up-sampling) as one depthwise
    convolution: each channel by the 2-D filter (the outer product of `f` with itself, times `gain`),
    the zero padding the convolution's own; float32 input is filtered in full float32 whatever the
    matmul precision. XLA emits `upfirdn2d`'s padded passes with one bounds-checked scalar load per
    tap and element (1.2-2.7 TB/s on an H200, where its vectorised fusions ran at 3.8-4.6); on a GPU
    this is one cuDNN call forward and one backward, with no fused pad. Measured there, cuDNN's
    depthwise kernels lose: the W+ step at config-f ran 2.4-2.7x slower with them (BUILD_NOTES.md,
    issue 9), so no default uses this."""
    c = x.shape[-1]
    k2 = np.outer(f, f)[::-1, ::-1] * np.float32(gain)  # a true convolution: the taps reversed
    kernel = jnp.asarray(np.broadcast_to(k2[:, :, None, None], k2.shape + (1, c)), x.dtype)
    p0, p1 = padding
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), [(p0, p1), (p0, p1)], dimension_numbers=_DIMS,
                                        feature_group_count=c, precision=jax.lax.Precision.HIGHEST)


def fir2d_pallas(x: jax.Array, f: np.ndarray, *, padding: tuple[int, int], gain: float) -> jax.Array:
    """`upfirdn2d(x, f, padding=(p0, p1, p0, p1), gain=gain)` (no up-sampling) as one hand-written
    kernel (Pallas, Triton on a GPU): each output tile reads its input window with masked vector loads
    along the channels, the zero padding being the masks, and sums the 2-D filter's taps in float32.
    One pass forward and one backward (the adjoint: the same kernel with the taps reversed), where
    XLA emits `upfirdn2d`'s padded passes with one bounds-checked scalar load per tap and element.
    The same numbers as `upfirdn2d` up to the sum's rounding. Elsewhere than on a GPU the kernel is
    interpreted (slow: for tests), so no default on the CPU uses it."""
    p0, p1 = padding
    n, h, w, c = x.shape
    if c & (c - 1):  # the kernel's channel block is all of them, and Triton's blocks are powers of 2
        return upfirdn2d(x, f, padding=(p0, p1, p0, p1), gain=gain)
    taps = tuple(float(t) for t in np.asarray(f, np.float64)[::-1] * np.sqrt(gain))  # a true convolution
    out_hw = (h + p0 + p1 - len(taps) + 1, w + p0 + p1 - len(taps) + 1)
    return _fir2d_pallas(x, taps, (p0, p0), out_hw, (h, w))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _fir2d_pallas(x, taps, pad, out_hw, in_hw):
    """out[n, i, j, c] = sum_{a,b} taps[a] taps[b] x[n, i + a - pad[0], j + b - pad[1], c], x zero outside."""
    kernel = functools.partial(_fir2d_kernel, taps=taps, pad=pad, out_hw=out_hw)
    if jax.default_backend() == "gpu":
        return kernel(x)
    # elsewhere the kernel is interpreted, unless the program is lowered for a GPU after all (a
    # compile-only device: experiments.gpu_hlo); lowering both branches costs about 0.4 s per call
    return jax.lax.platform_dependent(x, cuda=kernel, default=functools.partial(kernel, interpret=True))


def _fir2d_kernel(x, *, taps, pad, out_hw, interpret=False):
    """The Pallas kernel. On a GPU a window starting before the array is read through its masks; the
    interpreter would clamp such a start instead (lax.dynamic_slice), so there x is first padded at the
    low end by `pad` and every window read from `pad` further on: the same masks, aligned starts."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    n, h, w, c = x.shape
    ho, wo = out_hw
    k = len(taps)
    tile = max(1, 4096 // c)  # output pixels per program: 4096 elements (8 KB in bf16), as square as fits
    bw = 1 << min(3, tile.bit_length() // 2)
    bh = max(1, tile // bw)
    base = pad if interpret else (0, 0)
    if interpret:
        x = jnp.pad(x, ((0, 0), (pad[0], 0), (pad[1], 0), (0, 0)))

    def kernel(x_ref, o_ref):
        b, ti, tj = pl.program_id(0), pl.program_id(1), pl.program_id(2)
        i = ti * bh + jnp.arange(bh)
        j = tj * bw + jnp.arange(bw)
        every = jnp.arange(c) >= 0  # all true: a mask has the block's full shape
        acc = jnp.zeros((bh, bw, c), jnp.float32)
        for a in range(k):
            r = i + a - pad[0]
            rows = (r >= 0) & (r < h)
            for bb in range(k):
                q = j + bb - pad[1]
                mask = rows[:, None, None] & ((q >= 0) & (q < w))[None, :, None] & every[None, None, :]
                rows_at = pl.ds(ti * bh + a - pad[0] + base[0], bh)
                window = x_ref.at[b, rows_at, pl.ds(tj * bw + bb - pad[1] + base[1], bw), :]
                acc = acc + (taps[a] * taps[bb]) * plgpu.load(window, mask=mask, other=0).astype(jnp.float32)
        inside = (i < ho)[:, None, None] & (j < wo)[None, :, None] & every[None, None, :]
        plgpu.store(o_ref.at[b, pl.ds(ti * bh, bh), pl.ds(tj * bw, bw), :], acc.astype(o_ref.dtype), mask=inside)

    return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct((n, ho, wo, c), x.dtype),
                          grid=(n, pl.cdiv(ho, bh), pl.cdiv(wo, bw)), interpret=interpret,
                          compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=1))(x)


def _fir2d_pallas_fwd(x, taps, pad, out_hw, in_hw):
    return _fir2d_pallas(x, taps, pad, out_hw, in_hw), None


def _fir2d_pallas_bwd(taps, pad, out_hw, in_hw, _, g):
    k = len(taps)  # x[p] met out[p - a + pad] through taps[a]: the taps reversed, offset k - 1 - pad
    return (_fir2d_pallas(g, taps[::-1], (k - 1 - pad[0], k - 1 - pad[1]), in_hw, out_hw),)


_fir2d_pallas.defvjp(_fir2d_pallas_fwd, _fir2d_pallas_bwd)


@functools.lru_cache(maxsize=None)
def up2_phase_taps(k: int, f: tuple[float, ...]) -> np.ndarray:
    """taps[r, a, u]: how much kernel tap u contributes to output phase r (row or column parity)
    from input offset a - ka // 2, for `conv2d_up2` with a k x k kernel and the FIR taps f (gain 2
    per axis). Output 2q + r of the transposed convolution then the FIR reads x[q + a - ka // 2]
    through sum_u w[u] taps[r, a, u]; ka is odd (as many offsets on each side)."""
    fw = len(f)
    pad0, _ = up2_fir_padding(k, fw)
    f2 = np.asarray(f, np.float64) * 2

    def weight(r, a, u):  # t[o] = sum_i x[i] w[o - 2i]; z[p] = sum_s t[s] f2[p - s + fw - 1 - pad0]
        j = r - 2 * a - u + fw - 1 - pad0
        return f2[j] if 0 <= j < fw else 0.0

    used = [a for a in range(-(k + fw), k + fw) if any(weight(r, a, u) for r in range(2) for u in range(k))]
    if max(used) != -min(used):
        raise ValueError(f"conv2d_up2_polyphase: a {k}x{k} kernel with {fw} FIR taps is not a 'same' convolution")
    span = range(min(used), max(used) + 1)
    taps = np.asarray([[[weight(r, a, u) for u in range(k)] for a in span] for r in range(2)], np.float32)
    taps.setflags(write=False)  # cached: shared by every caller
    return taps


def conv2d_up2_polyphase(x: jax.Array, w: jax.Array, f: np.ndarray, *, groups: int = 1) -> jax.Array:
    """`conv2d_up2` with the FIR folded into the kernel: each of the four output phases (row and
    column parity) is a 'same' convolution of x with a ka x ka kernel (ka = 3 for a 3x3 kernel and 4
    taps), so one convolution at x's resolution with 4*O outputs, then the phases interleaved. No FIR
    pass and no 2H+1 intermediate, for 4x the transposed convolution's multiply-adds (issue 9's
    "FIR up-sampling" lever). The same function as "transposed" up to float rounding."""
    t = jnp.asarray(up2_phase_taps(w.shape[0], tuple(float(v) for v in f)), w.dtype)
    # [ka, ka, I/g, ry, rx, O], folded at full precision (TF32 matmuls would round the weights once more)
    kernel = jnp.einsum("pau,qbv,uvio->abipqo", t, t, w, precision=jax.lax.Precision.HIGHEST)
    ka, _, in_g, _, _, out_ch = kernel.shape
    out_g = out_ch // groups  # a grouped convolution's outputs are contiguous per group
    kernel = kernel.reshape(ka, ka, in_g, 2, 2, groups, out_g).transpose(0, 1, 2, 5, 3, 4, 6)
    y = conv2d(x, kernel.reshape(ka, ka, in_g, 4 * out_ch), groups=groups)
    n, h, wd, _ = y.shape
    y = y.reshape(n, h, wd, groups, 2, 2, out_g).transpose(0, 1, 4, 2, 5, 3, 6)  # [N, H, ry, W, rx, g, O/g]
    return y.reshape(n, 2 * h, 2 * wd, out_ch)


def _kernel_1x1(weight: jax.Array, who: str) -> jax.Array:
    """A ToRGB kernel [1, 1, I, O] as its [I, O] matrix; any other size is refused, naming `who`."""
    if weight.shape[:2] != (1, 1):
        raise ValueError(f"{who}: a 1x1 kernel is needed, got {weight.shape[0]}x{weight.shape[1]}")
    return weight[0, 0]


def modulated_matmul(x: jax.Array, weight: jax.Array, styles: jax.Array) -> jax.Array:
    """`modulated_conv2d` of a 1x1 kernel without demodulation (ToRGB) as one matrix product per
    sample: x [N, H, W, I] times the modulated weights [N, I, O], which are small, so the activations
    are read once and never scaled in memory (issue 9's ToRGB lever). The same function as either
    modulation form of the convolution, up to rounding. Returns at least float32 (the skip image's
    dtype), accumulated so; the gradient (`_torgb_product`) takes the float32 cotangent as it is."""
    w = _kernel_1x1(weight, "modulated_matmul")[None] * styles[:, :, None]  # [N, I, O] modulated, float32
    return _torgb_product(x, w)


@jax.custom_vjp
def _torgb_product(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [N, H, W, I] @ w [N, I, O] per sample, in x's dtype with a float32 (or wider) result. Its VJP
    is written for few outputs (ToRGB's 3): the input gradient as O broadcast products, one elementwise
    pass that reads the float32 cotangent and writes x's dtype (autodiff's would be a matrix product
    with a float32 result, or a conversion pass over the cotangent first); the weight gradient as one
    reduction of x times the cotangent over the pixels."""
    out_dtype = jnp.promote_types(x.dtype, jnp.float32)
    return jnp.einsum("nhwi,nio->nhwo", x, w.astype(x.dtype), preferred_element_type=out_dtype)


def _torgb_product_fwd(x, w):
    return _torgb_product(x, w), (x, w)


def _torgb_product_bwd(res, g):
    x, w = res
    wg = w.astype(g.dtype)
    dx = functools.reduce(jnp.add, [g[..., o:o + 1] * wg[:, None, None, :, o] for o in range(w.shape[-1])])
    dw = jnp.sum(x.astype(g.dtype)[..., :, None] * g[..., None, :], axis=(1, 2))
    return dx.astype(x.dtype), dw.astype(w.dtype)


_torgb_product.defvjp(_torgb_product_fwd, _torgb_product_bwd)


def modulated_reduce(x: jax.Array, weight: jax.Array, styles: jax.Array) -> jax.Array:
    """`modulated_conv2d` of a 1x1 kernel without demodulation (ToRGB) as products and a sum over the
    input channels, per pixel: x [N, H, W, I] times the modulated weights [N, I, O] (O = 3, small).
    No convolution and no matrix product, so XLA fuses it like elementwise work: the activations are
    read once and never scaled in memory, and nothing is autotuned. The gradient (`_torgb_reduce`) is
    written for it: the input's as O broadcast products, elementwise so that XLA fuses it into the
    layer's backward that reads it, and the styles' as one sum over the pixels, as the layers' style
    gradients are. The same function as the convolution, up to rounding; computed and returned in
    float32 at least (the skip image's dtype)."""
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    return _torgb_reduce(x, styles.astype(dtype), _kernel_1x1(weight, "modulated_reduce").astype(dtype))


@jax.custom_vjp
def _torgb_reduce(x: jax.Array, styles: jax.Array, w: jax.Array) -> jax.Array:
    """x [N, H, W, I], styles [N, I], w [I, O] (float32): sum over I of x * styles * w, [N, H, W, O]."""
    wmod = jnp.swapaxes(w[None] * styles[:, :, None], 1, 2)  # [N, O, I]
    # [N, H, W, O, I] products summed over the last axis: a row reduction per output channel
    return jnp.sum(x.astype(w.dtype)[..., None, :] * wmod[:, None, None], axis=-1)


def _torgb_reduce_fwd(x, styles, w):
    return _torgb_reduce(x, styles, w), (x, styles, w)


def _torgb_reduce_bwd(res, g):
    x, styles, w = res
    g = g.astype(w.dtype)
    # u = g w^T per pixel [N, H, W, I], written as O products so that it stays elementwise (a reduce over
    # O would be a kernel of its own that writes the whole map); the input's cotangent is styles * u
    u = functools.reduce(jnp.add, [g[..., o, None] * w[:, o] for o in range(w.shape[-1])])
    dx = (u * styles[:, None, None, :]).astype(x.dtype)
    xw = x.astype(w.dtype)
    dstyles = jnp.sum(xw * u, axis=(1, 2))  # one sum over the pixels, input channels innermost
    # the weights' (unused in an embedding, where XLA drops it): sum over images and pixels
    dw = jnp.sum((xw * styles[:, None, None, :])[..., :, None] * g[..., None, :], axis=(0, 1, 2))
    return dx, dstyles, dw


_torgb_reduce.defvjp(_torgb_reduce_fwd, _torgb_reduce_bwd)


def modulated_conv2d(
    x: jax.Array,  # [N, H, W, I]
    weight: jax.Array,  # [k, k, I, O]
    styles: jax.Array,  # [N, I]
    *,
    demodulate: bool = True,
    up: int = 1,
    resample_filter: Optional[np.ndarray] = None,
    fused_modconv: bool = True,
    up_method: str = "transposed",
) -> tuple[jax.Array, Optional[jax.Array]]:
    """StyleGAN2's modulated convolution. Returns (y, dcoefs) with y [N, H*up, W*up, O].

    fused_modconv=True modulates (and demodulates) the weights per sample and runs one grouped
    convolution; False scales the activations before the shared convolution and returns the
    demodulation coefficients [N, O] for the caller to apply (they must be applied before the noise
    is added). Both are the same function; which is faster depends on batch size and backend.
    up_method: how up=2 is computed (`conv2d_up2`'s method); the same function either way.
    """
    n, _, _, in_ch = x.shape
    k, _, _, out_ch = weight.shape
    dcoefs = None
    if demodulate or fused_modconv:
        w = weight[None] * styles[:, None, None, :, None]  # [N, k, k, I, O]
    if demodulate:
        dcoefs = jax.lax.rsqrt(jnp.sum(jnp.square(w), axis=(1, 2, 3)) + 1e-8)  # [N, O]

    def conv(inp, kernel, groups):
        if up == 1:
            return conv2d(inp, kernel, groups=groups)
        if up == 2:
            return conv2d_up2(inp, kernel, resample_filter, groups=groups, method=up_method)
        raise ValueError(f"modulated_conv2d: up={up} is not supported (1 or 2)")

    if not fused_modconv:
        y = conv(x * styles[:, None, None, :].astype(x.dtype), weight.astype(x.dtype), 1)
        return y, dcoefs

    if demodulate:
        w = w * dcoefs[:, None, None, None, :]
    # Grouped convolution: the batch becomes groups of channels.
    xg = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, x.shape[1], x.shape[2], n * in_ch)
    wg = jnp.transpose(w, (1, 2, 3, 0, 4)).reshape(k, k, in_ch, n * out_ch)
    y = conv(xg, wg.astype(x.dtype), n)  # [1, H', W', N*O]
    y = y.reshape(y.shape[1], y.shape[2], n, out_ch).transpose(2, 0, 1, 3)
    return y, None
