"""StyleGAN2's residual discriminator (stylegan2-ada-pytorch's 'resnet' architecture), NHWC.

Used only to train the project's own generators (`i2spp_jax.training`). It follows the official
network: FromRGB (1x1) at the top block, per block conv0 (3x3), conv1 (3x3, 2x FIR-down) and a
1x1 down-sampled skip summed with gain sqrt(1/2); an epilogue with the minibatch standard
deviation layer, a 3x3 conv, a dense layer and the output logit. Every layer uses the equalized
learning rate (weights stored ~N(0, 1), scaled by 1/sqrt(fan_in) in the forward pass).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from i2spp_jax import ops
from i2spp_jax.networks import FullyConnectedLayer, param

_DIMS = ("NHWC", "HWIO", "NHWC")


def downsample_fir(x: jax.Array, f: np.ndarray, padding: int) -> jax.Array:
    """FIR-filters x [N, H, W, C] with the separable filter f after zero-padding each side."""
    p = padding
    x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    return ops.upfirdn2d(x, f)


class Conv2dLayer(nn.Module):
    """Equalized-lr conv, optionally 2x down-sampled as `conv2d_resample(down=2)`: FIR, then stride 2."""

    out_channels: int
    kernel_size: int = 3
    activation: str = "lrelu"  # 'lrelu' or 'linear'
    down: int = 1  # 1 or 2
    bias: bool = True
    gain: float = 1.0  # extra output gain (the residual branches use sqrt(0.5))
    resample_filter: Sequence[float] = (1, 3, 3, 1)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [N, H, W, I] -> [N, H/down, W/down, O]
        k, in_ch = self.kernel_size, x.shape[-1]
        weight = param(self, "weight", nn.initializers.normal(1.0), (k, k, in_ch, self.out_channels))
        w = weight * (1.0 / np.sqrt(in_ch * k * k))
        if self.down == 1:
            x = ops.conv2d(x, w.astype(x.dtype))
        else:
            f = ops.setup_filter(self.resample_filter)
            # The reference pads by (fw - down + 1) // 2 + k // 2 on each side for a 4-tap filter.
            pad = (len(f) - self.down + 1) // 2 + k // 2
            x = downsample_fir(x, f, pad)
            x = jax.lax.conv_general_dilated(x, w.astype(x.dtype), (2, 2), "VALID", dimension_numbers=_DIMS)
        b = param(self, "bias", nn.initializers.zeros, (self.out_channels,)) if self.bias else None
        act_gain = ops.LRELU_GAIN if self.activation == "lrelu" else 1.0
        return ops.bias_act(x, b, act=self.activation, gain=act_gain * self.gain)


class DiscriminatorBlock(nn.Module):
    """One resolution: [FromRGB], conv0, conv1 (down), residual skip (down, 1x1, no bias)."""

    out_channels: int
    tmp_channels: int
    first: bool  # the block that reads the image (FromRGB)

    @nn.compact
    def __call__(self, x: jax.Array, img: jax.Array) -> jax.Array:
        if self.first:
            x = Conv2dLayer(self.tmp_channels, kernel_size=1, name="fromrgb")(img)
        y = Conv2dLayer(self.out_channels, kernel_size=1, bias=False, down=2, activation="linear",
                        gain=np.sqrt(0.5), name="skip")(x)
        x = Conv2dLayer(self.tmp_channels, name="conv0")(x)
        x = Conv2dLayer(self.out_channels, down=2, gain=np.sqrt(0.5), name="conv1")(x)
        return y + x


def minibatch_stddev(x: jax.Array, group_size: int, num_channels: int = 1) -> jax.Array:
    """Appends the minibatch standard deviation feature(s): x [N, H, W, C] -> [N, H, W, C + F].

    As `MinibatchStdLayer`: within groups of `group_size` samples, the standard deviation of every
    feature over the group, averaged over channels (in F groups) and pixels, broadcast back.
    """
    n, h, w, c = x.shape
    g = min(group_size, n)
    if n % g:
        raise ValueError(f"minibatch_stddev: batch {n} is not a multiple of the group size {g}")
    f = num_channels
    y = x.reshape(g, n // g, h, w, f, c // f).astype(jnp.float32)
    y = y - jnp.mean(y, axis=0)
    y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + 1e-8)  # [n/g, h, w, f, c/f]
    y = jnp.mean(y, axis=(1, 2, 4))  # [n/g, f]
    y = jnp.tile(y, (g, 1))[:, None, None, :]  # sample i uses group statistics of i mod (n/g)
    y = jnp.broadcast_to(y, (n, h, w, f)).astype(x.dtype)
    return jnp.concatenate([x, y], axis=-1)


class Discriminator(nn.Module):
    """image [N, R, R, C] in [-1, 1] -> logit [N] (real > 0)."""

    img_resolution: int
    channels: Sequence[int]  # feature maps per block resolution, img_resolution .. 4 (descending)
    mbstd_group_size: int = 4  # samples per minibatch-stddev group
    mbstd_num_channels: int = 1

    @nn.compact
    def __call__(self, img: jax.Array) -> jax.Array:
        log2 = int(np.log2(self.img_resolution))
        resolutions = [2**i for i in range(log2, 2, -1)]  # R .. 8
        if len(self.channels) != len(resolutions) + 1:
            raise ValueError(f"channels has {len(self.channels)} entries; a {self.img_resolution}x"
                             f"{self.img_resolution} discriminator needs {len(resolutions) + 1} (R .. 4)")
        x = None
        for i, res in enumerate(resolutions):
            x = DiscriminatorBlock(self.channels[i + 1], self.channels[i], first=(i == 0), name=f"b{res}")(x, img)
        x = minibatch_stddev(x, self.mbstd_group_size, self.mbstd_num_channels)
        x = Conv2dLayer(self.channels[-1], name="b4_conv")(x)
        x = x.reshape(x.shape[0], -1)
        x = FullyConnectedLayer(self.channels[-1], "lrelu", name="b4_fc")(x)
        return FullyConnectedLayer(1, name="b4_out")(x)[:, 0]
