"""Image sets for training the project's generators: Fashion-MNIST, a folder of images, a toy set.

Every set is held as uint8 [N, R, R, C] in memory; `to_float` maps a batch to [-1, 1]. Batches come
from `batch_indices`, a pure function of (step, seed), so a resumed run sees the same images.
"""

import functools
import gzip
import os
import numpy as np
from PIL import Image

# Where Debian's `dataset-fashion-mnist` package installs the original files (MIT licence).
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {"train": "train-images-idx3-ubyte.gz", "test": "t10k-images-idx3-ubyte.gz"}
FASHION_MNIST_LABELS = {"train": "train-labels-idx1-ubyte.gz", "test": "t10k-labels-idx1-ubyte.gz"}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class DatasetError(ValueError):
    """A data set that cannot be read; the message names the cause and the fix."""


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (the MNIST format; gzip-compressed or not) into a uint8 array."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"cannot read {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path} holds {body.size} bytes of data; its header says {shape} (truncated?)")
    return body.reshape(shape)


def fashion_mnist(split: str = "train", *, root: str = FASHION_MNIST_DIR, resolution: int = 32,
                  channels: int = 3, with_labels: bool = False):
    """Fashion-MNIST as uint8 [N, resolution, resolution, channels]: the 28x28 images centred on a
    black (0) canvas, grey replicated to `channels`. `split` is "train" (60000) or "test" (10000)."""
    if split not in FASHION_MNIST_FILES:
        raise DatasetError(f"Fashion-MNIST split {split!r}: use 'train' or 'test'")
    path = os.path.join(root, FASHION_MNIST_FILES[split])
    if not os.path.exists(path):
        raise DatasetError(f"Fashion-MNIST is not at {root}: install it with "
                           f"`apt-get install dataset-fashion-mnist`, or pass a folder of images")
    images = pad_to(read_idx(path), resolution)[..., None]
    images = np.repeat(images, channels, axis=-1)
    if not with_labels:
        return images
    return images, read_idx(os.path.join(root, FASHION_MNIST_LABELS[split]))


def pad_to(images: np.ndarray, resolution: int) -> np.ndarray:
    """Centres [N, h, w] images on a zero canvas [N, resolution, resolution]."""
    n, h, w = images.shape
    if h > resolution or w > resolution:
        raise DatasetError(f"images of {h}x{w} do not fit a {resolution}x{resolution} canvas")
    top, left = (resolution - h) // 2, (resolution - w) // 2
    out = np.zeros((n, resolution, resolution), np.uint8)
    out[:, top:top + h, left:left + w] = images
    return out


def image_folder(directory: str, resolution: int, channels: int = 3) -> np.ndarray:
    """Every image in `directory` (sorted by name), centre-cropped to a square and resized to
    resolution^2 (Lanczos), as uint8 [N, resolution, resolution, channels]."""
    if not os.path.isdir(directory):
        raise DatasetError(f"{directory} is not a directory of images")
    names = sorted(n for n in os.listdir(directory) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise DatasetError(f"{directory} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    out = []
    for name in names:
        try:
            with Image.open(os.path.join(directory, name)) as im:
                im = im.convert("RGB" if channels == 3 else "L")
                s = min(im.size)
                left, top = (im.width - s) // 2, (im.height - s) // 2
                im = im.crop((left, top, left + s, top + s)).resize((resolution, resolution), Image.LANCZOS)
                a = np.asarray(im, np.uint8)
        except OSError as e:
            raise DatasetError(f"cannot read {os.path.join(directory, name)}: {e}; remove it from the folder") from None
        out.append(a.reshape(resolution, resolution, channels))
    return np.stack(out)


def toy_set(n: int = 64, resolution: int = 16, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A fixed toy set for tests: one bright axis-aligned rectangle per image on black, uint8."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, resolution, resolution, channels), np.uint8)
    for i in range(n):
        y0, x0 = rng.integers(0, resolution // 2, size=2)
        h, w = rng.integers(resolution // 4, resolution // 2, size=2)
        out[i, y0:y0 + h, x0:x0 + w] = rng.integers(128, 256)
    return out


def to_float(batch: np.ndarray) -> np.ndarray:
    """uint8 [..] in [0, 255] -> float32 in [-1, 1]."""
    return batch.astype(np.float32) * (2.0 / 255.0) - 1.0


@functools.lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, batch: int, step: int, seed: int = 0) -> np.ndarray:
    """Indices of step `step`'s batch: consecutive slices of one shuffled pass (epoch) after another."""
    pos = np.arange(step * batch, (step + 1) * batch)
    epoch, offset = pos // n, pos % n
    return np.array([_permutation(n, seed, int(e))[o] for e, o in zip(epoch, offset)])


def load(spec: str, resolution: int, channels: int = 3, split: str = "train") -> np.ndarray:
    """`spec` = "fashion-mnist" or a directory of images."""
    if spec == "fashion-mnist":
        return fashion_mnist(split, resolution=resolution, channels=channels)
    if spec == "toy":
        return toy_set(resolution=resolution, channels=channels)
    return image_folder(spec, resolution, channels)

