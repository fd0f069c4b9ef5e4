"""Shared fixtures: data location and tiny synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def omniglot_home() -> Path:
    """``SK_MANN_DATA`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("SK_MANN_DATA", REPO.parent / "shared" / "data"))


def has_omniglot() -> bool:
    home = omniglot_home() / "omniglot"
    return (home / "images_background.zip").exists() and (
        home / "images_evaluation.zip"
    ).exists()


requires_omniglot = pytest.mark.skipif(
    not has_omniglot(),
    reason=(
        f"Omniglot zips not found in {omniglot_home() / 'omniglot'}: set SK_MANN_DATA"
    ),
)


@pytest.fixture(autouse=True)
def _limit_threads():
    """Tests run on 2 shared cores: one torch thread each."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def prototypes_data():
    """60 classes of 64-d prototypes plus noise, 10 samples each (easy)."""
    rng = np.random.default_rng(0)
    protos = rng.random((60, 64)).astype(np.float32)
    y = np.repeat(np.arange(60), 10)
    X = protos[y] + 0.15 * rng.standard_normal((600, 64)).astype(np.float32)
    return X, y
