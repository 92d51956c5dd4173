"""Reads PyTorch pickles (.pkl network snapshots, .pt/.pth torch.save files) without torch and
without executing anything from the file.

stylegan2-ada-pytorch's network pickles embed the source code of their classes and rebuild them by
executing it (`torch_utils.persistence`). Ours never does: the unpickler below resolves only the
globals in `ALLOWED` to local, data-only stand-ins, and refuses any other global by name before
anything is called. Tensors come back as numpy arrays.

Formats handled:
  * plain pickles whose tensors were pickled by torch (`_rebuild_tensor_v2` over
    `torch.storage._load_from_bytes`, whose payload is a legacy torch.save blob);
  * torch.save zip archives (`archive/data.pkl` + `archive/data/<key>`), torch >= 1.6;
  * legacy torch.save streams (magic number, then pickles, then raw storages).
"""

import collections
import io
import pickle
import struct
import zipfile
from typing import Any, Callable, Optional

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class UnsafePickleError(pickle.UnpicklingError):
    """The file names a global that is not on the allow-list; nothing from it was run."""


class TruncatedFileError(ValueError):
    """The file ends before its data does."""


class DamagedFileError(pickle.UnpicklingError):
    """A whole pickle whose objects lack what every file of its kind holds."""


class PersistentObject(dict):
    """What `torch_utils.persistence._reconstruct_persistent_obj(meta)` would have built, as data:
    the class name and the instance's state. Its embedded source code is kept as text, never run."""

    @property
    def class_name(self) -> str:
        return self["class_name"]

    @property
    def state(self) -> dict:
        return self["state"]


class EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict."""


class Namespace(dict):
    """Stand-in for argparse.Namespace (rosinality checkpoints store the training args)."""

    def __setstate__(self, state):
        self.update(state)


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _np_dtype(d):
    if d == "bfloat16":
        import ml_dtypes  # ships with jax

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(d)


class _Storage:
    """A typed storage: a flat numpy array, filled when the raw bytes are read."""

    def __init__(self, dtype, numel: int):
        self.dtype = _np_dtype(dtype)
        self.numel = numel
        self.array: Optional[np.ndarray] = None


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage) or storage.array is None:
        raise pickle.UnpicklingError("tensor refers to a storage whose data was not read")
    item = storage.dtype.itemsize
    size, stride = tuple(size), tuple(stride)
    need = storage_offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1 if all(size) else 0
    if need > storage.array.size:
        raise TruncatedFileError(f"tensor of size {size} needs {need} elements; its storage has "
                                 f"{storage.array.size}")
    arr = np.lib.stride_tricks.as_strided(
        storage.array[storage_offset:], shape=size, strides=tuple(s * item for s in stride)
    )
    return np.array(arr)  # own the memory, contiguous


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _reconstruct_persistent_obj(meta):
    if not (isinstance(meta, dict) and isinstance(meta.get("class_name"), str) and isinstance(meta.get("state"), dict)):
        raise DamagedFileError("a stylegan2-ada-pytorch persistent object without its class_name and state: the file "
                               "is damaged")
    return PersistentObject(meta)


def _numpy_scalar(dtype, data=None):
    return np.frombuffer(data, dtype=dtype)[0] if data is not None else dtype.type()


def _load_from_bytes(b: bytes):
    return load_legacy(io.BytesIO(b))


def _allowed() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _load_from_bytes,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("dnnlib.util", "EasyDict"): EasyDict,
        ("dnnlib", "EasyDict"): EasyDict,
        ("argparse", "Namespace"): Namespace,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    }
    for name in _STORAGE_DTYPES:
        table[("torch", name)] = _StorageType(name)
    return table


ALLOWED = _allowed()


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only ALLOWED globals; refuses any other by name, before anything is called."""

    def __init__(self, file, persistent_load: Optional[Callable] = None):
        super().__init__(file)
        self._persistent_load = persistent_load

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: it is not one of the {len(ALLOWED)} "
                "data-only globals a StyleGAN2 checkpoint needs, and nothing in the file is executed"
            ) from None

    def persistent_load(self, pid):
        if self._persistent_load is None:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return self._persistent_load(pid)


def _storage_from_pid(pid, storages: dict) -> _Storage:
    if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
        raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
    storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], pid[4]
    view = pid[5] if len(pid) > 5 else None
    if not isinstance(storage_type, _StorageType):
        raise pickle.UnpicklingError(f"persistent id names no storage type: {pid!r}")
    if key not in storages:
        storages[key] = _Storage(storage_type.dtype, int(numel))
    if view is not None:
        raise pickle.UnpicklingError("storage views (torch < 0.4 files) are not supported")
    return storages[key]


