"""Reads the official TensorFlow StyleGAN / StyleGAN2 network pickles without TensorFlow or dnnlib.

The official training loops save `pickle.dump((G, D, Gs), f)`, each a `dnnlib.tflib.network.Network`
whose pickled state is plain data: a dict with `version`, `name`, `static_kwargs` (the constructor
arguments), `components` (sub-Networks: `mapping`, `synthesis`), `build_module_src` (the network's
source code, as text), `build_func_name` and `variables` ([(name, numpy array)], TF layouts).

`RestrictedUnpickler` admits that class (as `TFNetwork`, which only keeps the state) and numpy's
array helpers, and nothing else: no code from the file runs, and the embedded source stays text.

    G, D, Gs = load_file("karras2019stylegan-ffhq-1024x1024.pkl")
    Gs.build_func_name, Gs.static_kwargs, tf_variables(Gs)["synthesis/4x4/Const/const"]

The readers of its two generators (`formats.stylegan1`, `formats.stylegan2`) share the rest: which
network of the file (`pick_network`), a setting read and bounded (`int_setting`), and every
variable there, of its shape, finite (`check_variables`).
"""

import io
import pickle
from typing import Any, Optional

import numpy as np

from i2spp_jax.formats.errors import FORMATS, ConversionError, UnknownFormatError
from i2spp_jax.formats.torch_pickle import UnsafePickleError

NETWORK_CLASS = ("dnnlib.tflib.network", "Network")
_SNIFF_BYTES = 4096


class DamagedNetworkError(pickle.UnpicklingError):
    """A dnnlib Network whose pickled state lacks what every official one holds."""


# what every official Network.__getstate__ writes (dnnlib of StyleGAN and of StyleGAN2), and its type;
# build_module_src and version are not needed to read the weights
_STATE = {"name": str, "static_kwargs": dict, "components": dict, "build_func_name": str, "variables": list}


def _check_state(state: Any) -> None:
    """Raises DamagedNetworkError naming the first thing an official network's state would have."""
    if not isinstance(state, dict):
        raise DamagedNetworkError(f"a dnnlib Network whose state is a {type(state).__name__}, not a dict")
    name = state.get("name", "?")
    for key, kind in _STATE.items():
        if key not in state:
            raise DamagedNetworkError(f"network {name!r} has no {key!r} in its state (every official network has)")
        if not isinstance(state[key], kind):
            raise DamagedNetworkError(f"network {name!r}: its {key} is a {type(state[key]).__name__}, not a "
                                      f"{kind.__name__}")
    version = state.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)):
        raise DamagedNetworkError(f"network {name!r}: its version is {version!r}, not a whole number")
    for cname, comp in state["components"].items():
        if not isinstance(comp, TFNetwork):
            raise DamagedNetworkError(f"network {name!r}: its component {cname!r} is a {type(comp).__name__}, not "
                                      "a Network")
    for i, item in enumerate(state["variables"]):
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise DamagedNetworkError(f"network {name!r}: variable #{i} is not a (name, array) pair")
        kind = np.asarray(item[1]).dtype.kind
        if kind not in "fiu":
            raise DamagedNetworkError(f"network {name!r}: variable {item[0]} holds {np.asarray(item[1]).dtype} "
                                      "values, not numbers")


class TFNetwork:
    """The pickled state of a `dnnlib.tflib.network.Network`, and nothing of its behaviour."""

    def __setstate__(self, state: Any) -> None:
        _check_state(state)
        self.state = state

    @property
    def name(self) -> str:
        return str(self.state.get("name"))

    @property
    def build_func_name(self) -> str:
        return str(self.state.get("build_func_name"))

    @property
    def version(self) -> int:
        return int(self.state.get("version", 0))

    @property
    def static_kwargs(self) -> dict:
        return dict(self.state.get("static_kwargs") or {})

    @property
    def components(self) -> dict:
        return dict(self.state.get("components") or {})


def _numpy_global(name: str):
    """numpy's array-pickling helper `name` (numpy 2: numpy._core; numpy 1: numpy.core)."""
    core = np._core if hasattr(np, "_core") else np.core
    return getattr(core.multiarray, name)


