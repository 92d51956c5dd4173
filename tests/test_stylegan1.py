"""StyleGAN (v1): the port equals the official TensorFlow G_style on ../shared/parity/tf (sg1_r32, and
sg1_r128 whose 128x128 block up-samples with the fused transposed convolution)."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from i2spp_jax import stylegan1
from i2spp_jax.formats import stylegan1 as reader
from i2spp_jax.formats.stylegan2 import ConversionError

RTOL = 1e-5  # norm of the difference over the norm of the reference; measured <= 2.2e-6


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def _nchw(img):
    return np.asarray(img).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("name, layers", [("sg1_r32", 8), ("sg1_r128", 12)])
def test_g_style_equals_the_official_network(tf_dir, name, layers):
    cfg, params = reader.read_file(os.path.join(tf_dir, f"{name}.pkl"))
    ref = np.load(os.path.join(tf_dir, f"{name}.reference.npz"))
    assert cfg.num_ws == layers and len(stylegan1.stored_noise(cfg, params)) == layers
    ws = stylegan1.mapping(cfg, params, ref["z"])
    assert _rel(ws, ref["w"]) < RTOL
    images = {
        "img_psi1": ws,
        "img_psi07": stylegan1.mapping(cfg, params, ref["z"], truncation_psi=0.7),  # cutoff 8, G_style's default
        "img_psi07_cut2": stylegan1.mapping(cfg, params, ref["z"], truncation_psi=0.7, truncation_cutoff=2),
        "img_synth_w": jnp.asarray(ref["w"]),
        "img_synth_wplus": jnp.asarray(ref["w_plus"]),  # every layer's w differs: which style drives which layer
    }
    for key, w in images.items():
        assert _rel(_nchw(stylegan1.synthesis(cfg, params, w)), ref[key]) < RTOL, key
    # the fused transposed convolution is what the official graph computes, and it is another function
    unfused = stylegan1.synthesis(stylegan1.StyleGAN1Config(**{**cfg.__dict__, "fused_scale_from": 10 ** 6}),
                                  params, ws)
    assert _rel(_nchw(unfused), ref["img_psi1_fused_scale_off"]) < RTOL
    if name == "sg1_r128":
        assert _rel(ref["img_psi1_fused_scale_off"], ref["img_psi1"]) > 1e-3
        assert _rel(_nchw(unfused), ref["img_psi1"]) > 1e-3
    G_cfg, G_params = reader.read_file(os.path.join(tf_dir, f"{name}.pkl"), network="G")
    got = stylegan1.synthesis(G_cfg, G_params, stylegan1.mapping(G_cfg, G_params, ref["z"]))
    assert _rel(_nchw(got), ref["img_G_psi1"]) < RTOL


def test_noise_is_an_input(tf_dir):
    cfg, params = reader.read_file(os.path.join(tf_dir, "sg1_r32.pkl"))
    ws = stylegan1.mapping(cfg, params, np.ones((2, cfg.z_dim), np.float32))
    stored = stylegan1.synthesis(cfg, params, ws)
    none = stylegan1.synthesis(cfg, params, ws, noise="none")
    zeros = stylegan1.synthesis(cfg, params, ws, noise=[np.zeros(s, np.float32) for s in cfg.noise_shapes])
    np.testing.assert_allclose(none, zeros, rtol=0, atol=0)
    assert float(jnp.abs(stored - none).max()) > 1e-3


def test_a_stylegan2_pickle_is_not_g_style(tf_dir):
    with pytest.raises(ConversionError, match="not StyleGAN \\(v1\\)'s G_style"):
        reader.read_file(os.path.join(tf_dir, "sg2_r32.pkl"))
