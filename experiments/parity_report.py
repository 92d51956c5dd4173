r"""Prints the port's relative error against every reference in a parity folder (../shared/parity).

    python -m experiments.parity_report                       # ../shared/parity (or $I2SPP_PARITY_DIR)
    python -m experiments.parity_report --parity_dir=DIR --fused_modconv=false

Every fixture found is reported, by what its files say it is, not by its name:
  NAME.weights.npz + NAME.json + NAME.reference.npz  a PyTorch state dict; NAME.json's "format" says
                                                    whose: stylegan2-ada-pytorch or rosinality
  tf/NAME.pkl + tf/NAME.reference.npz                an official TensorFlow pickle (G, D, Gs): StyleGAN
                                                    (v1) G_style or StyleGAN2 G_main, read by the converter
Relative error = ||ours - reference|| / ||reference|| over the whole array, float32, this machine (a
faithful port lands near 1e-6; the folder's README calls 1e-4 generous). A reference key the report does
not compute (a discriminator's score) is named under the fixture, not silently left out.
"""

import dataclasses
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from experiments import cli
from i2spp_jax.formats import generators, stylegan2
from i2spp_jax.generator import Generator

DEFAULT_DIR = os.environ.get("I2SPP_PARITY_DIR",
                             os.path.join(os.path.dirname(__file__), "..", "..", "shared", "parity"))
NOT_COMPUTED = {"D_on_img", "D_on_img_fused_scale_off"}  # the TF fixtures' discriminator scores

_PARITY_DIR = flags.DEFINE_string("parity_dir", DEFAULT_DIR,
                                  "Folder with NAME.weights.npz, NAME.json, NAME.reference.npz (and tf/NAME.pkl).")
_FUSED = flags.DEFINE_bool("fused_modconv", True, "Grouped-conv modulation (True) or modulated activations.")


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def _nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


def ada_report(parity_dir: str, name: str, fused: bool) -> dict:
    """A stylegan2-ada-pytorch state dict: mapping (with truncation), synthesis with stored and without
    noise, every block's feature map and skip image, and the gradient to W+ and to each noise map."""
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
        for part in ("x", "img"):
            if f"block{res}_{part}" in ref:  # the fixtures hold blocks up to 128x128
                out[f"block{res}_{part}"] = rel_err(_nchw(acts[f"b{res}.{part}"]), ref[f"block{res}_{part}"])
    proj = jnp.asarray(ref["grad_projection"].transpose(0, 2, 3, 1))
    grad = jax.jit(jax.grad(lambda w, n: jnp.sum(G.synthesis(w, n, fused_modconv=fused) * proj), argnums=(0, 1)))
    g_ws, g_noise = grad(jnp.asarray(ref["ws_plus"]), G.noise_const)
    out["grad_ws_plus"] = rel_err(g_ws, ref["grad_ws_plus"])
    for noise_name, g in zip(G.noise_names, g_noise):
        out[f"grad_{noise_name}.noise_const"] = rel_err(g, ref[f"grad_{noise_name}.noise_const"])
    return out


def rosinality_report(parity_dir: str, name: str, fused: bool) -> dict:
    """A rosinality g_ema state dict: the style MLP, truncated images, stored and given noise."""
    sd = dict(np.load(os.path.join(parity_dir, f"{name}.weights.npz")))
    ref = np.load(os.path.join(parity_dir, f"{name}.reference.npz"))
    config = stylegan2.rosinality_config(sd)
    G = Generator(params=stylegan2.rosinality_params(sd, ref["latent_avg"], config), config=config)
    noise = [ref[f"noise_in_{i}"][0, 0] for i in range(len(G.noise_names))]
    return {
        "w": rel_err(G.mapping(ref["z"])[:, 0], ref["w"]),
        "img_psi0.7": rel_err(_nchw(G.synthesis(G.mapping(ref["z"], 0.7), fused_modconv=fused)), ref["img_psi0.7"]),
        "img_const": rel_err(_nchw(G.synthesis(ref["ws_plus"], fused_modconv=fused)), ref["img_const"]),
        "img_given_noise": rel_err(_nchw(G.synthesis(ref["ws_plus"], noise, fused_modconv=fused)), ref["img_given_noise"]),
    }


