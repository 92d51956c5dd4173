r"""Prints the Flax generator's relative error against every reference in shared/parity.

    python -m experiments.parity_report                       # ../shared/parity
    python -m experiments.parity_report --parity_dir=DIR --fused_modconv=false

Relative error = ||ours - reference|| / ||reference|| over the whole array, float32, this machine.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from i2spp_jax.formats import stylegan2
from i2spp_jax.generator import Generator

_PARITY_DIR = flags.DEFINE_string(
    "parity_dir", os.environ.get("I2SPP_PARITY_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "parity")),
    "Folder with NAME.weights.npz, NAME.json, NAME.reference.npz.")
_FUSED = flags.DEFINE_bool("fused_modconv", True, "Grouped-conv modulation (True) or modulated activations.")


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def _nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


def ada_report(parity_dir: str, name: str, fused: bool) -> dict:
    G = stylegan2.convert_file(os.path.join(parity_dir, f"{name}.weights.npz"))
    ref = np.load(os.path.join(parity_dir, f"{name}.reference.npz"))
    out = {
        "ws": rel_err(G.mapping(ref["z"]), ref["ws"]),
        "ws_psi0.7": rel_err(G.mapping(ref["z"], 0.7), ref["ws_psi0.7"]),
        "ws_psi0.5_cutoff4": rel_err(G.mapping(ref["z"], 0.5, 4), ref["ws_psi0.5_cutoff4"]),
        "img_none": rel_err(_nchw(G.synthesis(ref["ws_plus"], "none", fused_modconv=fused)), ref["img_none"]),
    }
    img, acts = G.synthesis(ref["ws_plus"], "const", fused_modconv=fused, return_activations=True)
    out["img_const"] = rel_err(_nchw(img), ref["img_const"])
    for res in G.config.block_resolutions:
        out[f"block{res}_x"] = rel_err(_nchw(acts[f"b{res}.x"]), ref[f"block{res}_x"])
        out[f"block{res}_img"] = rel_err(_nchw(acts[f"b{res}.img"]), ref[f"block{res}_img"])
    proj = jnp.asarray(ref["grad_projection"].transpose(0, 2, 3, 1))
    grad = jax.jit(jax.grad(lambda w, n: jnp.sum(G.synthesis(w, n, fused_modconv=fused) * proj), argnums=(0, 1)))
    g_ws, g_noise = grad(jnp.asarray(ref["ws_plus"]), G.noise_const)
    out["grad_ws_plus"] = rel_err(g_ws, ref["grad_ws_plus"])
    for noise_name, g in zip(G.noise_names, g_noise):
        out[f"grad_{noise_name}.noise_const"] = rel_err(g, ref[f"grad_{noise_name}.noise_const"])
    return out


def rosinality_report(parity_dir: str, fused: bool) -> dict:
    sd = dict(np.load(os.path.join(parity_dir, "rosi_64.weights.npz")))
    ref = np.load(os.path.join(parity_dir, "rosi_64.reference.npz"))
    config = stylegan2.rosinality_config(sd)
    G = Generator(params=stylegan2.rosinality_params(sd, ref["latent_avg"], config), config=config)
    noise = [ref[f"noise_in_{i}"][0, 0] for i in range(len(G.noise_names))]
    return {
        "w": rel_err(G.mapping(ref["z"])[:, 0], ref["w"]),
        "img_psi0.7": rel_err(_nchw(G.synthesis(G.mapping(ref["z"], 0.7), fused_modconv=fused)), ref["img_psi0.7"]),
        "img_const": rel_err(_nchw(G.synthesis(ref["ws_plus"], fused_modconv=fused)), ref["img_const"]),
        "img_given_noise": rel_err(_nchw(G.synthesis(ref["ws_plus"], noise, fused_modconv=fused)), ref["img_given_noise"]),
    }


def main(argv):
    del argv
    d = _PARITY_DIR.value
    reports = {name: ada_report(d, name, _FUSED.value) for name in ("ada_tiny", "ada_clamp")}
    reports["rosi_64"] = rosinality_report(d, _FUSED.value)
    print(f"fused_modconv={_FUSED.value}, device={jax.devices()[0].platform}")
    for name, rep in reports.items():
        print(f"{name}: worst {max(rep.values()):.2e} ({max(rep, key=rep.get)})")
        print(json.dumps({k: float(f"{v:.2e}") for k, v in rep.items()}))


if __name__ == "__main__":
    app.run(main)
