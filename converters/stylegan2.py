r"""Converts official StyleGAN2 and StyleGAN (v1) generators to i2spp_jax checkpoints (orbax params +
config.json).

    python -m converters.stylegan2 --src=ffhq.pkl --dst=checkpoints/ffhq
    python -m converters.stylegan2 --src=550000.pt --dst=checkpoints/ffhq_rosinality
    python -m converters.stylegan2 --src=G_ema_state_dict.pt --dst=DIR --conv_clamp=256
    python -m converters.stylegan2 --src=stylegan2-ffhq-config-f.pkl --dst=DIR   # official TensorFlow: Gs
    python -m converters.stylegan2 --src=network-snapshot.pkl --dst=DIR --network=G   # its non-averaged G
    python -m converters.stylegan2 --src=karras2019stylegan-ffhq-1024x1024.pkl --dst=DIR   # StyleGAN (v1), TF

The readers live in the library (i2spp_jax/formats/: stylegan2.py says what each StyleGAN2 format is,
stylegan1.py reads G_style, generators.py sends a file to the right one);
this is the command line around them: convert, write, reload, compare.
"""

import os
from typing import Optional

import numpy as np

from i2spp_jax.checkpoint import load_generator, save_generator
from i2spp_jax.formats import tf_pickle
from i2spp_jax.formats.generators import AnyGenerator, convert_file
from i2spp_jax.formats.stylegan2 import ConversionError, _beside, check_source_path


# ---------------------------------------------------------------------------------------------
# CLI

def self_check(G: AnyGenerator, dst: str, reference: Optional[str], seed: int = 0, network: str = "Gs") -> dict:
    """Reloads `dst`, renders fixed latents, and compares with the in-memory conversion and, when
    given, the official network's outputs (a shared/parity NAME.reference.npz: the PyTorch fixtures'
    ws_plus -> img_const, or the TensorFlow fixtures' w_plus -> img_synth_wplus for Gs and
    z -> img_G_psi1 for G)."""
    G2 = load_generator(dst)
    z = np.random.RandomState(seed).randn(4, G.z_dim).astype(np.float32)
    ws = G.mapping(z, truncation_psi=0.7)
    a = np.asarray(G.synthesis(ws, noise="const"))
    b = np.asarray(G2.synthesis(G2.mapping(z, truncation_psi=0.7), noise="const"))
    report = {"reload_max_abs_diff": float(np.abs(a - b).max())}
    if reference:
        ref = np.load(reference)
        if "ws_plus" in ref:
            got, want = G2.synthesis(ref["ws_plus"], noise="const"), ref["img_const"]
        elif network == "G":
            got, want = G2.synthesis(G2.mapping(ref["z"]), noise="const"), ref["img_G_psi1"]
        else:
            got, want = G2.synthesis(ref["w_plus"], noise="const"), ref["img_synth_wplus"]
        got = np.asarray(got).transpose(0, 3, 1, 2)
        report["reference_max_abs_diff"] = float(np.abs(got - want).max())
        report["reference_rel_error"] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    return report


def check_destination(dst: str) -> None:
    """--dst must be new, and its parent a folder that can be made: refused before converting."""
    if os.path.exists(dst):
        raise FileExistsError(f"--dst={dst} already exists; choose a new destination or delete it")
    parent = os.path.dirname(os.path.abspath(dst))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        why = "a file is in the way" if isinstance(e, (FileExistsError, NotADirectoryError)) else e.strerror
        raise ConversionError(f"--dst={dst}: cannot make its parent folder {parent} ({why}); choose a "
                              "destination in a writable folder") from None
    if not os.access(parent, os.W_OK):
        raise ConversionError(f"--dst={dst}: the folder {parent} is not writable; choose another destination")


def main(argv):
    del argv
    from absl import flags, logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO

    FLAGS = flags.FLAGS
    check_source_path(FLAGS.src)
    check_destination(FLAGS.dst)  # before the conversion, which takes minutes for a 1024x1024 network
    if tf_pickle.is_tf_pickle(FLAGS.src):
        print(f"{FLAGS.src} is an official TensorFlow pickle (G, D, Gs): converting {FLAGS.network}"
              + (" (the moving average of G's weights, the one to embed into)" if FLAGS.network == "Gs" else ""))
    notes: list = []
    G = convert_file(FLAGS.src, conv_clamp=FLAGS.conv_clamp, mapping_lr_multiplier=FLAGS.mapping_lr_multiplier,
                     tf_network=FLAGS.network, mean_latent_samples=FLAGS.mean_latent_samples, notes=notes)
    for note in notes:
        print(f"note: {note}")
    c = G.config
    what = "StyleGAN (v1)" if G.generation == 1 else f"StyleGAN2, conv_clamp={c.conv_clamp}"
    print(f"converted {FLAGS.src}: {what}, {c.img_resolution}x{c.img_resolution}x{c.img_channels}, z_dim={c.z_dim}, "
          f"w_dim={c.w_dim}, num_ws={c.num_ws}, {len(c.noise_names)} noise maps, channels={c.channels}, "
          f"mapping_layers={c.mapping_layers}")
    save_generator(G, FLAGS.dst, source=os.path.abspath(FLAGS.src))
    reference = FLAGS.reference or _beside(FLAGS.src, ".reference.npz")
    report = self_check(G, FLAGS.dst, reference, network=FLAGS.network)
    for k, v in report.items():
        print(f"self-check {k}: {v:.3g}")
    print(f"wrote {FLAGS.dst}")


def _define_flags():
    from absl import flags

    flags.DEFINE_string("src", None, "Source: .pkl (stylegan2-ada-pytorch, or official TensorFlow StyleGAN2 or StyleGAN), "
                        ".pt/.pth/.npz (ada state dict or rosinality checkpoint).", required=True)
    flags.DEFINE_string("dst", None, "Output checkpoint directory (must not exist yet).", required=True)
    flags.DEFINE_string("conv_clamp", "unset", "For ada state dicts without NAME.json: 'none' or a value "
                        "(a pickle's own setting wins; a flag that contradicts it is refused).")
    flags.DEFINE_float("mapping_lr_multiplier", None, "Mapping lr multiplier if not 0.01 (state dicts and rosinality "
                       "checkpoints; a pickle's own setting wins; a flag that contradicts it is refused).")
    flags.DEFINE_enum("network", "Gs", ["Gs", "G"], "Gs: the moving average of G's weights (a TensorFlow pickle's "
                      "Gs, a stylegan2-ada snapshot's G_ema, a rosinality checkpoint's g_ema), the one to embed into; "
                      "G: the non-averaged generator of a file that holds both.")
    flags.DEFINE_integer("mean_latent_samples", None, "rosinality checkpoints without latent_avg (as its train.py "
                         "saves them): estimate the mean w from this many mapped z (4096 in rosinality's generate.py).",
                         lower_bound=1)
    flags.DEFINE_string("reference", None, "Optional NAME.reference.npz of the official network to compare.")


def _one_line_errors(main_fn):
    """A file that cannot be converted ends in one line naming the cause (exit status 2); a bug keeps
    its traceback."""
    import pickle
    import sys

    from i2spp_jax.formats.stylegan2 import ConversionError
    from i2spp_jax.formats.torch_pickle import TruncatedFileError

    def run(argv):
        try:
            return main_fn(argv)
        except (ConversionError, TruncatedFileError, pickle.UnpicklingError, FileNotFoundError,
                FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return run


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(_one_line_errors(main))
