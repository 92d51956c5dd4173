"""How good is a generator trained on Fashion-MNIST? A Fréchet distance and a copy check.

    python -m experiments.evaluate_generator                      # the shipped demo generator
    python -m experiments.evaluate_generator --generator=runs/fmnist/generator --out=runs/eval

Fréchet distance (as FID, but in a feature space the project already has): VGG16 conv3_3
activations (ImageNet weights, `load_vgg16`), global-average-pooled to 256 numbers per image, on
images upsampled from 32x32 to --vgg_resolution. Printed for
  real train vs real test           the floor: what two samples of the real distribution score
  generated vs real test            the trained generator
  untrained generator vs real test  the ceiling: the same network at its initialisation
each with --n images per side. The copy check: for --n_nn generated images and as many real test
images, the pixel-space (grey, [0, 1]) distance to the nearest of the 60000 training images. A
generator that copies its training set has generated distances far below the test images' own.
Writes --out/evaluation.json and --out/nearest_neighbours.png (generated | nearest training image).
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

import i2spp_jax
from experiments import benchmark, cli
from i2spp_jax import datasets, generator, losses, metrics, plots, stylegan1


def vgg_pooled_features(vgg, images: np.ndarray, resolution: int, chunk: int = 200) -> np.ndarray:
    """uint8 or float [-1, 1] images [N, R, R, 3] -> pooled conv3_3 features [N, 256] (float64)."""

    @jax.jit
    def feats(x):
        x = losses.resize(x, resolution)
        return jnp.mean(vgg.features(x, layers=("conv3_3",))["conv3_3"], axis=(1, 2))

    out = []
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk]
        x = datasets.to_float(x) if x.dtype == np.uint8 else x
        out.append(np.asarray(feats(jnp.asarray(x, jnp.float32)), np.float64))
    return np.concatenate(out)


def generate(G, n: int, seed: int, chunk: int = 500) -> np.ndarray:
    """n samples [n, R, R, C] in [-1, 1] (psi 1, random noise) from fixed seeds."""
    out = []
    for i in range(0, n, chunk):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
        m = min(chunk, n - i)
        z = jax.random.normal(key, (m, G.z_dim))
        noise = G.make_noise(jax.random.fold_in(key, 1), batch=m)
        out.append(np.clip(np.asarray(G.synthesis(G.mapping(z), noise=noise, fused_modconv=False)), -1, 1))
    return np.concatenate(out)


def untrained_like(G, key: jax.Array):
    """The same network at its initialisation: a StyleGAN2 `Generator` or a StyleGAN (v1) one."""
    if G.generation == 1:
        return stylegan1.StyleGAN1Generator(params=stylegan1.init_params_like(G.config, G.params, key), config=G.config)
    return generator.Generator(params=generator.init_params(G.config, key), config=G.config)


def _grey01(images: np.ndarray) -> np.ndarray:
    x = datasets.to_float(images) if images.dtype == np.uint8 else images
    return ((x.mean(axis=-1) + 1) / 2).reshape(len(x), -1)


def evaluate(G, *, n: int = 5000, n_nn: int = 1000, vgg_resolution: int = 64, seed: int = 0, log=print) -> dict:
    t0 = time.perf_counter()
    r = G.img_resolution
    train = datasets.fashion_mnist("train", resolution=r, channels=3)
    test = datasets.fashion_mnist("test", resolution=r, channels=3)
    rng = np.random.default_rng(seed)
    train_sub = train[rng.choice(len(train), n, replace=False)]
    test_sub = test[rng.choice(len(test), n, replace=False)]
    untrained = untrained_like(G, jax.random.PRNGKey(seed))
    fakes = generate(G, n, seed + 1)
    fakes_untrained = generate(untrained, n, seed + 1)
    vgg = i2spp_jax.load_vgg16()
    f = {name: vgg_pooled_features(vgg, x, vgg_resolution) for name, x in
         (("train", train_sub), ("test", test_sub), ("generated", fakes), ("untrained", fakes_untrained))}
    fd = {"real_train_vs_real_test (floor)": metrics.frechet_distance(f["train"], f["test"]),
          "generated_vs_real_test": metrics.frechet_distance(f["generated"], f["test"]),
          "generated_vs_real_train": metrics.frechet_distance(f["generated"], f["train"]),
          "untrained_vs_real_test (ceiling)": metrics.frechet_distance(f["untrained"], f["test"])}
    train_px = _grey01(train)
    nn_gen = metrics.nearest_neighbour_distances(_grey01(fakes[:n_nn]), train_px)
    nn_test = metrics.nearest_neighbour_distances(_grey01(test[:n_nn]), train_px)

    def stats(d):
        return {"min": float(d.min()), "p5": float(np.percentile(d, 5)), "median": float(np.median(d)),
                "mean": float(d.mean())}

    result = {
        "frechet_distance": fd,
        "feature_space": f"VGG16 conv3_3 (ImageNet, {i2spp_jax.load_vgg16().preprocessing} preprocessing), "
                         f"global average pool, images upsampled to {vgg_resolution}x{vgg_resolution}",
        "n_per_side": n,
        "nearest_training_image_distance": {
            "generated": stats(nn_gen), "real_test": stats(nn_test),
            "generated_closer_than_every_test_image": int((nn_gen < nn_test.min()).sum()),
            "space": "L2 over grey pixels in [0, 1] (32x32 = 1024 values)", "n": n_nn},
        "seconds": time.perf_counter() - t0,
    }
    order = np.argsort(nn_gen)[:8]  # the 8 generated images closest to a training image
    nearest = [int(np.argmin(np.sum((train_px - _grey01(fakes[i:i + 1])) ** 2, axis=1))) for i in order]
    result["_pairs"] = (fakes[order], datasets.to_float(train[nearest]), nn_gen[order])
    for k, v in fd.items():
        log(f"Fréchet distance {k}: {v:.2f}")
    g, t = result["nearest_training_image_distance"]["generated"], result["nearest_training_image_distance"]["real_test"]
    log(f"nearest training image (pixels): generated median {g['median']:.2f} min {g['min']:.2f}; "
        f"real test median {t['median']:.2f} min {t['min']:.2f}")
    return result


FLAGS = flags.FLAGS
def define_flags() -> None:
    """The command line's flags (defined on demand, so that modules import side by side)."""
    flags.DEFINE_string("generator", "demo", "the generator to evaluate")
    flags.DEFINE_string("out", "runs/evaluate", "output directory")
    flags.DEFINE_integer("n", 5000, "images per side of each Fréchet distance (2 to 10000, the test split's size)",
                         lower_bound=2, upper_bound=10000)
    flags.DEFINE_integer("n_nn", 1000, "images in the copy check (at most --n)", lower_bound=1)
    flags.DEFINE_integer("vgg_resolution", 64, "VGG input size", lower_bound=8)
    flags.register_multi_flags_validator(["n", "n_nn"], lambda f: f["n_nn"] <= f["n"],
                                         "--n_nn must be at most --n (the copy check uses that many generated images)")
    flags.DEFINE_integer("seed", 0, "sampling seed")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    benchmark.check_out(FLAGS.out)  # before the minutes of sampling and featurising
    G = cli.load_generator(FLAGS.generator)
    result = evaluate(G, n=FLAGS.n, n_nn=FLAGS.n_nn, vgg_resolution=FLAGS.vgg_resolution, seed=FLAGS.seed,
                      log=cli.log)
    fakes, nearest, dist = result.pop("_pairs")
    benchmark.make_out(FLAGS.out)
    cli.keep_earlier(FLAGS.out, ["evaluation.json", "nearest_neighbours.png"])
    titles = [[f"distance {d:.2f}" for d in dist], ["" for _ in dist]]
    plots.image_grid(os.path.join(FLAGS.out, "nearest_neighbours.png"), [list(fakes), list(nearest)], titles,
                     ["generated (the 8 closest\nto a training image)", "their nearest\ntraining image"],
                     panel_inches=1.3)
    result["generator"] = FLAGS.generator
    result["command"] = "python -m experiments.evaluate_generator " + " ".join(
        f"--{k}={getattr(FLAGS, k)}" for k in ("generator", "n", "n_nn", "vgg_resolution", "seed"))
    with open(os.path.join(FLAGS.out, "evaluation.json"), "w") as f:
        json.dump(result, f, indent=1)
    cli.log(f"wrote {FLAGS.out}/evaluation.json and nearest_neighbours.png")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
