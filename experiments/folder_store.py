"""A folder run's files: which images, which host takes which, and what is finished, failed or
pending in the output folder (experiments/embed_folder.py documents the layout).

Every record is written whole or not at all: a finished image's results go into a temporary
folder that is renamed into place, so results/NAME existing means finished; JSON files are
written to a temporary name and renamed.
"""

import glob
import hashlib
import json
import os
import re
import shutil
import time
import traceback
from typing import Callable, Optional

import numpy as np

from i2spp_jax import io

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
READ_ERRORS = (io.ImageError, OSError, ValueError)  # OSError covers FileNotFoundError and permissions


def list_images(root: str, out: str) -> tuple[list[str], int]:
    """(sorted relative paths, with '/' separators, of the image files under `root`; the number of
    other files ignored). Hidden files and folders, and `out` if it lies inside, are skipped."""
    root, out_abs = os.path.abspath(root), os.path.abspath(out)
    found, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and os.path.abspath(os.path.join(dirpath, d)) != out_abs)
        for name in filenames:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in IMAGE_EXTS:
                found.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
            else:
                ignored += 1
    return sorted(found), ignored


_EXT_ALTERNATION = "|".join(e[1:] for e in IMAGE_EXTS)
# A folder whose name ends like an image's result name (a_png) or failure record (a_png.json), or like
# an escaped folder (x.d), gets ".d" appended: a file's name always ends in _EXT, an escaped folder's in
# .d, any other folder's in neither, so no file and folder (nor two of either) ever share a name.
_ESCAPED_FOLDER = re.compile(rf"(_({_EXT_ALTERNATION})(\.json)?|\.d)$", re.IGNORECASE)


def result_name(key: str) -> str:
    """The output name of an image, injective over any tree: its relative path with the extension's dot
    made '_' (a/b.png -> a/b_png, so that b.png and b.jpg never share a folder), and ".d" after each
    folder whose name could be a file's (the images of a folder a_png/ go to a_png.d/x_png, never
    inside the results of a file a.png)."""
    *folders, name = key.split("/")
    stem, ext = os.path.splitext(name)
    return "/".join([f + ".d" if _ESCAPED_FOLDER.search(f) else f for f in folders] + [stem + ext.replace(".", "_")])


def legacy_result_name(key: str) -> str:
    """The name before folders were escaped (older runs): a/b.png -> a/b_png, folders as they are."""
    stem, ext = os.path.splitext(key)
    return stem + ext.replace(".", "_")


def host_share(keys: list[str], process_index: int, process_count: int) -> list[str]:
    """Every process_count-th image from process_index on: the same split on every host."""
    return keys[process_index::process_count]


