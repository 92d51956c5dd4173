"""What every experiments/ command shares: a user's mistake ends in one line, inputs are checked
before anything slow is built, and a run folder keeps one run and an honest record of its time.

A command reads like this (experiments/reconstruct.py is the full example):

    def main(argv):
        config = cli.generator_config(FLAGS.generator)        # milliseconds: no weights loaded
        image = cli.load_image(FLAGS.image, config, cli.log)  # decoded and checked now
        mask = cli.load_image(FLAGS.mask, config, cli.log)
        G = cli.load_generator(FLAGS.generator)               # seconds to minutes
        if image is None:                                     # a source .pkl: its size is known now
            image = cli.load_image(FLAGS.image, G.config, cli.log)
            ...
        resuming = cli.prepare_out(FLAGS.out, {"settings": settings}, fresh=FLAGS.fresh,
                                   arrays={"targets": {"image": image}, "masks": {"mask": mask}})
        if resuming and cli.is_finished(FLAGS.out):
            return cli.log(f"{FLAGS.out} holds this run, finished; nothing to do")
        with cli.user_input(f"--mask={FLAGS.mask}", "give a mask the size of the image"):
            masks = embed.make_masks(G, 1, mask_mse=mask)     # the library checks it; a ValueError is the user's
        t0 = time.perf_counter()
        result = apps.inpaint(G, image, masks, ...)
        timing = cli.record_session(FLAGS.out, iterations=n, seconds=time.perf_counter() - t0)
        ... write outputs and metrics.json (with `timing`) ...
        cli.mark_finished(FLAGS.out)

    if __name__ == "__main__":
        cli.run(main)

Errors: a `UserError`, or one of USER_ERRORS (a data set, an image or a file that cannot be read,
a run folder that holds another run, a loss that became NaN), and a bad flag print
`error: <cause and fix>` as one line on stderr and exit with status 2, without a traceback. Any
other exception is a bug and keeps its traceback: the library's ValueErrors become UserErrors only
where a command hands them a user's input (`user_input`, `load_generator`).

A run folder (--out) holds:
    run.json     what makes the run (settings and the hashes of its input arrays): `prepare_out`
    timing.json  each session that optimised: its iterations and seconds; whether the run finished
"""

import contextlib
import errno
import hashlib
import json
import os
import pickle
import signal
import sys
import time
from typing import Any, Callable, Collection, Iterator, Mapping, Optional, Sequence

import jax
import numpy as np
from absl import app, flags

from i2spp_jax import checkpoint, host_memory, io
from i2spp_jax.embed import CheckpointMismatchError
from i2spp_jax.datasets import DatasetError
from i2spp_jax.generator import GeneratorConfig
from i2spp_jax.io import ImageError

RUN_FILE = "run.json"
TIMING_FILE = "timing.json"


# ----------------------------------------------------------------------------------------------
# Errors and the runner.


class UserError(ValueError):
    """A mistake in the command line or its inputs; the message names the cause and the fix."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's preemption, `timeout`, `kill`): the command stops as on Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


USER_ERRORS = (UserError, DatasetError, ImageError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, FloatingPointError)


def log(msg: str) -> None:
    """A progress line on stdout, with the time of day."""
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def compilation_cache_dir() -> str:
    """$I2SPP_CACHE/xla, else ~/.cache/i2spp_jax/xla: XLA programs kept between command-line runs."""
    root = os.environ.get("I2SPP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "i2spp_jax")
    return os.path.join(root, "xla")


def use_compilation_cache(path: str) -> None:
    """JAX's persistent compilation cache in `path`, for every program that takes a second or more to
    compile (set before the first compile)."""
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _fail(message: str) -> None:
    one_line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    print(f"error: {one_line}", file=sys.stderr, flush=True)
    sys.exit(2)


_WRITE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES)


def _write_failure(e: BaseException) -> Optional[OSError]:
    """The OSError of a failed write (disk full, read-only, quota, permission) behind `e`, or None.
    Orbax's tensorstore writes report it as a ValueError that quotes the OS error's code."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
            return e
        code = next((c for c in _WRITE_ERRNOS if f"[os_error_code='{c}']" in str(e)), None)
        if code is not None:
            path = str(e).split('local file "')[1].split('"')[0] if 'local file "' in str(e) else None
            return OSError(code, os.strerror(code), path)
        e = e.__cause__ or e.__context__
    return None


