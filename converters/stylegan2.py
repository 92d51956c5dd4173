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
this is the command line around them: check --dst and --reference, convert, write into a hidden folder
beside --dst, reload, compare (a failed comparison is an error), and only then rename it to --dst.
"""

import contextlib
import os
import pickle
import shutil
import tempfile
from typing import Iterator, Optional

import numpy as np

from converters.one_line import one_line_errors
from i2spp_jax.checkpoint import load_generator, save_generator
from i2spp_jax.formats.generators import AnyGenerator, convert_file
from i2spp_jax.formats.stylegan2 import ConversionError, _beside, check_source_path
from i2spp_jax.formats.torch_pickle import TruncatedFileError

RTOL = 1e-4  # the self-check's bound on relative error; a faithful conversion lands near 1e-6 (shared/parity)


class SelfCheckError(RuntimeError):
    """The converted generator does not render what it should: nothing is written to --dst."""


# ---------------------------------------------------------------------------------------------
# What --reference (or NAME.reference.npz beside --src) holds: (input key, output key, what it is)

_REFERENCE_PAIRS = {
    "Gs": [("ws_plus", "img_const", "synthesis(ws_plus), stored noise: the PyTorch fixtures' G_ema / g_ema"),
           ("w_plus", "img_synth_wplus", "synthesis(w_plus), stored noise: the TensorFlow fixtures' Gs")],
    "G": [("z", "img_G_psi1", "the non-averaged G on z, psi 1: the TensorFlow fixtures' G")],
}


def read_reference(path: Optional[str], network: str, *, given: bool) -> Optional[dict]:
    """{"input": key, "output": key, "path": path, arrays...} of the pair in `path` that fits `network`,
    or None (no file, or a file found beside --src that holds no output of `network`). A file the user
    gave (`given`) must be readable and hold such a pair; each failure is a ConversionError naming it."""
    if path is None:
        return None
    flag = f"--reference={path}" if given else f"{path} (found beside --src; move it away or pass --reference)"
    if not os.path.isfile(path):
        raise ConversionError(f"{flag}: no such file" if not os.path.exists(path) else f"{flag} is a folder: give a "
                              "NAME.reference.npz file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile, ValueError, EOFError: all mean an unreadable file to a user
        why = str(e).split(". ")[0] or type(e).__name__  # numpy's advice to unpickle a file is not for this one
        raise ConversionError(f"{flag}: not a readable .npz of arrays ({why})") from None
    for x, y, _ in _REFERENCE_PAIRS[network]:
        if x in arrays and y in arrays:
            return {"input": x, "output": y, "path": path, **arrays}
    if not given:
        return None
    wanted = " or ".join(f"{x} + {y} ({what})" for x, y, what in _REFERENCE_PAIRS[network])
    raise ConversionError(f"{flag}: holds none of the outputs a --network={network} conversion is compared with: "
                          f"{wanted}")


def check_reference_fits(G: AnyGenerator, ref: dict) -> None:
    """The reference's input and output shapes are the converted generator's: refused in one line if not."""
    x, y = ref[ref["input"]], ref[ref["output"]]
    takes = (G.num_ws, G.w_dim) if x.ndim == 3 else (G.z_dim,)
    gives = (G.config.img_channels, G.img_resolution, G.img_resolution)
    if x.ndim not in (2, 3) or x.shape[1:] != takes or y.shape != (x.shape[0], *gives):
        raise ConversionError(f"{ref['path']}: its {ref['input']} {x.shape} and {ref['output']} {y.shape} do not fit "
                              f"this generator (it takes [N, {', '.join(map(str, takes))}] and renders [N, "
                              f"{', '.join(map(str, gives))}]): the reference belongs to another network")


# ---------------------------------------------------------------------------------------------
# The self-check

def self_check(G: AnyGenerator, ckpt: str, ref: Optional[dict], seed: int = 0) -> dict:
    """Reloads `ckpt`, renders fixed latents, and compares with the in-memory conversion and, when
    given, the official network's outputs (`read_reference`: the PyTorch fixtures' ws_plus ->
    img_const, the TensorFlow fixtures' w_plus -> img_synth_wplus for Gs and z -> img_G_psi1 for G)."""
    G2 = load_generator(ckpt)
    z = np.random.RandomState(seed).randn(4, G.z_dim).astype(np.float32)
    a = np.asarray(G.synthesis(G.mapping(z, truncation_psi=0.7), noise="const"))
    b = np.asarray(G2.synthesis(G2.mapping(z, truncation_psi=0.7), noise="const"))
    report = {"finite": bool(np.isfinite(a).all()), "reload_max_abs_diff": float(np.abs(a - b).max()),
              "reload_rel_error": _rel(b, a)}
    if ref:
        x = ref[ref["input"]]
        got = G2.synthesis(G2.mapping(x) if ref["input"] == "z" else x, noise="const")
        got, want = np.asarray(got).transpose(0, 3, 1, 2), ref[ref["output"]]
        report["reference_max_abs_diff"] = float(np.abs(got - want).max())
        report["reference_rel_error"] = _rel(got, want)
    return report


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / max(float(np.linalg.norm(want)), 1e-30))


