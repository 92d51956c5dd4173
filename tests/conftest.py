"""Shared test fixtures. The parity fixtures live in ../shared/parity (or $I2SPP_PARITY_DIR)."""

import os

import pytest

from i2spp_jax import host_memory

host_memory.keep_freed_memory()  # before any JAX computation: as the experiments/ commands run

PARITY_DIR = os.environ.get(
    "I2SPP_PARITY_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "parity")
)


@pytest.fixture(scope="session")
def parity_dir() -> str:
    if not os.path.isdir(PARITY_DIR):
        pytest.skip(f"parity fixtures not found at {os.path.abspath(PARITY_DIR)}; set I2SPP_PARITY_DIR")
    return PARITY_DIR


@pytest.fixture(scope="session")
def tf_dir(parity_dir) -> str:
    """../shared/parity/tf: official TensorFlow pickles of StyleGAN (v1) and StyleGAN2 with reference outputs."""
    d = os.path.join(parity_dir, "tf")
    if not os.path.isdir(d):
        pytest.skip(f"no TensorFlow fixtures at {os.path.abspath(d)}")
    return d