def _quiet_closed_loops(unraisable) -> None:
    """sys.unraisablehook: after a failed checkpoint read or write, tensorstore's callbacks reach
    orbax's closed event loop, each printing a traceback ("Event loop is closed") under the command's
    one-line error. Those are dropped; every other unraisable exception is printed as Python would."""
    if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
        return
    sys.__unraisablehook__(unraisable)


class _QuietWriteFailures:
    """A logging filter: drops the checkpointer's background threads' reports of a failed write (each
    with its traceback, hundreds of lines for a full disk); the command then reports it in one line."""

    def filter(self, record) -> bool:
        return not any(f"[os_error_code='{c}']" in record.getMessage() for c in _WRITE_ERRNOS)


class _PlainUnfinishedCheckpoint:
    """A logging filter: orbax's warning on finding a checkpoint that a stop during its write left
    unfinished ("Attempted to create temporary directory ... Removing existing directory since it is
    not finalized.") is said plainly: nothing finished is lost, the run resumed from its last whole one."""

    PREFIX = "Attempted to create temporary directory"

    def filter(self, record) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(self.PREFIX) and "not finalized" in record.msg:
            record.msg = ("removed %s: a checkpoint left half-written when an earlier run of this command stopped "
                          "while saving it (the run resumed from its last whole checkpoint; nothing finished is lost)")
        return True


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:  # an unknown flag, a bad value, a bound broken
        _fail(f"{e} (see --helpshort)")
    except SystemExit as e:  # absl's --help, --helpshort, --helpfull, --helpxml: printed, then exit status 1
        sys.exit(0 if e.code == 1 else e.code)  # help asked for and given is a success


def run(main: Callable[[list[str]], Any], *, persistent_cache: bool = True, keep_host_memory: bool = True) -> None:
    """absl's app.run(main), with a persistent compilation cache (a rerun or a resume skips most
    compiling; off for a command that measures compile time), and flag errors and USER_ERRORS
    reported in one line (exit status 2); Ctrl-C and SIGTERM in one line too (exit status 130 and
    143; a run that checkpoints writes a checkpoint where it stops, `i2spp_jax.engine.interrupts`).
    On the CPU backend, freed host memory is kept for the next step (`host_memory.keep_freed_memory`:
    each step's temporaries otherwise page-fault afresh)."""
    if keep_host_memory:
        host_memory.keep_freed_memory()

    def guarded(argv):
        import logging as std_logging

        std_logging.getLogger("absl").addFilter(_QuietWriteFailures())
        std_logging.getLogger("absl").addFilter(_PlainUnfinishedCheckpoint())
        sys.unraisablehook = _quiet_closed_loops
        if persistent_cache:
            use_compilation_cache(compilation_cache_dir())
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _raise_terminated)  # the engine then stops at a checkpoint
        try:
            return main(argv)
        except USER_ERRORS as e:
            _fail(str(e))
        except KeyboardInterrupt as e:
            what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
            print(f"\n{what}: rerun the same command to resume from its last checkpoint", file=sys.stderr, flush=True)
            sys.exit(143 if isinstance(e, Terminated) else 130)
        except Exception as e:  # a full or read-only disk, wherever the write was (orbax wraps its OSError)
            cause = _write_failure(e)
            if cause is None:
                raise
            _fail(f"cannot write {cause.filename or 'a file'}: {cause.strerror}; free some space or choose a "
                  "writable --out, then rerun the same command (it resumes from its last checkpoint)")

    _show_shared_flags_in_help()
    app.run(guarded, flags_parser=_parse_flags)


def _show_shared_flags_in_help() -> None:
    """`--help` lists the main module's key flags only; the flags a command defines through a shared
    module (edit_cli's --image, --out, --smoke; presets' --w_steps, --paper...) are the command's too."""
    main = sys.argv[0]
    for name in list(flags.FLAGS):
        module = flags.FLAGS.find_module_defining_flag(name)
        if module and module.startswith("experiments."):
            flags.FLAGS.register_key_flag_for_module(main, flags.FLAGS[name])


