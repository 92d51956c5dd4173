"""The paper's layer numbers on any generator.

Image2StyleGAN++ numbers layers 1..18, the W+ layers of a 1024x1024 StyleGAN (two per resolution
from 4x4 to 1024x1024): inpainting updates layers 1-9 and 17-18, scribble edits 4-6, feature
transfer combines the 4th layer's activation tensor. Rule, for a generator with `num_ws` W+ layers:

    paper layer k (1-based) sits at depth (k - 1) / 17 of the paper's generator; it maps to the
    generator's W+ layer at the nearest depth, j = floor((k - 1) * (num_ws - 1) / 17 + 1/2) (0-based).

So depth order is kept, the first and last layers map to the first and last, and an 18-layer
generator maps k -> k - 1 (the identity). A smaller generator has fewer layers than the paper
names; a layer set (`w_mask`) marks a generator layer when any paper layer of the set maps to it.
On the shipped 32x32 demo generator (8 W+ layers): inpainting's 1-9, 17-18 -> layers 0-3 and 7
(frozen: 4-6, the 16x16 and 32x32 convolutions); scribbles' 4-6 -> 1-2 (the 8x8 block); the 4th
layer -> 1. On a 1024x1024 StyleGAN2 (also 18 W+ layers) the map is the identity; there w[j]
drives conv j (b4.conv1, b8.conv0, b8.conv1, ...) and the previous block's ToRGB, so layer k sits
at the same resolution as StyleGAN's layer k give or take one conv (StyleGAN has two convs at 4x4,
StyleGAN2 one).

The activation tensor "of layer k" is the output of the convolution driven by W+ layer j: on a
StyleGAN2 `b{R}.conv0` (j odd) or `b{R}.img` (j even: the block's output, features and skip image).

On the paper's own generator, a 1024x1024 StyleGAN (v1), the map is the identity and exact: W+
layer j is the style (AdaIN) of layer j, and each layer has its own noise map (18 maps; a StyleGAN2
has 17). Inpainting's 1-9, 17-18 are layers 0-8 (4x4 to 64x64) and 16-17 (1024x1024); scribbles'
4-6 are layers 3-5 (the second 8x8 layer and both 16x16 layers); the 4th layer's tensor is
`b8.x`, the output of the 8x8 block. The activation points of a StyleGAN are `b{R}.conv0` (layer
2i, at 4x4 the constant layer) and `b{R}.x` (layer 2i + 1).
"""

from typing import Iterable

import numpy as np

PAPER_NUM_WS = 18  # W+ layers of the paper's 1024x1024 StyleGAN

# The paper's layer choices (1-based over its 18 W+ layers).
INPAINT_LAYERS = tuple(range(1, 10)) + (17, 18)
SCRIBBLE_LAYERS = (4, 5, 6)
FEATURE_TRANSFER_LAYER = 4


def _num_ws(G_or_num_ws) -> int:
    return int(G_or_num_ws if isinstance(G_or_num_ws, (int, np.integer)) else G_or_num_ws.num_ws)


def paper_layer(G_or_num_ws, k: int) -> int:
    """The generator's W+ layer (0-based) for the paper's layer k (1..18); see the module doc."""
    n = _num_ws(G_or_num_ws)
    if not 1 <= int(k) <= PAPER_NUM_WS:
        raise ValueError(f"paper layer {k}: the paper numbers its layers 1..{PAPER_NUM_WS}")
    return int(np.floor((int(k) - 1) * (n - 1) / (PAPER_NUM_WS - 1) + 0.5))


def w_mask(G_or_num_ws, layers: Iterable[int]) -> np.ndarray:
    """The paper's w_m for a set of its layer numbers: [num_ws] float32 bits, 1 = optimised."""
    n = _num_ws(G_or_num_ws)
    bits = np.zeros(n, np.float32)
    for k in layers:
        bits[paper_layer(n, k)] = 1.0
    return bits


def activation_point(G, k: int) -> str:
    """The activation point (a `G.config.activation_names` entry) of the paper's layer k: the output
    of the layer its W+ layer drives (`config.activation_point`)."""
    return G.config.activation_point(paper_layer(G, k))


def describe(G, layers: Iterable[int]) -> str:
    """'paper layers 1-9, 17-18 -> W+ layers [0, 1, 2, 3, 7] of 8' for logs and metrics."""
    bits = w_mask(G, layers)
    return (f"paper layers {_ranges(sorted(set(int(k) for k in layers)))} -> W+ layers "
            f"{[int(j) for j in np.flatnonzero(bits)]} of {G.num_ws}")


def _ranges(ks: list[int]) -> str:
    out, start = [], None
    for i, k in enumerate(ks):
        start = k if start is None else start
        if i + 1 == len(ks) or ks[i + 1] != k + 1:
            out.append(str(k) if start == k else f"{start}-{k}")
            start = None
    return ", ".join(out)
