"""Ship a trained generator as the package's demo generator, with held-out real test images.

    python -m experiments.ship_demo --run=runs/fmnist

Takes the EMA generator of a finished `experiments.train_generator` run (--run/generator, or with
--from_checkpoint the newest checkpoint's EMA weights), draws a grey 1-channel generator in all
three channels (`replicate_channels`: exact), and writes into i2spp_jax/assets/:
  demo_fmnist32/            the generator (config.json + orbax params), read by load_generator("demo")
  demo_fmnist32/samples.png the 8x8 sample grid it renders from SAMPLE_SEED (a test re-renders it)
  demo_fmnist32/samples.json how that grid was drawn
  fmnist_test/*.png         HELDOUT real images from the Fashion-MNIST test split (never trained on)
"""

import json
import os
import shutil

import jax
import numpy as np
from absl import flags, logging
from PIL import Image

from experiments import cli
from experiments import train_generator as T
from i2spp_jax import checkpoint, datasets, generator, plots, training

SAMPLE_SEED = 2020  # z of the shipped sample grid; noise from fold_in(PRNGKey(SAMPLE_SEED), 1)
SAMPLE_COUNT = 64
# One test-split image per class for six classes: the first of each in the test file.
HELDOUT_CLASSES = (9, 0, 1, 3, 7, 8)  # ankle boot, T-shirt, trouser, dress, sneaker, bag


def render_samples(G: generator.Generator) -> np.ndarray:
    """The shipped sample grid's images, [64, R, R, C] in [-1, 1], through the public API."""
    key = jax.random.PRNGKey(SAMPLE_SEED)
    z = jax.random.normal(key, (SAMPLE_COUNT, G.z_dim))
    noise = G.make_noise(jax.random.fold_in(key, 1), batch=SAMPLE_COUNT)
    return np.clip(np.asarray(G.synthesis(G.mapping(z), noise=noise)), -1, 1)


def _load_trained(run: str, from_checkpoint: bool) -> tuple[generator.Generator, str]:
    gen_dir = os.path.join(run, "generator")
    if not from_checkpoint:
        if not os.path.isdir(gen_dir):
            raise cli.UserError(f"{gen_dir} does not exist: the run has not finished (or pass --from_checkpoint)")
        G = checkpoint.load_generator(gen_dir)
        with open(os.path.join(gen_dir, checkpoint.CONFIG_FILE)) as f:
            return G, json.load(f)["source"]
    with open(os.path.join(run, "run.json")) as f:
        fp = json.load(f)
    tc = training.TrainConfig.from_json(json.dumps(fp["train"]))
    ckpts = T._Checkpoints(os.path.join(run, "ckpt"))
    step = ckpts.latest()
    if step is None:
        raise cli.UserError(f"{run}/ckpt holds no checkpoint")
    state = ckpts.restore(step, training.init_state(tc))
    G = generator.Generator(params=state["G_ema"], config=tc.g)
    return G, f"experiments.train_generator: {fp['data']}, {step} steps of {tc.batch} (checkpoint)"


def ship(run: str, *, from_checkpoint: bool = False, assets: str = checkpoint.ASSETS_DIR, log=print) -> dict:
    """Writes the generator and the held-out images beside the shipped ones, then swaps both in: a
    failure on the way (no dataset, a full disk) leaves the shipped assets as they were."""
    G, source = _load_trained(run, from_checkpoint)
    if G.img_channels == 1:
        G = generator.replicate_channels(G, 3)
    # the held-out images first: the dataset is what a machine is most likely to lack
    images, labels = datasets.fashion_mnist("test", resolution=G.img_resolution, channels=1, with_labels=True)
    dst = os.path.join(assets, os.path.basename(checkpoint.DEMO_DIR))
    held = os.path.join(assets, os.path.basename(checkpoint.HELDOUT_DIR))
    tmp, held_tmp = dst + ".new", held + ".new"
    for d in (tmp, held_tmp):
        shutil.rmtree(d, ignore_errors=True)
    checkpoint.save_generator(G, tmp, source=source)
    samples = render_samples(G)
    plots.sample_grid(os.path.join(tmp, "samples.png"), samples, nrow=8, scale=2)
    with open(os.path.join(tmp, "samples.json"), "w") as f:
        json.dump({"seed": SAMPLE_SEED, "count": SAMPLE_COUNT, "truncation_psi": 1.0, "nrow": 8, "scale": 2,
                   "noise": "make_noise(fold_in(PRNGKey(seed), 1), batch=count)", "source": source}, f, indent=1)
    os.makedirs(held_tmp)
    names = []
    for c in HELDOUT_CLASSES:
        i = int(np.flatnonzero(labels == c)[0])
        name = datasets.FASHION_MNIST_CLASSES[c].lower().replace("/", "_").replace(" ", "_")
        names.append(f"test{i:05d}_{name}.png")
        Image.fromarray(images[i, ..., 0]).save(os.path.join(held_tmp, names[-1]), optimize=True)
    for new, old in ((tmp, dst), (held_tmp, held)):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(new, old)
    written = [os.path.join(held, n) for n in names]
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(dst) for f in fs)
    held_size = sum(os.path.getsize(p) for p in written)
    log(f"shipped {source} as {dst} ({size / 1e6:.2f} MB, {training.num_params(G.params):,} params); "
        f"{len(written)} held-out test images ({held_size / 1e3:.1f} KB) in {held}")
    return {"generator_bytes": size, "heldout": written}


FLAGS = flags.FLAGS
def define_flags() -> None:
    """The command line's flags (defined on demand, so that modules import side by side)."""
    flags.DEFINE_string("run", "runs/fmnist", "a train_generator output directory")
    flags.DEFINE_boolean("from_checkpoint", False, "ship the newest checkpoint's EMA generator (run unfinished)")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    ship(FLAGS.run, from_checkpoint=FLAGS.from_checkpoint, log=cli.log)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