@contextlib.contextmanager
def user_input(what: str, fix: str = "") -> Iterator[None]:
    """Inside, a ValueError means the user's input is wrong: it becomes a UserError
    "<what>: <the library's reason>; <fix>". Wrap only the call that consumes the input, so that a
    bug anywhere else keeps its traceback.

        with cli.user_input(f"--w_init={path}", "give an embedding made with this generator"):
            init = embed.initial_variables(G, n, w_init=w)
    """
    try:
        yield
    except (UserError, CheckpointMismatchError):
        raise
    except ValueError as e:
        raise UserError(f"{what}: {e}" + (f"; {fix}" if fix else "")) from e


@contextlib.contextmanager
def resumable(out: str) -> Iterator[None]:
    """Around an optimisation that resumes from out/ckpt: a checkpoint the engine refuses (another
    run's, or one written by a version of i2spp_jax whose run fingerprint differs) ends in one line
    that names --fresh, not in the engine's three-line message."""
    try:
        yield
    except CheckpointMismatchError as e:
        raise UserError(f"{out} holds a checkpoint of another run (other inputs or settings, or one written by "
                        "another version of i2spp_jax); rerun with --fresh to move the old folder aside and start "
                        "over") from e


# ----------------------------------------------------------------------------------------------
# Inputs, read and checked before anything slow.


def generator_config(path: str) -> Optional[GeneratorConfig]:
    """The topology (resolution, channels, num_ws, w_dim) of the generator `path` names, read in
    milliseconds without its weights, so that the other inputs can be checked before it loads.

    Args:
      path: as for `i2spp_jax.load_generator`: "demo", "demo-random", a checkpoint directory, or a
        source .pkl/.pt/.npz.
    Returns:
      The config; None for a source file (its shapes are known only once it is parsed).
    Raises:
      FileNotFoundError: nothing at `path`, or a directory that is not a checkpoint.
      UserError: a checkpoint directory whose config.json is damaged.
    """
    if path == "demo-random":
        from i2spp_jax import generator

        return getattr(generator, "DEMO_CONFIG", None)
    if path != "demo" and not os.path.exists(path):
        raise FileNotFoundError(f"no generator at {path!r}: give 'demo', 'demo-random', a checkpoint directory, "
                                "or a source file (.pkl/.pt)")
    directory = checkpoint.DEMO_DIR if path == "demo" else path
    if not os.path.isdir(directory):
        return None  # a source file (or a missing demo, which load_generator explains)
    config_path = os.path.join(directory, checkpoint.CONFIG_FILE)
    how = "make one with python -m converters.stylegan2 --src=NETWORK.pkl --dst=DIR"
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{directory} is not a generator checkpoint: {checkpoint.CONFIG_FILE} is missing "
                                f"({how})")
    if not os.path.isdir(os.path.join(directory, checkpoint.PARAMS_DIR)):
        raise FileNotFoundError(f"{directory} is not a whole generator checkpoint: {checkpoint.PARAMS_DIR}/ is "
                                f"missing ({how})")
    try:
        with open(config_path) as f:
            return checkpoint.config_from_json(json.load(f)["config"])
    except (ValueError, KeyError, TypeError) as e:  # bad JSON, a missing or unknown field, a bad value
        raise UserError(f"{config_path} is damaged ({type(e).__name__}: {e}); convert the generator again "
                        f"({how})") from e


def load_generator(path: str, **convert_kwargs):
    """`i2spp_jax.load_generator`, with a file that cannot be read or converted (corrupt, truncated,
    unsafe, of an unknown format) reported as a UserError naming the cause."""
    import i2spp_jax
    from i2spp_jax.formats import stylegan2, torch_pickle

    try:
        return i2spp_jax.load_generator(path, **convert_kwargs)
    except (stylegan2.ConversionError, torch_pickle.TruncatedFileError, pickle.UnpicklingError,
            json.JSONDecodeError, checkpoint.CheckpointError) as e:
        raise UserError(f"--generator={path}: {e}; give 'demo', a checkpoint directory (python -m "
                        "converters.stylegan2), a stylegan2-ada-pytorch .pkl, a rosinality .pt, or an official "
                        "TensorFlow StyleGAN / StyleGAN2 .pkl") from e