def image_seed(seed: int, key: str) -> int:
    """The seed of one image's initial variables: a function of the run's seed and the image's name
    only, so that its result does not depend on the batch it lands in or the number of devices."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{key}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def file_stat(path: str) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_image(path: str, resolution: int, channels: int, resize: bool) -> tuple[np.ndarray, list[str], str]:
    """(image [R, R, C] in [-1, 1], notes on what was converted, the file's sha256).

    Raises:
      ImageError / OSError: unreadable, corrupt, too large to decode safely, or (without `resize`) not
        resolution x resolution.
    """
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    size = io.image_size(path)
    if not resize and size != (resolution, resolution):
        raise io.ImageError(f"{size[0]}x{size[1]}, the generator needs {resolution}x{resolution}: give aligned "
                            "crops at that size, or pass --resize to centre-crop and resize")
    img, notes = io.load_image(path, resolution, channels)
    return img, notes, sha


def read_failure(e: Exception) -> tuple[str, Optional[str]]:
    """(the reason recorded for an image that `read_image` could not read, the traceback or None);
    called in the except block. Pillow's decoders raise many types besides OSError (SyntaxError,
    struct.error, MemoryError, ...): each ends as one image's failure, never the run's; an unexpected
    type is named, and its traceback kept in the record, in case it is a bug."""
    if isinstance(e, READ_ERRORS):
        return str(e), None
    if isinstance(e, MemoryError):
        return "not enough memory to decode it (MemoryError); shrink it, or free memory and rerun", None
    return f"{type(e).__name__}: {e} (an unexpected error reading it; its traceback is in this record)", \
        traceback.format_exc()


# ----------------------------------------------------------------------------------------------
# The output folder's records: one folder per finished image, one file per failed one.


class Store:
    """What is finished, failed and pending in --out, for this host's share of the images."""

    def __init__(self, out: str, images_dir: str, keys: list[str], process_index: int, process_count: int):
        self.out, self.images_dir, self.keys = out, images_dir, keys
        self.process_index, self.process_count = process_index, process_count
        self.done, self.failed = {}, {}  # key -> record
        self.changed = []  # finished images whose file changed since
        # deepest first: an older run's result nested in another's (a_png/x_png in a_png) leaves it first
        self.renamed = [key for key in sorted(keys, key=lambda k: -k.count("/")) if self._adopt_legacy(key)]
        for key in keys:
            record = self._read(self.result_path(key, "metrics.json"))
            if record is not None:
                self.done[key] = record
                if file_stat(self.source(key)) != record["file"]:
                    self.changed.append(key)
                continue
            failure = self._read(self.failure_path(key))
            if failure is not None and failure.get("file") == file_stat(self.source(key)):
                self.failed[key] = failure  # the same file failed before: not retried
        shutil.rmtree(self._tmp_root(), ignore_errors=True)  # this host's half-written results

    def _adopt_legacy(self, key) -> bool:
        """Moves what a run of an earlier version wrote for `key` under its unescaped name
        (legacy_result_name) to its name now, if the record there names this image; whether it did."""
        old, new = legacy_result_name(key), result_name(key)
        if old == new:
            return False
        moved = False
        for kind, suffix, record in (("results", "", "metrics.json"), ("failed", ".json", "")):
            src, dst = (os.path.join(self.out, kind, name + suffix) for name in (old, new))
            found = self._read(os.path.join(src, record) if record else src)
            if not isinstance(found, dict) or found.get("image") != key or os.path.exists(dst):
                continue
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.rename(src, dst)
            moved = True
            folder = os.path.dirname(src)  # the older run's folders that only a new name would escape
            while _ESCAPED_FOLDER.search(os.path.basename(folder)):
                try:
                    os.rmdir(folder)
                except OSError:  # not empty: another image's results, or another image is under it
                    break
                folder = os.path.dirname(folder)
        return moved

    @staticmethod
    def _read(path):
        try:
            with open(path) as f:
                return json.load(f)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except ValueError:  # unreadable: counts as not written (results are renamed in whole)
            return None

    def source(self, key):
        return os.path.join(self.images_dir, key)

    def result_path(self, key, *parts):
        return os.path.join(self.out, "results", result_name(key), *parts)

    def failure_path(self, key):
        return os.path.join(self.out, "failed", result_name(key) + ".json")

    def _tmp_root(self):
        return os.path.join(self.out, "results", f".tmp-process{self.process_index}")

    def checkpoint_dir(self, batch_id: str) -> str:
        return os.path.join(self.out, "ckpt", f"process{self.process_index}-batch-{batch_id}")

    def tidy(self) -> None:
        """Once this host's share is finished: removes its temporary folder, its batches' leftover
        checkpoints (a kill between a batch's results and the removal of its checkpoint leaves one),
        and ckpt/ when empty."""
        if self.pending():
            return
        for path in glob.glob(self.checkpoint_dir("*")):
            shutil.rmtree(path, ignore_errors=True)
        for path in (self._tmp_root(), os.path.join(self.out, "ckpt")):
            try:
                os.rmdir(path)
            except OSError:  # absent, or not empty (another host's batch, or a batch left unfinished)
                pass

    def pending(self) -> list[str]:
        return [k for k in self.keys if k not in self.done and k not in self.failed]

    def fail(self, key: str, stage: str, reason: str, traceback_text: Optional[str] = None) -> None:
        record = {"image": key, "stage": stage, "reason": reason, "file": file_stat(self.source(key))
                  if os.path.exists(self.source(key)) else None, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if traceback_text:
            record["traceback"] = traceback_text
        os.makedirs(os.path.dirname(self.failure_path(key)), exist_ok=True)
        _write_json(self.failure_path(key), record)
        self.failed[key] = record

    def finish(self, key: str, write: Callable[[str], dict]) -> None:
        """Writes one image's results into a temporary folder (`write(folder) -> metrics`), then
        renames it into place: results/NAME exists only when whole."""
        tmp = os.path.join(self._tmp_root(), result_name(key).replace("/", "__"))
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        record = write(tmp)
        _write_json(os.path.join(tmp, "metrics.json"), record)
        final = self.result_path(key)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.rename(tmp, final)
        if os.path.exists(self.failure_path(key)):  # an earlier failure of an older version of the file
            os.remove(self.failure_path(key))
        self.failed.pop(key, None)
        self.done[key] = record

    def manifest(self, settings: dict, summary: dict) -> dict:
        images = {}
        for key in self.keys:
            if key in self.done:
                r = self.done[key]
                images[key] = {"status": "done", "result": f"results/{result_name(key)}",
                               "psnr": r["final"]["psnr"], "ssim": r["final"]["ssim"]}
            elif key in self.failed:
                images[key] = {"status": "failed", "stage": self.failed[key]["stage"],
                               "reason": self.failed[key]["reason"]}
            else:
                images[key] = {"status": "pending"}
        return {"images_dir": os.path.abspath(self.images_dir), "settings": settings, "summary": summary,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "images": images}

    def write_manifest(self, settings: dict, summary: dict) -> str:
        name = "manifest.json" if self.process_count == 1 else f"manifest.process{self.process_index}.json"
        path = os.path.join(self.out, name)
        _write_json(path, self.manifest(settings, summary))
        return path


def _write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def merge_manifests(out: str, process_count: int) -> dict:
    """Process 0, after every host finished: manifest.json from the hosts' manifest.process<i>.json."""
    merged = None
    for i in range(process_count):
        with open(os.path.join(out, f"manifest.process{i}.json")) as f:
            part = json.load(f)
        if merged is None:
            merged = dict(part, images={}, summary={"processes": []})
        merged["images"].update(part["images"])
        merged["summary"]["processes"].append(part["summary"])
    merged["images"] = dict(sorted(merged["images"].items()))
    merged["summary"].update(summarize(merged["images"]))
    _write_json(os.path.join(out, "manifest.json"), merged)
    return merged


def summarize(images: dict) -> dict:
    """Counts and PSNR statistics over manifest entries."""
    done = {k: v for k, v in images.items() if v["status"] == "done"}
    failed = {k: v for k, v in images.items() if v["status"] == "failed"}
    out = {"images": len(images), "done": len(done), "failed": len(failed),
           "pending": len(images) - len(done) - len(failed)}
    if done:
        worst = min(done, key=lambda k: done[k]["psnr"])
        out.update(psnr_mean=float(np.mean([v["psnr"] for v in done.values()])), psnr_min=done[worst]["psnr"],
                   psnr_min_image=worst)
    return out