def judge(report: dict, ref: Optional[dict], rtol: float) -> None:
    """Raises SelfCheckError (one line) when the conversion renders NaN/inf, does not read back as
    written, or differs from the official network's outputs by more than `rtol` (relative error)."""
    nothing = "nothing was written to --dst"
    if not report["finite"]:
        raise SelfCheckError(f"self-check failed: the converted generator renders NaN or infinite values; {nothing}. "
                             "The file's weights overflow in float32: convert another snapshot")
    if not report["reload_rel_error"] <= rtol:  # `not <=`: a NaN fails too
        raise SelfCheckError(f"self-check failed: the checkpoint read back renders other images than the conversion "
                             f"(relative error {report['reload_rel_error']:.3g}); {nothing}. Check the disk, then "
                             "convert again")
    if ref and not report["reference_rel_error"] <= rtol:
        raise SelfCheckError(f"self-check failed: the converted generator differs from the official network's "
                             f"{ref['output']} in {ref['path']} by {report['reference_rel_error']:.3g} relative "
                             f"(largest difference {report['reference_max_abs_diff']:.3g}, tolerance {rtol:g}); "
                             f"{nothing}. If the reference belongs to another network, give the right one with "
                             "--reference; if not, the conversion is wrong for this file: please report it")


# ---------------------------------------------------------------------------------------------
# --dst: checked before converting, written only once the self-check passed

def check_destination(dst: str) -> None:
    """--dst must be new (or an empty folder), and the nearest existing folder above it writable:
    refused before converting, and nothing is made yet."""
    if os.path.isdir(dst):
        if os.listdir(dst):
            raise FileExistsError(f"--dst={dst} already exists and holds files; choose a new destination or delete it")
    elif os.path.lexists(dst):
        raise FileExistsError(f"--dst={dst} already exists (a file, not a folder); choose a new destination")
    parent = os.path.dirname(os.path.abspath(dst))
    top = parent
    while not os.path.lexists(top):
        top = os.path.dirname(top)
    if not os.path.isdir(top):
        raise ConversionError(f"--dst={dst}: cannot make its parent folder {parent} (a file is in the way: {top}); "
                              "choose a destination in a writable folder")
    if not os.access(top, os.W_OK | os.X_OK):
        raise ConversionError(f"--dst={dst}: the folder {top} is not writable; choose another destination")


def _make_parents(parent: str) -> list[str]:
    """Makes `parent` and the folders above it that are missing; returns those it made, deepest first."""
    made = []
    d = parent
    while not os.path.exists(d):
        made.append(d)
        d = os.path.dirname(d)
    os.makedirs(parent, exist_ok=True)
    return made


@contextlib.contextmanager
def staged(dst: str) -> Iterator[str]:
    """A checkpoint path in a hidden folder beside `dst`; if the block ends without an error it is
    renamed to `dst`, else removed with every folder made for it: --dst is a whole, checked
    checkpoint or nothing."""
    parent = os.path.dirname(os.path.abspath(dst))
    made = _make_parents(parent)
    stage = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(dst))}.converting-", dir=parent)
    try:
        ckpt = os.path.join(stage, "checkpoint")
        yield ckpt
        try:
            os.rename(ckpt, dst)  # atomic; replaces an empty folder, fails on anything else
        except OSError:
            raise FileExistsError(f"--dst={dst} appeared while converting (another run?): the conversion was not "
                                  "written; choose a new destination") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for d in made:
            with contextlib.suppress(OSError):
                os.rmdir(d)
        raise
    shutil.rmtree(stage, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# CLI

def main(argv):
    del argv
    from absl import flags, logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO

    FLAGS = flags.FLAGS
    # everything a user can get wrong is checked before the conversion, which takes minutes for 1024x1024
    check_source_path(FLAGS.src)
    check_destination(FLAGS.dst)
    given = FLAGS.reference is not None
    ref = read_reference(FLAGS.reference if given else _beside(FLAGS.src, ".reference.npz"), FLAGS.network,
                         given=given)
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
    if ref:
        check_reference_fits(G, ref)
    else:
        print("self-check: no reference outputs (NAME.reference.npz beside --src, or --reference) to compare with")
    with staged(FLAGS.dst) as ckpt:
        save_generator(G, ckpt, source=os.path.abspath(FLAGS.src))
        report = self_check(G, ckpt, ref)
        for k, v in report.items():
            if k != "finite":
                print(f"self-check {k}: {v:.3g}")
        judge(report, ref, FLAGS.self_check_rtol)
    print(f"wrote {FLAGS.dst}")


def _define_flags():
    from absl import flags

    flags.DEFINE_string("src", None, "Source: .pkl (stylegan2-ada-pytorch, or official TensorFlow StyleGAN2 or StyleGAN), "
                        ".pt/.pth/.npz (ada state dict or rosinality checkpoint).", required=True)
    flags.DEFINE_string("dst", None, "Output checkpoint directory (must not exist yet, or be empty); written only "
                        "once the self-check passed.", required=True)
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
    flags.DEFINE_string("reference", None, "NAME.reference.npz of the official network's outputs to compare with "
                        "(default: the one beside --src, if any); see read_reference for the keys.")
    flags.DEFINE_float("self_check_rtol", RTOL, "Largest relative error (norm of the difference over the norm of the "
                       "reference) the self-check accepts; above it nothing is written to --dst.", lower_bound=0.0)


# A file that cannot be converted, or a --dst or --reference that cannot be used: one line, exit status 2.
USER_ERRORS = (ConversionError, SelfCheckError, TruncatedFileError, pickle.UnpicklingError, FileNotFoundError,
               FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(one_line_errors(main, USER_ERRORS))
