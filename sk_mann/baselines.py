"""Nearest-neighbour baselines run through the same episodes as the networks.

Each baseline is an online learner over one episode: at every step it predicts
the label code of ``x_t`` from what it has stored so far, then stores
``(x_t, y_t)`` -- the same predict-then-learn protocol the MANN follows. With
nothing stored yet it guesses a code uniformly at random.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from .episodes import EpisodeSampler
from .metrics import DEFAULT_INSTANCES, per_instance_accuracy

__all__ = ["RiverKNN", "SklearnKNN", "evaluate_online"]


class OnlineLearner(Protocol):
    """What :func:`evaluate_online` needs of a baseline."""

    def reset(self) -> None: ...

    def predict(self, x: np.ndarray) -> int | None: ...

    def learn(self, x: np.ndarray, code: int) -> None: ...


class SklearnKNN:
    """scikit-learn's ``KNeighborsClassifier`` storing every sample seen.

    Refit on all stored samples of the episode before each prediction.

    Parameters
    ----------
    n_neighbors : int, default=1
    """

    def __init__(self, n_neighbors: int = 1) -> None:
        self.n_neighbors = n_neighbors
        self.reset()

    def reset(self) -> None:
        """Forget the episode."""
        self._X: list[np.ndarray] = []
        self._y: list[int] = []

    def predict(self, x: np.ndarray) -> int | None:
        """Code of the nearest stored samples, or None when nothing is stored."""
        if not self._y:
            return None
        k = min(self.n_neighbors, len(self._y))
        knn = KNeighborsClassifier(n_neighbors=k).fit(np.stack(self._X), self._y)
        return int(knn.predict(x[None, :])[0])

    def learn(self, x: np.ndarray, code: int) -> None:
        """Store ``(x, code)``."""
        self._X.append(x)
        self._y.append(int(code))


class RiverKNN:
    """River's :class:`~river.neighbors.KNNClassifier` on dict inputs.

    Parameters
    ----------
    n_neighbors : int, default=1
    """

    def __init__(self, n_neighbors: int = 1) -> None:
        self.n_neighbors = n_neighbors
        self.reset()

    def reset(self) -> None:
        """Start a fresh River model."""
        from river import neighbors

        self._model = neighbors.KNNClassifier(n_neighbors=self.n_neighbors)

    def predict(self, x: np.ndarray) -> int | None:
        """River's ``predict_one``; None before anything was learnt."""
        pred = self._model.predict_one(dict(enumerate(x.tolist())))
        return None if pred is None else int(pred)

    def learn(self, x: np.ndarray, code: int) -> None:
        """River's ``learn_one``."""
        self._model.learn_one(dict(enumerate(x.tolist())), int(code))


def _run_episodes(learner, ep, sampler, guess_rng) -> np.ndarray:
    """Predict-then-learn through each episode of a batch; correctness per step."""
    ok = np.zeros(ep.codes.shape, dtype=bool)
    for e in range(ep.codes.shape[0]):
        learner.reset()
        for t in range(ep.codes.shape[1]):
            pred = learner.predict(ep.x[e, t])
            if pred is None:
                pred = int(guess_rng.integers(sampler.scheme.n_codes))
            ok[e, t] = pred == ep.codes[e, t]
            learner.learn(ep.x[e, t], int(ep.codes[e, t]))
    return ok


def evaluate_online(
    learner: OnlineLearner,
    sampler: EpisodeSampler,
    *,
    n_episodes: int = 1000,
    seed: int = 0,
    batch_size: int = 250,
    instances: tuple[int, ...] = DEFAULT_INSTANCES,
) -> dict[str, Any]:
    """Per-instance accuracy of an online learner, predict-then-learn, per episode.

    ``seed`` and ``batch_size`` select episodes exactly as in
    :func:`sk_mann.metrics.evaluate_network`, so results are paired. The learner
    sees label codes; a string-label code counts as correct only if it matches
    exactly.
    """
    rng = np.random.default_rng(seed)
    guess_rng = np.random.default_rng([seed, 1])
    correct, inst = [], []
    done = 0
    # One thread: on episode-sized data, OpenMP start-up costs 20-40 ms per
    # scikit-learn kNN call on a 2-core machine, against ~1 ms single-threaded.
    with threadpool_limits(limits=1):
        while done < n_episodes:
            b = min(batch_size, n_episodes - done)
            # Whole batches, cut: a shorter run sees the first of the same episodes.
            ep = sampler.sample(batch_size, rng).head(b)
            correct.append(_run_episodes(learner, ep, sampler, guess_rng))
            inst.append(ep.instance)
            done += b
    return per_instance_accuracy(
        np.concatenate(correct), np.concatenate(inst), instances
    )
