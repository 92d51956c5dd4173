"""Shared test fixtures. The parity fixtures live in ../shared/parity (or $I2SPP_PARITY_DIR)."""

import os

import pytest

PARITY_DIR = os.environ.get(
    "I2SPP_PARITY_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "parity")
)


@pytest.fixture(scope="session")
def parity_dir() -> str:
    if not os.path.isdir(PARITY_DIR):
        pytest.skip(f"parity fixtures not found at {os.path.abspath(PARITY_DIR)}; set I2SPP_PARITY_DIR")
    return PARITY_DIR
