r"""Converts official StyleGAN2 generators to i2spp_jax checkpoints (orbax params + config.json).

    python -m converters.stylegan2 --src=ffhq.pkl --dst=checkpoints/ffhq
    python -m converters.stylegan2 --src=550000.pt --dst=checkpoints/ffhq_rosinality
    python -m converters.stylegan2 --src=G_ema_state_dict.pt --dst=DIR --conv_clamp=256

The readers live in the library (i2spp_jax/formats/stylegan2.py, which says what each format is);
this is the command line around them: convert, write, reload, compare.
"""

import os
from typing import Optional

import numpy as np

from i2spp_jax.checkpoint import load_generator, save_generator
from i2spp_jax.formats.stylegan2 import _beside, convert_file
from i2spp_jax.generator import Generator


# ---------------------------------------------------------------------------------------------
# CLI

def self_check(G: Generator, dst: str, reference: Optional[str], seed: int = 0) -> dict:
    """Reloads `dst`, renders fixed latents, and compares with the in-memory conversion and, when
    given, the official network's outputs (a shared/parity NAME.reference.npz)."""
    G2 = load_generator(dst)
    z = np.random.RandomState(seed).randn(4, G.z_dim).astype(np.float32)
    ws = G.mapping(z, truncation_psi=0.7)
    a = np.asarray(G.synthesis(ws, noise="const"))
    b = np.asarray(G2.synthesis(G2.mapping(z, truncation_psi=0.7), noise="const"))
    report = {"reload_max_abs_diff": float(np.abs(a - b).max())}
    if reference:
        ref = np.load(reference)
        got = np.asarray(G2.synthesis(ref["ws_plus"], noise="const")).transpose(0, 3, 1, 2)
        want = ref["img_const"]
        report["reference_max_abs_diff"] = float(np.abs(got - want).max())
        report["reference_rel_error"] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    return report


def main(argv):
    del argv
    from absl import flags, logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO

    FLAGS = flags.FLAGS
    G = convert_file(FLAGS.src, conv_clamp=FLAGS.conv_clamp, mapping_lr_multiplier=FLAGS.mapping_lr_multiplier)
    c = G.config
    print(f"converted {FLAGS.src}: {c.img_resolution}x{c.img_resolution}x{c.img_channels}, z_dim={c.z_dim}, "
          f"w_dim={c.w_dim}, num_ws={c.num_ws}, {len(c.noise_names)} noise maps, channels={c.channels}, "
          f"mapping_layers={c.mapping_layers}, conv_clamp={c.conv_clamp}")
    save_generator(G, FLAGS.dst, source=os.path.abspath(FLAGS.src))
    reference = FLAGS.reference or _beside(FLAGS.src, ".reference.npz")
    report = self_check(G, FLAGS.dst, reference)
    for k, v in report.items():
        print(f"self-check {k}: {v:.3g}")
    print(f"wrote {FLAGS.dst}")


def _define_flags():
    from absl import flags

    flags.DEFINE_string("src", None, "Source: .pkl (stylegan2-ada-pytorch), .pt/.pth/.npz (ada state dict "
                        "or rosinality checkpoint).", required=True)
    flags.DEFINE_string("dst", None, "Output checkpoint directory (must not exist yet).", required=True)
    flags.DEFINE_string("conv_clamp", "unset", "For ada state dicts without NAME.json: 'none' or a value.")
    flags.DEFINE_float("mapping_lr_multiplier", None, "Mapping lr multiplier if not 0.01 (state dicts only).")
    flags.DEFINE_string("reference", None, "Optional NAME.reference.npz of the official network to compare.")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
