"""The command-line runner every experiments/ script uses: a user's mistake ends in one line.

A `UserError`, or one of the library's input errors (a data set, an image or a checkpoint that
cannot be read, a run folder that holds another run), prints `error: <cause and fix>` and exits
with status 2, without a traceback; a bug anywhere else keeps its traceback.
"""

import os
import sys
import time

import jax
from absl import app

from i2spp_jax.datasets import DatasetError
from i2spp_jax.io import ImageError


class UserError(ValueError):
    """A mistake in the command line or its inputs; the message names the cause and the fix."""


USER_ERRORS = (UserError, DatasetError, ImageError, FileNotFoundError, FileExistsError, FloatingPointError)


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def compilation_cache_dir() -> str:
    """$I2SPP_CACHE/xla, else ~/.cache/i2spp_jax/xla: XLA programs kept between command-line runs."""
    root = os.environ.get("I2SPP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "i2spp_jax")
    return os.path.join(root, "xla")


def run(main) -> None:
    """absl's app.run(main), with a persistent compilation cache (a rerun or a resume skips most
    compiling) and USER_ERRORS reported in one line (exit status 2)."""

    def guarded(argv):
        jax.config.update("jax_compilation_cache_dir", compilation_cache_dir())
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        try:
            return main(argv)
        except USER_ERRORS as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    app.run(guarded)
