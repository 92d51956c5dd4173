"""The Flax generator against the official PyTorch networks' outputs in shared/parity.

Errors are relative: ||ours - reference|| / ||reference||, on whole arrays.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from i2spp_jax.formats import stylegan2

REL_TOL_F32 = 1e-5  # float32 on the CPU; a faithful port lands near 5e-7 here
# ada_tiny's reference gradients carry torch's own float32 CPU error: recomputed in float64 with the
# official code they move by up to 3.3e-4 (relative), while ours stay within 6e-7 of that float64
# gradient (BUILD_NOTES.md, "Parity"). Its gradients are held to this bound instead.
REL_TOL_TORCH_F32_GRAD = 5e-4

ADA = ["ada_tiny", "ada_clamp"]


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


@functools.lru_cache(maxsize=None)
def _load(parity_dir: str, name: str):
    G = stylegan2.convert_file(os.path.join(parity_dir, f"{name}.weights.npz"))
    ref = dict(np.load(os.path.join(parity_dir, f"{name}.reference.npz")))
    return G, ref


@pytest.mark.parametrize("name", ADA)
@pytest.mark.parametrize(
    "key,psi,cutoff", [("ws", 1.0, None), ("ws_psi0.7", 0.7, None), ("ws_psi0.5_cutoff4", 0.5, 4)]
)
def test_ada_mapping(parity_dir, name, key, psi, cutoff):
    G, ref = _load(parity_dir, name)
    ws = G.mapping(ref["z"], truncation_psi=psi, truncation_cutoff=cutoff)
    assert rel_err(ws, ref[key]) < REL_TOL_F32


@pytest.mark.parametrize("name", ADA)
@pytest.mark.parametrize("fused_modconv", [True, False])
@pytest.mark.parametrize("noise,key", [("const", "img_const"), ("none", "img_none")])
def test_ada_synthesis(parity_dir, name, fused_modconv, noise, key):
    G, ref = _load(parity_dir, name)
    img = G.synthesis(ref["ws_plus"], noise=noise, fused_modconv=fused_modconv)
    assert img.shape == (len(ref["z"]), G.img_resolution, G.img_resolution, G.img_channels)
    assert rel_err(nchw(img), ref[key]) < REL_TOL_F32


@pytest.mark.parametrize("name", ADA)
def test_ada_block_activations(parity_dir, name):
    G, ref = _load(parity_dir, name)
    _, acts = G.synthesis(ref["ws_plus"], noise="const", return_activations=True)
    for res in G.config.block_resolutions:
        assert rel_err(nchw(acts[f"b{res}.x"]), ref[f"block{res}_x"]) < REL_TOL_F32, res
        assert rel_err(nchw(acts[f"b{res}.img"]), ref[f"block{res}_img"]) < REL_TOL_F32, res


@pytest.mark.parametrize("name", ADA)
def test_ada_gradients(parity_dir, name):
    G, ref = _load(parity_dir, name)
    proj = jnp.asarray(ref["grad_projection"].transpose(0, 2, 3, 1))

    def objective(ws, noise):
        return jnp.sum(G.synthesis(ws, noise=noise) * proj)

    # The stored maps passed explicitly: the derivative is with respect to them, before strength.
    g_ws, g_noise = jax.jit(jax.grad(objective, argnums=(0, 1)))(jnp.asarray(ref["ws_plus"]), G.noise_const)
    tol = REL_TOL_TORCH_F32_GRAD if name == "ada_tiny" else REL_TOL_F32
    assert rel_err(g_ws, ref["grad_ws_plus"]) < tol
    for noise_name, g in zip(G.noise_names, g_noise):
        assert rel_err(g, ref[f"grad_{noise_name}.noise_const"]) < tol, noise_name


@pytest.fixture(scope="module")
def rosinality(parity_dir, tmp_path_factory):
    """The rosi_64 fixture saved as a real rosinality checkpoint (.pt with g_ema and latent_avg)."""
    torch = pytest.importorskip("torch", reason="rosinality .pt files are written with torch in this test")
    w = np.load(os.path.join(parity_dir, "rosi_64.weights.npz"))
    ref = dict(np.load(os.path.join(parity_dir, "rosi_64.reference.npz")))
    path = str(tmp_path_factory.mktemp("rosi") / "rosi_64.pt")
    torch.save({"g_ema": {k: torch.from_numpy(w[k]) for k in w.files},
                "latent_avg": torch.from_numpy(ref["latent_avg"][0])}, path)
    return stylegan2.convert_file(path), ref


def test_rosinality_mapping(rosinality):
    G, ref = rosinality
    assert rel_err(G.mapping(ref["z"])[:, 0], ref["w"]) < REL_TOL_F32
    np.testing.assert_array_equal(G.w_avg, ref["latent_avg"][0])


def test_rosinality_truncated_image(rosinality):
    G, ref = rosinality
    img = G.synthesis(G.mapping(ref["z"], truncation_psi=0.7), noise="const")
    assert rel_err(nchw(img), ref["img_psi0.7"]) < REL_TOL_F32


def test_rosinality_const_noise_image(rosinality):
    G, ref = rosinality
    assert rel_err(nchw(G.synthesis(ref["ws_plus"], noise="const")), ref["img_const"]) < REL_TOL_F32


@pytest.mark.parametrize("batched", [False, True])
def test_rosinality_given_noise_image(rosinality, batched):
    G, ref = rosinality
    n = len(ref["ws_plus"])
    maps = [ref[f"noise_in_{i}"][0, 0] for i in range(len(G.noise_names))]
    if batched:  # the same maps given per image, [N, R, R]
        maps = [np.broadcast_to(m, (n,) + m.shape) for m in maps]
    img = G.synthesis(ref["ws_plus"], noise=maps)
    assert rel_err(nchw(img), ref["img_given_noise"]) < REL_TOL_F32


_F64_GRADS = r"""
import sys
import jax, jax.numpy as jnp, numpy as np
from i2spp_jax.formats import stylegan2
parity_dir, out = sys.argv[1], sys.argv[2]
G = stylegan2.convert_file(parity_dir + "/ada_tiny.weights.npz")
G = G.replace(params=jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), G.params))
ref = np.load(parity_dir + "/ada_tiny.reference.npz")
proj = jnp.asarray(ref["grad_projection"].transpose(0, 2, 3, 1), jnp.float64)
f = lambda w, n: jnp.sum(G.synthesis(w, noise=n) * proj)
g_ws, g_noise = jax.jit(jax.grad(f, argnums=(0, 1)))(jnp.asarray(ref["ws_plus"], jnp.float64), G.noise_const)
assert g_ws.dtype == jnp.float64
np.savez(out, ws=np.asarray(g_ws), **{f"n{i}": np.asarray(g) for i, g in enumerate(g_noise)})
"""


def test_float32_gradients_match_float64(parity_dir, tmp_path):
    """ada_tiny's fixture gradients carry torch's float32 error (above); ours are held to 1e-5
    against the same port run in float64 (JAX_ENABLE_X64 in a subprocess)."""
    import subprocess
    import sys

    out = tmp_path / "f64.npz"
    env = dict(os.environ, JAX_ENABLE_X64="1")
    subprocess.run([sys.executable, "-c", _F64_GRADS, parity_dir, str(out)], check=True, env=env,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    f64 = np.load(out)
    G, ref = _load(parity_dir, "ada_tiny")
    proj = jnp.asarray(ref["grad_projection"].transpose(0, 2, 3, 1))
    # jitted on both sides: the same function, compiled once instead of run op by op (20 s each)
    g_ws, g_noise = jax.jit(jax.grad(lambda w, n: jnp.sum(G.synthesis(w, noise=n) * proj), argnums=(0, 1)))(
        jnp.asarray(ref["ws_plus"]), G.noise_const)
    assert rel_err(g_ws, f64["ws"]) < REL_TOL_F32
    for i, g in enumerate(g_noise):
        assert rel_err(g, f64[f"n{i}"]) < REL_TOL_F32, G.noise_names[i]
