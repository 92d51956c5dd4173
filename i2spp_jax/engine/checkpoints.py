"""The engine's checkpoints: the optimisation state of one batch, saved every few iterations.

    store = open_store(directory)          # orbax on one process; process-local files on several
    store.save(t, state, meta)             # state: a pytree of arrays; meta: JSON
    t = store.latest_step()                # None when there is none
    state, meta = store.restore(t, template)

With one process, orbax's CheckpointManager (asynchronous writes, the last two kept). With several
processes (jax.distributed), each process optimises its own images, but orbax makes every
process take part in every save and writes numpy leaves from process 0 alone (orbax 0.12,
type_handlers.py), so each process keeps its own files instead: <directory>/<step>/state.npz and
meta.json, written into a temporary folder and renamed into place, the last two kept.
"""

import json
import os
import shutil
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

KEEP = 2  # checkpoints kept


def open_store(directory: str, *, local: Optional[bool] = None):
    """The checkpoint store for `directory`; local=None picks process-local files exactly when
    several processes run (tests pass True to exercise them on one)."""
    local = jax.process_count() > 1 if local is None else local
    return LocalStore(directory) if local else OrbaxStore(directory)


class OrbaxStore:
    def __init__(self, directory: str):
        self._mgr = ocp.CheckpointManager(os.path.abspath(directory),
                                          options=ocp.CheckpointManagerOptions(max_to_keep=KEEP, create=True))

    def latest_step(self) -> Optional[int]:
        return self._mgr.latest_step()

    def save(self, t: int, state, meta: dict) -> None:
        leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
        self._mgr.save(t, args=ocp.args.Composite(state=ocp.args.StandardSave(leaves),
                                                  meta=ocp.args.JsonSave(meta)))

    def meta(self, t: int) -> dict:
        return self._mgr.restore(t, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def restore(self, t: int, template) -> tuple[Any, dict]:
        leaves, treedef = jax.tree.flatten(template)
        abstract = [jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype) for x in leaves]
        got = self._mgr.restore(t, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                           meta=ocp.args.JsonRestore()))
        return jax.tree.unflatten(treedef, [jnp.asarray(x) for x in got.state]), got.meta

    def wait_until_finished(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.close()


class LocalStore:
    """Synchronous, process-local checkpoints: a step's folder exists only when whole."""

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)

    def _steps(self) -> list[int]:
        return sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())

    def latest_step(self) -> Optional[int]:
        steps = self._steps()
        return steps[-1] if steps else None

    def save(self, t: int, state, meta: dict) -> None:
        leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
        tmp = os.path.join(self.directory, f".tmp-{t}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        np.savez(os.path.join(tmp, "state.npz"), *leaves)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f)
        final = os.path.join(self.directory, str(t))
        shutil.rmtree(final, ignore_errors=True)  # a step saved again (a resumed run) is replaced whole
        os.rename(tmp, final)
        for old in self._steps()[:-KEEP]:
            shutil.rmtree(os.path.join(self.directory, str(old)), ignore_errors=True)

    def meta(self, t: int) -> dict:
        with open(os.path.join(self.directory, str(t), "meta.json")) as f:
            return json.load(f)

    def restore(self, t: int, template) -> tuple[Any, dict]:
        leaves, treedef = jax.tree.flatten(template)
        with np.load(os.path.join(self.directory, str(t), "state.npz")) as z:
            got = [z[f"arr_{i}"] for i in range(len(leaves))]
        for i, (a, want) in enumerate(zip(got, leaves)):
            if a.shape != np.shape(want):
                raise ValueError(f"checkpoint {self.directory}/{t}: leaf {i} has shape {a.shape}, expected "
                                 f"{np.shape(want)}")
        return jax.tree.unflatten(treedef, [jnp.asarray(x) for x in got]), self.meta(t)

    def wait_until_finished(self) -> None:
        pass

    def close(self) -> None:
        pass
