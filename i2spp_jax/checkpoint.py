"""Generator checkpoints: an orbax checkpoint of the params plus the config as JSON.

    DIR/config.json     GeneratorConfig (topology) and where the weights came from
    DIR/params/         orbax StandardCheckpointer pytree, float32
"""

import json
import os
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from i2spp_jax.generator import Generator, GeneratorConfig, demo_generator

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def save_generator(G: Generator, directory: str, *, source: Optional[str] = None) -> None:
    """Writes G to `directory` (created; must not already hold a checkpoint). Waits for orbax."""
    directory = os.path.abspath(directory)
    if os.path.exists(os.path.join(directory, PARAMS_DIR)):
        raise FileExistsError(f"{directory} already holds a generator checkpoint; choose a new --dst")
    os.makedirs(directory, exist_ok=True)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), G.params)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(directory, PARAMS_DIR), params)
        ckptr.wait_until_finished()
    meta = {"config": json.loads(G.config.to_json()), "source": source}
    tmp = os.path.join(directory, CONFIG_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(directory, CONFIG_FILE))


def _load_dir(directory: str) -> Generator:
    cfg_path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{directory} is not a generator checkpoint: {CONFIG_FILE} is missing "
                                "(make one with python -m converters.stylegan2 --src=... --dst=DIR)")
    with open(cfg_path) as f:
        meta = json.load(f)
    config = GeneratorConfig.from_json(json.dumps(meta["config"]))
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(os.path.join(os.path.abspath(directory), PARAMS_DIR))
    return Generator(params=params, config=config)


def load_generator(path: str, **convert_kwargs) -> Generator:
    """Loads a generator.

    Args:
      path: "demo" (the built-in seeded generator, no files), a checkpoint directory written by
        `save_generator` / the converter, or an official source file converted on the fly:
        a stylegan2-ada-pytorch .pkl, a state dict with ada key names (.pt/.pth/.npz, with a
        NAME.json beside it for settings the shapes cannot tell), or a rosinality .pt.
      **convert_kwargs: passed to `converters.stylegan2.convert_file` for source files.
    """
    if path == "demo":
        return demo_generator()
    if os.path.isdir(path):
        return _load_dir(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no generator at {path!r}: give 'demo', a checkpoint directory, or a source file")
    from converters import stylegan2  # source formats live with the converters

    return stylegan2.convert_file(path, **convert_kwargs)
