"""Per-instance accuracy: the paper's metric for one-shot learning.

Accuracy is measured separately on the 1st, 2nd, 3rd ... appearance of a class in
an episode, on classes never used in meta-training. The 95% confidence interval
is computed over episodes (the per-episode accuracy at an instance is one
observation), which accounts for steps of one episode not being independent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .episodes import EpisodeSampler

__all__ = ["DEFAULT_INSTANCES", "evaluate_network", "per_instance_accuracy"]

#: The instances reported in the paper's tables.
DEFAULT_INSTANCES = (1, 2, 3, 4, 5, 10)


def per_instance_accuracy(
    correct: np.ndarray,
    instance: np.ndarray,
    instances: tuple[int, ...] = DEFAULT_INSTANCES,
) -> dict[str, Any]:
    """Mean accuracy and 95% confidence interval at each instance.

    Parameters
    ----------
    correct : array-like of shape (n_episodes, T), bool
        Whether the prediction at each step was right.
    instance : array-like of shape (n_episodes, T), int
        1-based appearance count of each step's class (see
        :func:`sk_mann.episodes.instance_index`).
    instances : tuple of int, default=(1, 2, 3, 4, 5, 10)

    Returns
    -------
    dict
        ``instances`` (list of int), ``accuracy`` and ``ci95`` (lists of float in
        [0, 1], NaN where no episode reaches that instance), ``n_episodes``.

    Examples
    --------
    >>> correct = np.array([[0, 1, 1, 1], [0, 0, 1, 1]], dtype=bool)
    >>> instance = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    >>> res = per_instance_accuracy(correct, instance, instances=(1, 2))
    >>> res["accuracy"]
    [0.25, 1.0]
    """
    correct = np.asarray(correct, dtype=np.float64)
    instance = np.asarray(instance)
    acc, ci = [], []
    for k in instances:
        sel = instance == k
        n_sel = sel.sum(axis=1)
        has = n_sel > 0
        if not has.any():
            acc.append(float("nan"))
            ci.append(float("nan"))
            continue
        per_episode = (correct * sel).sum(axis=1)[has] / n_sel[has]
        acc.append(float(per_episode.mean()))
        n = per_episode.size
        half = 1.96 * per_episode.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
        ci.append(float(half))
    return {
        "instances": list(instances),
        "accuracy": acc,
        "ci95": ci,
        "n_episodes": int(correct.shape[0]),
    }


@torch.no_grad()
def evaluate_network(
    module: torch.nn.Module,
    sampler: EpisodeSampler,
    *,
    n_episodes: int = 1000,
    seed: int = 0,
    batch_size: int = 250,
    instances: tuple[int, ...] = DEFAULT_INSTANCES,
    device: str = "cpu",
) -> dict[str, Any]:
    """Per-instance accuracy of a network of :mod:`sk_mann.model` on sampled episodes.

    Episodes are drawn with ``np.random.default_rng(seed)`` in batches of
    ``batch_size``, so two models evaluated with the same sampler, seed and
    batch size see exactly the same episodes. A step counts as correct when
    every label character is predicted right.
    """
    was_training = module.training
    module.eval()
    rng = np.random.default_rng(seed)
    correct, inst = [], []
    done = 0
    try:
        while done < n_episodes:
            b = min(batch_size, n_episodes - done)
            ep = sampler.sample(b, rng)
            logits = module(
                torch.from_numpy(ep.x).to(device), torch.from_numpy(ep.label_in).to(device)
            )
            pred = sampler.scheme.predict_digits(logits).cpu().numpy()
            correct.append((pred == ep.targets).all(axis=-1))
            inst.append(ep.instance)
            done += b
    finally:
        module.train(was_training)
    return per_instance_accuracy(np.concatenate(correct), np.concatenate(inst), instances)