ALLOWED = {
    NETWORK_CLASS: lambda: TFNetwork,
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_global("_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_global("_reconstruct"),
    ("numpy.core.multiarray", "scalar"): lambda: _numpy_global("scalar"),
    ("numpy._core.multiarray", "scalar"): lambda: _numpy_global("scalar"),
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals in ALLOWED; anything else is an UnsafePickleError naming it."""

    def find_class(self, module: str, name: str):
        make = ALLOWED.get((module, name))
        if make is None:
            raise UnsafePickleError(f"the pickle references {module}.{name}, which an official TensorFlow network "
                                    "pickle does not; refusing to load it (nothing from the file was run)")
        return make()

    def persistent_load(self, pid):
        raise UnsafePickleError("the pickle uses persistent ids, which an official TensorFlow network pickle does not")


def is_tf_pickle(path: str) -> bool:
    """Whether the file's opening bytes are a pickle that references dnnlib.tflib.network.Network."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    return head[:1] == b"\x80" and b"dnnlib.tflib.network" in head


def load_file(path: str) -> Any:
    """The unpickled object: (G, D, Gs) of TFNetworks for an official training pickle.

    Raises:
      UnsafePickleError: a global an official pickle does not reference (nothing was run).
      DamagedNetworkError: a Network's state lacks what every official one holds.
      pickle.UnpicklingError: a truncated or garbled file.
    Each message starts with `path`."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except (UnsafePickleError, DamagedNetworkError) as e:
        raise type(e)(f"{path}: {e}; fetch the file again" if isinstance(e, DamagedNetworkError) else
                      f"{path}: {e}") from None
    except (EOFError, pickle.UnpicklingError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            OverflowError, UnicodeDecodeError) as e:  # a cut or garbled byte stream: any of these
        raise pickle.UnpicklingError(f"{path}: the TensorFlow network pickle is truncated or corrupt ({e}); fetch the "
                                     "file again") from None


def tf_variables(net: TFNetwork, prefix: str = "") -> dict[str, np.ndarray]:
    """{"mapping/Dense0/weight": array, "synthesis/4x4/Const/const": ..., "dlatent_avg": ...}: every
    variable of `net` and its components, named by component path as the official code does."""
    out = {}
    for name, value in net.state["variables"]:  # checked when read: (str, numbers) pairs
        out[prefix + name] = np.asarray(value)
    for cname, comp in net.components.items():
        out.update(tf_variables(comp, f"{prefix}{cname}/"))
    return out


# ---------------------------------------------------------------------------------------------
# What the readers of G_style and G_main share

NAMES = ("G", "D", "Gs")  # the official training pickle's (G, D, Gs)


def pick_network(obj: Any, path: str, which: str) -> tuple[TFNetwork, str]:
    """(the network `which` of an official training pickle `(G, D, Gs)`, a sentence saying what was
    picked). A file that holds one Network gives that one, unless its name says it is another of
    G, D, Gs than `which`: then the flag that picks it is named."""
    if which not in NAMES:
        raise ConversionError(f"network {which!r}: a TensorFlow pickle holds G, D and Gs")
    if isinstance(obj, tuple) and len(obj) == 3 and all(isinstance(n, TFNetwork) for n in obj):
        extra = " (the moving average of G's weights, the one to embed into)" if which == "Gs" else ""
        return dict(zip(NAMES, obj))[which], f"{path} is an official TensorFlow pickle (G, D, Gs): converting " \
                                             f"{which}{extra}"
    if isinstance(obj, TFNetwork):
        held = f"{path} holds a single network, {obj.name} ({obj.build_func_name}), not (G, D, Gs)"
        if obj.name == "D":
            raise ConversionError(f"{held}: the discriminator, no generator to convert")
        if obj.name in NAMES and obj.name != which:
            how = f"drop --network={which}" if obj.name == "Gs" else f"pass --network={obj.name}"
            raise ConversionError(f"{held}: it has no {which}; {how} to convert it")
        if which == "G" and obj.name != "G":
            raise ConversionError(f"{held}: --network=G picks the non-averaged G of a training pickle; drop the flag "
                                  "to convert this one")
        return obj, f"{held}: converting it"
    what = type(obj).__name__ + (f" of {len(obj)} items" if isinstance(obj, (tuple, list, dict)) else "")
    raise UnknownFormatError(f"{path}: a TensorFlow pickle holding a {what}, not the official (G, D, Gs) or one "
                             f"Network; {FORMATS}")


def int_setting(kw: dict, name: str, default: int, where: str, *, lowest: int = 1) -> int:
    """static_kwargs[name] (or the official `default`), a whole number >= `lowest`; a damaged value
    is a ConversionError naming it."""
    value = kw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lowest:
        raise ConversionError(f"{where}network setting {name}={value!r}: not a whole number >= {lowest}; the file is "
                              "damaged: fetch it again")
    return int(value)


def float_setting(kw: dict, name: str, default: Optional[float], where: str) -> Optional[float]:
    """static_kwargs[name] (or the official `default`), a positive finite number, or None where the
    official default is None (no clamp)."""
    value = kw.get(name, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 < value < np.inf:
        raise ConversionError(f"{where}network setting {name}={value!r}: not a positive number; the file is damaged: "
                              "fetch it again")
    return float(value)


def resolution_setting(kw: dict, where: str) -> int:
    res = int_setting(kw, "resolution", 1024, where, lowest=4)
    if res & (res - 1):
        raise ConversionError(f"{where}network setting resolution={res}: not a power of two; the file is damaged: "
                              "fetch it again")
    return res


def check_variables(variables: dict[str, np.ndarray], expected: dict[str, tuple], where: str) -> None:
    """Every variable in `expected` is there, of its expected shape and finite; the first that is not
    is a ConversionError naming it (and the shape it has and the one the network's settings give)."""
    for name, shape in expected.items():
        if name not in variables:
            raise ConversionError(f"{where}missing variable {name} (of shape {shape}): the file is damaged or not "
                                  "the network it says it is")
        value = variables[name]
        if tuple(value.shape) != tuple(shape):
            raise ConversionError(f"{where}variable {name} has shape {tuple(value.shape)}, expected {tuple(shape)} "
                                  "(from the network's settings): the file is damaged or not the network it says "
                                  "it is")
        bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
        if bad:
            raise ConversionError(f"{where}variable {name} holds {bad} NaN or infinite value(s) of {np.size(value)}: "
                                  "the file is damaged or its training diverged; convert another snapshot")