def load_image(path: str, config: Optional[GeneratorConfig], log: Callable[[str], None] = log,
               ) -> Optional[np.ndarray]:
    """Reads an image for a generator of `config`'s resolution and channels, saying what was
    converted (see `io.load_image`).

    Returns:
      [R, R, C] float32 in [-1, 1]; None when `config` is None: then the file is only decoded and
      checked now, and is read again once the generator (hence its size) is known.
    Raises:
      FileNotFoundError / ImageError: no such file, or not an image that can be used (the reason).
    """
    if not path:
        raise UserError("an image path is empty (check the commas in the flag)")
    if config is None:
        io.load_image(path, 8, 3)  # decodes the whole file and applies every check but the size
        return None
    img, notes = io.load_image(path, config.img_resolution, config.img_channels)
    for n in notes:
        log(f"{path}: {n}")
    return img


def load_vgg(name: str):
    """VGG16 by a command's --vgg: "imagenet" (`vgg.load_vgg16`: converted once, cached), "random"
    (seeded random weights, for tests and smoke runs), or a weights path (.onnx, .pth, a folder
    made by python -m converters.vgg16)."""
    from i2spp_jax import vgg

    if name == "random":
        return vgg.random_vgg16(jax.random.PRNGKey(0))
    return vgg.load_vgg16(None if name == "imagenet" else name)


