"""The shipped demo generator (trained on Fashion-MNIST) and its held-out real images."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import i2spp_jax
from experiments import ship_demo
from i2spp_jax import checkpoint, datasets, generator, plots


def test_replicate_channels_draws_the_grey_image_in_every_channel():
    cfg = generator.GeneratorConfig(z_dim=8, w_dim=8, img_resolution=8, img_channels=1, channels=(8, 8),
                                    mapping_layers=1)
    params = generator.init_params(cfg, jax.random.PRNGKey(0))
    params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
    G1 = generator.Generator(params=params, config=cfg)
    G3 = generator.replicate_channels(G1, 3)
    assert G3.img_channels == 3
    ws = G1.mapping(jax.random.normal(jax.random.PRNGKey(2), (2, 8)))
    noise = G1.make_noise(jax.random.PRNGKey(3), batch=2)
    one, three = G1.synthesis(ws, noise=noise), G3.synthesis(ws, noise=noise)
    for c in range(3):  # the same function; a convolution with 3 outputs may round differently
        np.testing.assert_allclose(np.asarray(three[..., c]), np.asarray(one[..., 0]), atol=2e-6, rtol=0)
    with pytest.raises(ValueError, match="1-channel"):
        generator.replicate_channels(G3, 3)


def test_shipped_demo_loads_and_reproduces_its_sample_grid(tmp_path):
    G = i2spp_jax.load_generator("demo")
    assert (G.img_resolution, G.img_channels) == (32, 3)
    meta = json.load(open(os.path.join(checkpoint.DEMO_DIR, "samples.json")))
    assert meta["seed"] == ship_demo.SAMPLE_SEED
    plots.sample_grid(str(tmp_path / "grid.png"), ship_demo.render_samples(G), nrow=meta["nrow"], scale=meta["scale"])
    got = np.asarray(Image.open(tmp_path / "grid.png"), np.int16)
    want = np.asarray(Image.open(os.path.join(checkpoint.DEMO_DIR, "samples.png")), np.int16)
    assert got.shape == want.shape
    diff = np.abs(got - want)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    # Not a constant or a collapsed generator: the samples differ from each other.
    imgs = ship_demo.render_samples(G)
    assert float(np.std(imgs, axis=0).mean()) > 0.1


def test_shipped_generator_fits_the_size_budget():
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(checkpoint.DEMO_DIR) for f in fs)
    assert size <= 4 * 2**20, size


def test_heldout_images_are_small_real_and_unseen():
    paths = checkpoint.heldout_images()
    assert len(paths) >= 4
    assert sum(os.path.getsize(p) for p in paths) < 16 * 1024
    ims = np.stack([np.asarray(Image.open(p)) for p in paths])
    assert ims.shape[1:] == (32, 32) and ims.std() > 20
    if not os.path.exists(os.path.join(datasets.FASHION_MNIST_DIR, datasets.FASHION_MNIST_FILES["train"])):
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    train = datasets.fashion_mnist("train", channels=1)[..., 0].reshape(60000, -1).astype(np.int32)
    test = datasets.fashion_mnist("test", channels=1)[..., 0].reshape(10000, -1)
    for p, im in zip(paths, ims.reshape(len(paths), -1)):
        i = int(os.path.basename(p)[4:9])
        np.testing.assert_array_equal(test[i], im)  # it is the test image its name says
        assert np.abs(train - im).sum(axis=1).min() > 0, f"{p} equals a training image"


def test_random_demo_generator_stays_reachable():
    G = i2spp_jax.load_generator("demo-random")
    assert G is i2spp_jax.random_demo_generator() and G.img_resolution == 64
    a = G.synthesis(G.mapping(jnp.ones((1, G.z_dim))))
    assert np.isfinite(np.asarray(a)).all()


def test_shipping_without_the_dataset_leaves_the_shipped_assets_as_they_were(tmp_path, monkeypatch):
    """ship_demo read the dataset after it had replaced the generator: with no dataset the package was
    left half-shipped (found by an audit). Now the dataset is read first and both folders swap at the end."""
    import shutil

    from experiments import ship_demo
    from i2spp_jax import checkpoint, datasets

    assets = tmp_path / "assets"
    for d in (checkpoint.DEMO_DIR, checkpoint.HELDOUT_DIR):
        shutil.copytree(d, assets / os.path.basename(d))
    before = {p: p.read_bytes() for p in assets.rglob("*") if p.is_file()}
    monkeypatch.setattr(ship_demo, "_load_trained", lambda run, ckpt: (checkpoint.load_generator("demo-random"), "x"))

    def no_dataset(*a, **k):
        raise datasets.DatasetError("Fashion-MNIST is not installed")

    monkeypatch.setattr(datasets, "fashion_mnist", no_dataset)
    with pytest.raises(datasets.DatasetError):
        ship_demo.ship("runs/none", assets=str(assets), log=lambda m: None)
    after = {p: p.read_bytes() for p in assets.rglob("*") if p.is_file()}
    assert after == before and sorted(os.listdir(assets)) == sorted(os.path.basename(d) for d in
                                                                    (checkpoint.DEMO_DIR, checkpoint.HELDOUT_DIR))
