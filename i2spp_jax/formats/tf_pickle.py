"""Reads the official TensorFlow StyleGAN / StyleGAN2 network pickles without TensorFlow or dnnlib.

The official training loops save `pickle.dump((G, D, Gs), f)`, each a `dnnlib.tflib.network.Network`
whose pickled state is plain data: a dict with `version`, `name`, `static_kwargs` (the constructor
arguments), `components` (sub-Networks: `mapping`, `synthesis`), `build_module_src` (the network's
source code, as text), `build_func_name` and `variables` ([(name, numpy array)], TF layouts).

`RestrictedUnpickler` admits that class (as `TFNetwork`, which only keeps the state) and numpy's
array helpers, and nothing else: no code from the file runs, and the embedded source stays text.

    G, D, Gs = load_file("karras2019stylegan-ffhq-1024x1024.pkl")
    Gs.build_func_name, Gs.static_kwargs, tf_variables(Gs)["synthesis/4x4/Const/const"]
"""

import io
import pickle
from typing import Any

import numpy as np

from i2spp_jax.formats.torch_pickle import UnsafePickleError

NETWORK_CLASS = ("dnnlib.tflib.network", "Network")
_SNIFF_BYTES = 4096


class TFNetwork:
    """The pickled state of a `dnnlib.tflib.network.Network`, and nothing of its behaviour."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("variables"), list):
            raise pickle.UnpicklingError("a dnnlib Network whose state is not a dict with a list of variables")
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
    """The unpickled object: (G, D, Gs) of TFNetworks for an official training pickle."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except (EOFError, pickle.UnpicklingError) as e:
        if isinstance(e, UnsafePickleError):
            raise
        raise pickle.UnpicklingError(f"{path}: the TensorFlow network pickle is truncated or corrupt ({e})") from e


def tf_variables(net: TFNetwork, prefix: str = "") -> dict[str, np.ndarray]:
    """{"mapping/Dense0/weight": array, "synthesis/4x4/Const/const": ..., "dlatent_avg": ...}: every
    variable of `net` and its components, named by component path as the official code does."""
    out = {}
    for name, value in net.state["variables"]:
        if not isinstance(value, np.ndarray):
            value = np.asarray(value)
        out[prefix + str(name)] = value
    for cname, comp in net.components.items():
        if not isinstance(comp, TFNetwork):
            raise pickle.UnpicklingError(f"component {cname} of {net.name} is not a Network")
        out.update(tf_variables(comp, f"{prefix}{cname}/"))
    return out
