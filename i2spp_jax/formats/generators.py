"""Any supported generator file, either StyleGAN, into its generator object.

    G = convert_file("karras2019stylegan-ffhq-1024x1024.pkl")   # StyleGAN (v1), TensorFlow: a StyleGAN1Generator
    G = convert_file("stylegan2-ffhq-config-f.pkl")             # StyleGAN2, TensorFlow: a Generator
    G = convert_file("ffhq.pkl")                                # stylegan2-ada-pytorch (and .pt/.pth/.npz)

An official TensorFlow pickle is read once (`tf_pickle`, which runs nothing from the file) and sent
by its network's `build_func_name`: G_style to `formats.stylegan1`, G_main to `formats.stylegan2`;
every other file goes to `formats.stylegan2.convert_file`.
"""

from typing import Any, Union

import jax
import numpy as np

from i2spp_jax.formats import stylegan1 as v1_format
from i2spp_jax.formats import stylegan2, tf_pickle
from i2spp_jax.generator import Generator
from i2spp_jax.stylegan1 import StyleGAN1Generator

AnyGenerator = Union[Generator, StyleGAN1Generator]


def convert_file(path: str, *, tf_network: str = "Gs", **stylegan2_kwargs: Any) -> AnyGenerator:
    """The generator in `path`; `tf_network` picks G, D or Gs of a TensorFlow pickle (Gs by default);
    `stylegan2_kwargs` (conv_clamp, mapping_lr_multiplier, mean_latent_samples, notes) are for PyTorch
    StyleGAN2 files (see `stylegan2.convert_file`)."""
    stylegan2.check_source_path(path)
    if not tf_pickle.is_tf_pickle(path):
        return stylegan2.convert_file(path, tf_network=tf_network, **stylegan2_kwargs)
    given = {"conv_clamp": "unset", "mapping_lr_multiplier": None, "mean_latent_samples": None}
    for name, unset in given.items():
        if stylegan2_kwargs.get(name, unset) not in (unset, None):
            raise stylegan2.ConversionError(f"{path} is an official TensorFlow pickle: it gives its own settings; "
                                            f"drop --{name} (it is for PyTorch state dicts and checkpoints)")
    net, picked = tf_pickle.pick_network(tf_pickle.load_file(path), path, tf_network)
    notes = stylegan2_kwargs.get("notes")
    if notes is not None:
        notes.append(picked)
    if net.build_func_name == "G_style":
        config, params = v1_format.convert(net, path)
        return StyleGAN1Generator(params=jax.tree_util.tree_map(np.asarray, params), config=config)
    sd, init_kwargs = stylegan2.tf_stylegan2_state_dict(net, path)
    with stylegan2.naming_the_file(path):
        config = stylegan2.ada_config(sd, init_kwargs=init_kwargs)
        params = stylegan2.ada_params(sd, config)
    return Generator(params=jax.tree_util.tree_map(np.asarray, params), config=config)
