"""Images per second of one training step (G step + D step + EMA) for a generator/discriminator size.

    python -m experiments.train_step_speed --channels=128,64,32,16 --d_channels=16,32,64,128

How the demo generator's size was chosen (BUILD_NOTES.md): the widths that train fast enough on
2 CPU cores. Prints compile time and the median of --steps timed steps (after two warm-up steps).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import cli
from i2spp_jax import datasets, training
from i2spp_jax.generator import GeneratorConfig


def define_flags() -> None:
    """The command line's flags (defined on demand, so that modules import side by side)."""
    flags.DEFINE_list("channels", ["128", "64", "32", "16"], "G feature maps, 4x4 .. resolution")
    flags.DEFINE_list("d_channels", ["16", "32", "64", "128"], "D feature maps, resolution .. 4x4")
    flags.DEFINE_integer("resolution", 32, "image resolution")
    flags.DEFINE_integer("img_channels", 1, "image channels")
    flags.DEFINE_integer("batch", 32, "images per step")
    flags.DEFINE_integer("steps", 5, "timed steps")


def main(argv):
    del argv
    F = flags.FLAGS
    g = GeneratorConfig(z_dim=128, w_dim=128, img_resolution=F.resolution, img_channels=F.img_channels,
                        channels=tuple(int(c) for c in F.channels), mapping_layers=4)
    cfg = training.TrainConfig(g=g, d_channels=tuple(int(c) for c in F.d_channels), batch=F.batch)
    state = training.init_state(cfg)
    reals = jnp.asarray(datasets.to_float(datasets.toy_set(F.batch, F.resolution, F.img_channels)))
    t = time.perf_counter()
    for r1 in (True, False):
        state, _ = training.train_step(cfg, state, reals, r1)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(F.steps):
        t = time.perf_counter()
        state, _ = training.train_step(cfg, state, reals, False)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t)
    med = float(np.median(times))
    print(f"G {training.num_params(state['G']):,} params, D {training.num_params(state['D']):,}; "
          f"compile (both variants) {compile_s:.1f} s; step {med * 1000:.0f} ms (median of {F.steps}); "
          f"{F.batch / med:.1f} img/s on {jax.default_backend()} ({jax.device_count()} device)")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