def _read_exact(f, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TruncatedFileError(f"file ends inside {what}: wanted {n} bytes, got {len(data)}")
    return data


def load_legacy(f) -> Any:
    """Reads a legacy (non-zip) torch.save stream."""
    try:
        magic = pickle.load(f)
    except (EOFError, pickle.UnpicklingError) as e:
        raise TruncatedFileError(f"not a torch.save stream or truncated: {e}") from None
    if magic != LEGACY_MAGIC:
        raise pickle.UnpicklingError("bad magic number: not a legacy torch.save stream")
    pickle.load(f)  # protocol version
    pickle.load(f)  # sys info
    storages: dict[str, _Storage] = {}

    def pid_load(pid):
        return _storage_from_pid(pid, storages)

    up = _DeferredUnpickler(f, pid_load)
    # Tensors need their data, which comes after the object pickle: placeholders first.
    try:
        obj = up.load()
        keys = pickle.load(f)
    except EOFError:
        raise TruncatedFileError("file ends inside the pickled objects") from None
    except pickle.UnpicklingError as e:
        if "truncated" in str(e):
            raise TruncatedFileError(f"file ends inside the pickled objects ({e})") from None
        raise
    for key in keys:
        s = storages[str(key)]
        (numel,) = struct.unpack("<q", _read_exact(f, 8, f"storage {key} header"))
        raw = _read_exact(f, numel * s.dtype.itemsize, f"storage {key}")
        s.array = np.frombuffer(raw, dtype=s.dtype)
    return _resolve(obj)


class _Deferred:
    """A tensor whose storage bytes have not been read yet."""

    def __init__(self, args):
        self.args = args


def _resolve(obj):
    if isinstance(obj, _Deferred):
        return _rebuild_tensor_v2(*obj.args)
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = _resolve(v)
        return obj
    if isinstance(obj, list):
        return [_resolve(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v) for v in obj)
    return obj


class _DeferredUnpickler(RestrictedUnpickler):
    def find_class(self, module, name):
        fn = super().find_class(module, name)
        if fn is _rebuild_tensor_v2:
            return lambda *a: _Deferred(a)
        if fn is _rebuild_parameter:
            return lambda data, *a: data
        return fn


def load_zip(path_or_file) -> Any:
    """Reads a torch.save zip archive."""
    name = path_or_file if isinstance(path_or_file, str) else getattr(path_or_file, "name", "the file")
    try:
        zf = zipfile.ZipFile(path_or_file)
    except zipfile.BadZipFile as e:
        raise TruncatedFileError(f"{name}: corrupt or truncated zip archive ({e}); fetch the file again") from None
    with zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl")]
        if not pkl:
            raise pickle.UnpicklingError(f"{name}: a zip archive without data.pkl, not a torch.save file")
        prefix = pkl[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}

        def pid_load(pid):
            s = _storage_from_pid(pid, storages)
            if s.array is None:
                name = f"{prefix}data/{pid[2]}"
                try:
                    raw = zf.read(name)
                except KeyError:
                    raise TruncatedFileError(f"archive lacks {name}") from None
                except (zipfile.BadZipFile, EOFError) as e:
                    raise TruncatedFileError(f"corrupt archive member {name}: {e}") from None
                if len(raw) < s.numel * s.dtype.itemsize:
                    raise TruncatedFileError(f"{name} has {len(raw)} bytes; expected {s.numel * s.dtype.itemsize}")
                s.array = np.frombuffer(raw[: s.numel * s.dtype.itemsize], dtype=s.dtype)
            return s

        try:
            data = zf.read(pkl[0])
        except (zipfile.BadZipFile, EOFError) as e:
            raise TruncatedFileError(f"corrupt archive member {pkl[0]}: {e}") from None
        return RestrictedUnpickler(io.BytesIO(data), pid_load).load()


def load_file(path: str) -> Any:
    """Any of the three formats above, by content."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        return load_zip(path)
    with open(path, "rb") as f:
        # A legacy torch.save stream starts with the pickled magic number.
        try:
            first = RestrictedUnpickler(f).load()
        except EOFError:
            raise TruncatedFileError(f"{path} ends inside its first pickle") from None
        except (UnsafePickleError, DamagedFileError):
            raise
        except (pickle.UnpicklingError, ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError) as e:
            if "truncated" in str(e):
                raise TruncatedFileError(f"{path} is truncated ({e})") from None
            raise pickle.UnpicklingError(f"{path} is neither a pickle nor a zip archive "
                                         f"(starts {head!r}: {type(e).__name__}: {e})") from None
        if first == LEGACY_MAGIC:
            f.seek(0)
            return load_legacy(f)
        return first
