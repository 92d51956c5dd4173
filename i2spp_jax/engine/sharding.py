"""Data parallelism for the engine: the batch of images split over devices, everything else copied.

    mesh = batch_mesh()                      # all local devices, one axis named "batch"
    result = embed(G, targets, ..., mesh=mesh)   # B must be a multiple of mesh.size

Each image's optimisation is independent (vmap over images, no term mixes them), so the step needs
no communication: with the batched inputs placed by `shard_batch` and the generator and VGG by
`replicate`, `jax.jit` partitions the vmapped step along the batch axis and every device runs its
own images. A mesh spans local devices only; several hosts each embed their own share of the
images (experiments/embed_folder.py), which needs no collective between hosts.
"""

from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"


def batch_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A 1-D mesh over `devices` (default: this process's local devices) with axis "batch"."""
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("batch_mesh needs at least one device")
    return Mesh(np.array(devices), (BATCH_AXIS,))


def check_batch(mesh: Mesh, batch: int) -> None:
    """Refuses a batch that the mesh's devices cannot share equally."""
    if batch % mesh.size:
        raise ValueError(f"a batch of {batch} images cannot be split over {mesh.size} devices; give a multiple of "
                         f"{mesh.size} (pad the batch, e.g. by repeating an image, and drop the padding's results)")


def shard_batch(tree, mesh: Mesh):
    """Places every leaf ([B, ...]) with its leading axis split over the mesh."""
    sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
    return jax.tree.map(lambda a: jax.device_put(a, sharding), tree)


def replicate(tree, mesh: Mesh):
    """Places every leaf whole on every device of the mesh (the generator, VGG)."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda a: jax.device_put(a, sharding), tree)
