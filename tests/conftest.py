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


@pytest.fixture(autouse=True, scope="session")
def _limit_threads_first():
    """One torch thread before any fixture runs: a module-scoped fixture (e.g. a
    fitted model) set up before the per-test limit would otherwise train on
    all threads, and differ in the last bits from the same fit in a test when
    a selection (``-k``) makes it the first to run."""
    torch.set_num_threads(1)
    yield


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


@pytest.fixture(scope="module")
def tiny_sampler():
    """Episodes of 3 of 10 random 8-d classes, 2 samples each."""
    from sk_mann.episodes import EpisodeSampler

    rng = np.random.default_rng(0)
    X = rng.random((100, 8)).astype(np.float32)
    return EpisodeSampler(X, np.repeat(np.arange(10), 10), n_way=3, n_per_class=2)


def tiny_mann():
    """A seeded MANN of a few units for training-engine tests."""
    from sk_mann.model import MANN

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return MANN(8, 3, 3, controller_size=8, n_slots=6, slot_size=4, n_reads=1)
