"""Generator checkpoints: an orbax checkpoint of the params plus the config as JSON.

    DIR/config.json     the config (GeneratorConfig, or StyleGAN1Config with "generation": 1) and
                        where the weights came from
    DIR/params/         orbax StandardCheckpointer pytree, float32
"""

import functools
import json
import os
import shutil
import tempfile
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from i2spp_jax.formats import generators
from i2spp_jax.generator import Generator, GeneratorConfig, random_demo_generator
from i2spp_jax.stylegan1 import StyleGAN1Config, StyleGAN1Generator

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
# The shipped demo generator: trained by experiments/train_generator.py on Fashion-MNIST (32x32,
# grey drawn in all three channels); see BUILD_NOTES.md for its command, figures and samples.
DEMO_DIR = os.path.join(ASSETS_DIR, "demo_fmnist32")
# Real Fashion-MNIST test images (never seen in training), 32x32, for the demo to embed.
HELDOUT_DIR = os.path.join(ASSETS_DIR, "fmnist_test")
GENERATOR_NAMES = ("demo", "demo-random")


def write_params_dir(directory: str, params: Any, meta: dict, meta_file: str) -> None:
    """Writes `params` (orbax, float32) and `meta` (JSON) to `directory` atomically: built in a
    sibling temp dir, then renamed into place. Raises FileExistsError if `directory` exists."""
    directory = os.path.abspath(directory)
    if os.path.exists(directory):
        raise FileExistsError(f"{directory} already exists; choose a new destination or delete it")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".tmp-", dir=parent)
    try:
        params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(tmp, PARAMS_DIR), params)
            ckptr.wait_until_finished()
        with open(os.path.join(tmp, meta_file), "w") as f:
            json.dump(meta, f, indent=1)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is readable like any file
        os.rename(tmp, directory)  # atomic; fails if a concurrent writer got there first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (at most 300 characters), or its type's name."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def read_params_dir(directory: str, meta_file: str, what: str, how: str) -> tuple[Any, dict]:
    """Reads what `write_params_dir` wrote: (params as jax arrays, meta)."""
    meta_path = os.path.join(directory, meta_file)
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{directory} is not a {what}: {meta_file} is missing (make one with {how})")
    with open(meta_path) as f:
        meta = json.load(f)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(os.path.join(os.path.abspath(directory), PARAMS_DIR))
    except (ValueError, OSError, KeyError) as e:  # tensorstore reports a damaged file as a ValueError
        raise CheckpointError(f"{directory}: its {PARAMS_DIR}/ cannot be read ({_first_line(e)}); the checkpoint is "
                              f"damaged: write it again with {how}") from None
    # One transfer of the whole tree: jnp.asarray per leaf compiled a small program per shape
    # (jax 0.10's "jit(stage)"), 26 of them for the demo generator (issue 9).
    return jax.device_put(params), meta


def save_generator(G: generators.AnyGenerator, directory: str, *, source: Optional[str] = None) -> None:
    """Writes G (either StyleGAN) to `directory` (which must not exist yet), atomically."""
    meta = {"config": json.loads(G.config.to_json()), "source": source}
    write_params_dir(directory, G.params, meta, CONFIG_FILE)


def config_from_json(config: dict):
    """The config a checkpoint's config.json holds: a StyleGAN1Config where "generation" is 1, else
    (StyleGAN2, and every checkpoint written before StyleGAN (v1) existed here) a GeneratorConfig."""
    cls = StyleGAN1Config if config.get("generation", 2) == 1 else GeneratorConfig
    return cls.from_json(json.dumps(config))


class CheckpointError(ValueError):
    """A checkpoint directory whose files cannot be read, or whose config does not fit its params."""


def _load_dir(directory: str) -> generators.AnyGenerator:
    how = "python -m converters.stylegan2 --src=... --dst=DIR"
    params, meta = read_params_dir(directory, CONFIG_FILE, "generator checkpoint", how)
    try:
        config = config_from_json(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{directory}/{CONFIG_FILE} is not a generator config ({e}); write the checkpoint "
                              f"again with {how}") from None
    cls = StyleGAN1Generator if config.generation == 1 else Generator
    G = cls(params=params, config=config)
    try:  # the config must describe these params: trace one image through both networks (no compute)
        ws = jax.eval_shape(G.mapping, jax.ShapeDtypeStruct((1, config.z_dim), np.float32))
        jax.eval_shape(lambda w: G.synthesis(w, noise="const"), ws)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{directory}/{CONFIG_FILE} does not fit its {PARAMS_DIR}/ ({_first_line(e)}); the "
                              f"checkpoint is damaged: write it again with {how}") from None
    return G


@functools.lru_cache(maxsize=1)
def demo_generator() -> Generator:
    """The shipped trained demo generator (Fashion-MNIST, 32x32, 3 channels). Cached."""
    if not os.path.isdir(DEMO_DIR):
        raise FileNotFoundError(f"the demo generator is missing from {DEMO_DIR}; reinstall i2spp_jax "
                                "(it ships inside the package) or run experiments/ship_demo.py")
    return _load_dir(DEMO_DIR)


def heldout_images() -> list[str]:
    """Paths of the shipped held-out real images (Fashion-MNIST test split), sorted."""
    return sorted(os.path.join(HELDOUT_DIR, n) for n in os.listdir(HELDOUT_DIR) if n.endswith(".png"))


def load_generator(path: str, **convert_kwargs) -> generators.AnyGenerator:
    """Loads a generator.

    Args:
      path: "demo" (the shipped generator trained on Fashion-MNIST, 32x32), "demo-random" (a
        seeded random-weight 64x64 generator, no files; for tests), a checkpoint directory written by
        `save_generator` / the converter, or an official source file converted on the fly:
        a stylegan2-ada-pytorch .pkl, a state dict with ada key names (.pt/.pth/.npz, with a
        NAME.json beside it for settings the shapes cannot tell), a rosinality .pt, or an official
        TensorFlow pickle of StyleGAN (v1) or StyleGAN2 (its Gs).
      **convert_kwargs: passed to `i2spp_jax.formats.generators.convert_file` for source files.
    Returns:
      a `Generator` (StyleGAN2) or a `StyleGAN1Generator` (StyleGAN v1): the same face.
    """
    if path == "demo":
        return demo_generator()
    if path == "demo-random":
        return random_demo_generator()
    if os.path.isdir(path):
        return _load_dir(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no generator at {path!r}: give 'demo', 'demo-random', a checkpoint directory, or a source file")
    return generators.convert_file(path, **convert_kwargs)