def load_npy(path: str, what: str, shapes: Optional[Sequence[tuple]] = None) -> np.ndarray:
    """Reads a float array saved with np.save (e.g. an embedding, w_plus.npy), refusing in one line
    a missing or unreadable file, a non-numeric array, NaN/inf, or a shape not among `shapes`.

    Args:
      what: how the user gave it, for the message (e.g. "--w_init=a.npy").
      shapes: the accepted shapes; None = any.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}: no such file {path!r}")
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":  # np.load would call anything else a pickle
            raise UserError(f"{what}: not a .npy file (no .npy header); give an array saved with np.save, "
                            "e.g. a run's w_plus.npy")
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, pickle.UnpicklingError) as e:
        raise UserError(f"{what}: not a .npy array file ({type(e).__name__}: {e}); give an array saved "
                        "with np.save, e.g. a run's w_plus.npy") from e
    if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.number):
        raise UserError(f"{what}: holds {type(a).__name__} of dtype {getattr(a, 'dtype', '?')}, not a numeric array")
    if shapes is not None and tuple(a.shape) not in [tuple(s) for s in shapes]:
        raise UserError(f"{what}: shape {a.shape}; this generator needs "
                        + " or ".join(str(tuple(s)) for s in shapes) + " (an embedding made with the same generator)")
    if not np.isfinite(a).all():
        raise UserError(f"{what}: contains NaN or inf values")
    return a.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The run folder: one run per --out, moved aside (never deleted) on request.


def hash_arrays(arrays: Mapping[str, Any]) -> dict[str, str]:
    """{name: the first 16 hex digits of sha256 of the array as float32}: inputs compared by content."""
    return {name: hashlib.sha256(np.asarray(a, np.float32).tobytes()).hexdigest()[:16]
            for name, a in arrays.items()}


def generator_digest(G) -> str:
    """`G.digest()`: a run folder records it, so that another generator at the same --generator path is
    never resumed into it."""
    return G.digest()


# Sections a run.json of an earlier version may lack: adopted (written in) when all else agrees.
ADOPTED_SECTIONS = ("generator_digest",)


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=lambda o: list(o) if isinstance(o, (tuple, set)) else str(o)))


def _first_free(base: str, taken: Callable[[str], bool]) -> str:
    """`base`, or else the first of base-2, base-3, ... that is not `taken`."""
    name, n = base, 1
    while taken(name):
        n += 1
        name = f"{base}-{n}"
    return name


def move_aside(out: str) -> str:
    """Renames the folder `out` to OUT.old-YYYYmmdd-HHMMSS (-2, -3, ... if taken); returns the new name."""
    aside = _first_free(f"{os.path.normpath(out)}.old-{time.strftime('%Y%m%d-%H%M%S')}", os.path.exists)
    os.rename(out, aside)
    return aside


def keep_earlier(out: str, names: Sequence[str], log: Callable[[str], None] = log) -> Optional[str]:
    """Before a measurement writes its result files `names` into `out`: renames those an earlier run left
    there to NAME.<time>.EXT (the time the first of them was written; -2, -3, ... if taken), so that a
    command run again into the same folder, with the same settings or others, adds its result beside the
    earlier ones and loses none. Returns the stamp, or None when there was nothing to keep."""
    present = [n for n in names if os.path.exists(os.path.join(out, n))]
    if not present:
        return None
    stamped = lambda name, stamp: "{0}.{2}.{1}".format(*name.split(".", 1), stamp)  # noqa: E731
    written = time.strftime("%Y%m%d-%H%M%S", time.localtime(os.path.getmtime(os.path.join(out, present[0]))))
    stamp = _first_free(written, lambda s: any(os.path.exists(os.path.join(out, stamped(n, s))) for n in present))
    for name in present:
        os.rename(os.path.join(out, name), os.path.join(out, stamped(name, stamp)))
    log(f"kept the earlier run's {', '.join(present)} in {out} as {', '.join(stamped(m, stamp) for m in present)}")
    return stamp


def _differences(theirs: dict, mine: dict, array_sections: Collection[str], derived: Collection[str]) -> str:
    """'other targets (a, b) and other settings (seed, w_steps)': what differs, by name."""
    parts, settings, derived_diff = [], [], []
    for section in sorted(set(theirs) | set(mine)):
        a, b = theirs.get(section), mine.get(section)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if section in array_sections:
                parts.append(f"other {section} ({', '.join(keys)})")
            else:
                settings += keys
        elif section == "generator_digest":
            parts.append("another generator (its weights or config differ, though the --generator path may be "
                         "the same)")
        elif section in derived:
            derived_diff.append(section)
        else:
            settings.append(section)
    if not parts and not settings:  # e.g. the phases differ only because the code changed
        settings = derived_diff
    if settings:
        parts.append(f"other settings ({', '.join(sorted(set(settings)))})")
    return " and ".join(parts)


LOCK_FILE = ".lock"
_held_locks: dict = {}  # out -> its open lock file, held until the process ends


def lock_out(out: str) -> None:
    """Holds an exclusive lock on out/.lock for the rest of this process: a second command started
    into the same folder is refused (UserError) instead of writing beside the first. The operating
    system drops the lock when the process ends, however it ends."""
    import fcntl

    key = os.path.abspath(out)
    if key in _held_locks:
        return
    f = open(os.path.join(out, LOCK_FILE), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise UserError(f"another command is running in {out} now; wait for it to end (rerun the same command "
                        "afterwards to resume or finish), or choose another --out") from None
    _held_locks[key] = f


def prepare_out(out: str, fingerprint: Mapping[str, Any], *, fresh: bool,
                arrays: Optional[Mapping[str, Mapping[str, Any]]] = None, derived: Collection[str] = (),
                log: Callable[[str], None] = log, lock: bool = False) -> bool:
    """Makes `out` the folder of this run; returns True when it already holds this run (resume it).

    The run is `fingerprint` (JSON-able sections, e.g. {"settings": {flag: value}}) plus the
    content hashes of `arrays` (sections of named input arrays, e.g. {"targets": {name: image},
    "masks": {name: mask}}), kept in out/run.json. An `out` that holds another run, or files but
    no run.json, is refused with a UserError naming what differs and the fix. With `fresh`, an
    existing `out` is first renamed to OUT.old-<time> (nothing is deleted) and a new run starts.

    Args:
      derived: sections that follow from the others (e.g. the phases, from the step counts):
        named in the refusal only when nothing else differs.
      lock: hold out/.lock (`lock_out`) from before run.json is read until the process ends.
    Returns:
      Whether `out` already held this run (False for a new or a --fresh one).
    """
    arrays = arrays or {}
    mine = _jsonable({**fingerprint, **{k: hash_arrays(v) for k, v in arrays.items()}})
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out={out} is a file, not a folder; choose another --out")
    if lock and os.path.isdir(out):
        lock_out(out)  # before --fresh moves anything: never a folder another command is writing
    if fresh and os.path.isdir(out) and set(os.listdir(out)) - {LOCK_FILE}:
        log(f"--fresh: moved the old {out} aside to {move_aside(out)}")
        old_lock = _held_locks.pop(os.path.abspath(out), None)  # it went with the old folder
        if old_lock is not None:
            old_lock.close()
    fix = (f"rerun with --fresh to move it aside to {os.path.normpath(out)}.old-<time> and start over, "
           "or choose another --out")
    path = os.path.join(out, RUN_FILE)
    if os.path.exists(path):
        try:
            with open(path) as f:
                theirs = json.load(f)
        except ValueError as e:
            raise UserError(f"{path} is damaged ({e}); {fix}") from e
        if theirs == mine:
            return True
        missing = set(mine) - set(theirs) if isinstance(theirs, dict) else set()
        if missing and missing <= set(ADOPTED_SECTIONS) and all(theirs[k] == mine.get(k) for k in theirs):
            _write_json(path, mine)  # a run of an earlier version: resumed, its run.json completed
            log(f"{path}: written by an earlier version; now also records {', '.join(sorted(missing))}")
            return True
        what = _differences(theirs if isinstance(theirs, dict) else {}, mine, set(arrays), set(derived))
        raise UserError(f"{out} holds a run with {what}; {fix}")
    if os.path.isdir(out) and set(os.listdir(out)) - {LOCK_FILE}:
        raise UserError(f"{out} holds files but no run ({RUN_FILE} is missing); {fix}")
    try:
        os.makedirs(out, exist_ok=True)
        if lock:
            lock_out(out)
        _write_json(path, mine)
    except OSError as e:
        why = "a file is in the way" if isinstance(e, (FileExistsError, NotADirectoryError)) else e.strerror
        raise UserError(f"--out={out}: cannot make the run folder there ({why}); choose a writable --out") from None
    return False


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# The run's time: each session that optimised, kept across resumes.


def _timing_file(out: str) -> dict:
    path = os.path.join(out, TIMING_FILE)
    if not os.path.exists(path):
        return {"sessions": [], "finished": False}
    with open(path) as f:
        return json.load(f)


def run_timing(out: str) -> dict:
    """The run's optimisation time so far, from out/timing.json:
    {"seconds": total, "iterations": total timed, "iterations_per_second": their ratio,
     "sessions": [{"started", "iterations", "seconds", "iterations_per_second", "machine"}, ...]}.
    Only sessions that ran to their end are counted: a killed session's time is lost, and the
    iterations it did after its last checkpoint are done again (and timed) by the next one."""
    sessions = _timing_file(out)["sessions"]
    seconds = sum(s["seconds"] for s in sessions)
    iterations = sum(s["iterations"] for s in sessions)
    return {"seconds": seconds, "iterations": iterations,
            "iterations_per_second": iterations / seconds if seconds > 0 else None, "sessions": sessions}


def record_session(out: str, *, iterations: int, seconds: float) -> dict:
    """Adds this session's optimisation (`iterations` run now in `seconds` of wall time, compiling
    included) to out/timing.json; a session that ran nothing is not recorded. Returns `run_timing`."""
    data = _timing_file(out)
    if iterations > 0:
        data["sessions"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - seconds)),
                                 "iterations": int(iterations), "seconds": float(seconds),
                                 "iterations_per_second": iterations / seconds if seconds > 0 else None,
                                 "machine": f"{jax.default_backend()} ({os.cpu_count()} cores)"})
        _write_json(os.path.join(out, TIMING_FILE), data)
    return run_timing(out)


def mark_finished(out: str) -> None:
    """Records in out/timing.json that every output of the run is written."""
    data = _timing_file(out)
    data["finished"] = True
    _write_json(os.path.join(out, TIMING_FILE), data)


def is_finished(out: str) -> bool:
    """Whether `mark_finished` was called on `out`."""
    return bool(_timing_file(out).get("finished"))