def tf_report(path: str, fused: bool) -> dict:
    """An official TensorFlow pickle (its README: ../shared/parity/tf): Gs's mapping and images at psi 1,
    0.7 (the network's own cutoff) and 0.7 with cutoff 2, synthesis of w and of a W+ whose layers all
    differ, the non-averaged G; v1 also the network rebuilt with fused_scale=False, v2 the unfused
    modulation."""
    ref = np.load(path[:-len(".pkl")] + ".reference.npz")
    Gs = generators.convert_file(path)
    G = generators.convert_file(path, tf_network="G")

    def image(gen, ws, **kw):
        return _nchw(gen.synthesis(jnp.asarray(ws), noise="const", fused_modconv=fused, **kw))

    w = Gs.mapping(ref["z"])
    out = {"w": rel_err(w, ref["w"]),
           "img_psi1": rel_err(image(Gs, w), ref["img_psi1"]),
           "img_psi07": rel_err(image(Gs, Gs.mapping(ref["z"], 0.7)), ref["img_psi07"]),
           "img_psi07_cut2": rel_err(image(Gs, Gs.mapping(ref["z"], 0.7, 2)), ref["img_psi07_cut2"]),
           "img_synth_w": rel_err(image(Gs, ref["w"]), ref["img_synth_w"]),
           "img_synth_wplus": rel_err(image(Gs, ref["w_plus"]), ref["img_synth_wplus"]),
           "img_G_psi1": rel_err(image(G, G.mapping(ref["z"])), ref["img_G_psi1"])}
    if "img_psi1_fused_scale_off" in ref and Gs.generation == 1:
        unfused = dataclasses.replace(Gs, config=dataclasses.replace(Gs.config, fused_scale_from=10 ** 6))
        out["img_psi1_fused_scale_off"] = rel_err(image(unfused, w), ref["img_psi1_fused_scale_off"])
    if "img_psi1_unfused" in ref and Gs.generation == 2:
        out["img_psi1_unfused"] = rel_err(_nchw(Gs.synthesis(w, noise="const", fused_modconv=False)),
                                          ref["img_psi1_unfused"])
    return out


def fixtures(parity_dir: str) -> dict:
    """{name: (kind, path)} of every complete fixture in `parity_dir` (kind "ada", "rosinality" or "tf");
    cli.UserError if the folder is missing or holds none."""
    if not os.path.isdir(parity_dir):
        raise cli.UserError(f"--parity_dir={parity_dir} is not a folder; give the folder holding NAME.weights.npz, "
                            "NAME.json and NAME.reference.npz (../shared/parity), or set I2SPP_PARITY_DIR")
    found = {}
    for path in sorted(glob.glob(os.path.join(parity_dir, "*.weights.npz"))):
        name = os.path.basename(path)[:-len(".weights.npz")]
        meta, ref = (os.path.join(parity_dir, f"{name}{ext}") for ext in (".json", ".reference.npz"))
        if not (os.path.exists(meta) and os.path.exists(ref)):
            raise cli.UserError(f"{path}: fixture {name} lacks {name}.json or {name}.reference.npz beside it")
        with cli.user_input(meta, "give the NAME.json the fixture was made with"), open(meta) as f:
            fmt = json.load(f).get("format", "")
        kind = "ada" if "ada" in fmt else "rosinality" if "rosinality" in fmt else None
        if kind is None:
            raise cli.UserError(f"{meta}: format {fmt!r} is neither stylegan2-ada-pytorch's nor rosinality's")
        found[name] = (kind, path)
    for path in sorted(glob.glob(os.path.join(parity_dir, "tf", "*.pkl"))):
        if os.path.exists(path[:-len(".pkl")] + ".reference.npz"):
            found["tf/" + os.path.basename(path)[:-len(".pkl")]] = ("tf", path)
    if not found:
        raise cli.UserError(f"--parity_dir={parity_dir} holds no fixture (NAME.weights.npz with NAME.json and "
                            "NAME.reference.npz, or tf/NAME.pkl with tf/NAME.reference.npz)")
    return found


def report(kind: str, path: str, fused: bool) -> dict:
    parity_dir, name = os.path.dirname(path), os.path.basename(path).split(".")[0]
    if kind == "ada":
        return ada_report(parity_dir, name, fused)
    if kind == "rosinality":
        return rosinality_report(parity_dir, name, fused)
    return tf_report(path, fused)


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected argument(s) {' '.join(argv[1:])}; give the folder with --parity_dir")
    logging.set_verbosity(logging.WARNING)
    found = fixtures(_PARITY_DIR.value)
    print(f"fused_modconv={_FUSED.value}, device={jax.devices()[0].platform}")
    for name, (kind, path) in found.items():
        rep = report(kind, path, _FUSED.value)
        print(f"{name} ({kind}): worst {max(rep.values()):.2e} ({max(rep, key=rep.get)})")
        print(json.dumps({k: float(f"{v:.2e}") for k, v in rep.items()}))
        if kind == "tf":
            skipped = sorted(set(np.load(path[:-len(".pkl")] + ".reference.npz")) - set(rep) - {"z", "w_plus"})
            if skipped:
                print(f"  not computed here: {', '.join(skipped)} (the discriminator's score)")


if __name__ == "__main__":
    cli.run(main)
