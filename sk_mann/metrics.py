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

__all__ = [
    "DEFAULT_INSTANCES",
    "episodic_scorer",
    "evaluate_network",
    "evaluate_per_instance",
    "per_instance_accuracy",
]

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
    batch size see exactly the same episodes (and a run of fewer episodes, the
    first ones of the same sequence). A step counts as correct when
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
            # Whole batches, cut: a shorter run sees the first of the same episodes.
            ep = sampler.sample(batch_size, rng).head(b)
            logits = module(
                torch.from_numpy(ep.x).to(device),
                torch.from_numpy(ep.label_in).to(device),
            )
            pred = sampler.scheme.predict_digits(logits).cpu().numpy()
            correct.append((pred == ep.targets).all(axis=-1))
            inst.append(ep.instance)
            done += b
    finally:
        module.train(was_training)
    return per_instance_accuracy(
        np.concatenate(correct), np.concatenate(inst), instances
    )


def evaluate_per_instance(
    estimator: Any,
    X: Any,
    y: Any,
    *,
    n_episodes: int = 200,
    n_way: int | None = None,
    n_per_class: int | None = None,
    instances: tuple[int, ...] = DEFAULT_INSTANCES,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-instance accuracy of a meta-trained estimator on the classes of ``(X, y)``.

    Runs ``n_episodes`` episodes of the paper's protocol drawn from ``(X, y)``
    -- which should hold classes the estimator was *not* meta-trained on --
    through the estimator's network, each from a wiped memory. The estimator
    itself (its memory and bindings) is left untouched.

    Parameters
    ----------
    estimator : MANNOneShotClassifier or Pipeline
        A fitted estimator (or one with ``pretrained`` weights that was
        initialised by ``fit``, ``partial_fit`` or ``learn_one``), or a fitted
        ``Pipeline`` ending with one (``X`` goes through the earlier steps).
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)
    n_episodes : int, default=200
    n_way : int or None, default=None
        Classes per episode; defaults to the estimator's ``n_way`` (capped by
        the number of classes in ``y``).
    n_per_class : int or None, default=None
        Samples per class per episode; defaults to the estimator's.
    instances : tuple of int, default=(1, 2, 3, 4, 5, 10)
    seed : int, default=0

    Returns
    -------
    dict
        As :func:`per_instance_accuracy`.

    Notes
    -----
    A step is correct when the network's most probable label code is the
    class's code, as in the paper. On the first instance of a class this can
    only happen by guessing an unused code; the estimator's ``predict`` never
    names a class it has not seen, so through ``predict`` the first instance is
    always wrong.
    """
    from sklearn.pipeline import Pipeline
    from sklearn.utils.validation import check_is_fitted

    if isinstance(estimator, Pipeline):  # transform X by the steps before the MANN
        X = estimator[:-1].transform(X)
        estimator = estimator[-1]
    check_is_fitted(estimator, "module_")
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y)
    n_classes = len(np.unique(y))
    n_way = min(n_way or estimator.n_way, n_classes, estimator.scheme_.n_codes)
    sampler = EpisodeSampler(
        X,
        y,
        n_way=n_way,
        n_per_class=n_per_class or estimator.n_per_class,
        scheme=estimator.scheme_,
    )
    device = str(estimator.module_.output.weight.device)
    return evaluate_network(
        estimator.module_,
        sampler,
        n_episodes=n_episodes,
        seed=seed,
        instances=instances,
        device=device,
    )


def episodic_scorer(instance: int = 2, *, n_episodes: int = 100, seed: int = 0) -> Any:
    """A scorer for model selection: accuracy at one instance on held-out classes.

    Use it with a class-wise split so that test folds hold classes never used
    for meta-training, e.g. ``GridSearchCV(..., cv=GroupKFold(3),
    scoring=episodic_scorer(2))`` and ``fit(X, y, groups=y)``.

    Parameters
    ----------
    instance : int, default=2
        Which appearance of a class to score (2 = one-shot accuracy).
    n_episodes : int, default=100
    seed : int, default=0

    Returns
    -------
    callable
        ``scorer(estimator, X, y) -> float``.
    """

    def scorer(estimator: Any, X: Any, y: Any) -> float:
        res = evaluate_per_instance(
            estimator, X, y, n_episodes=n_episodes, instances=(instance,), seed=seed
        )
        return float(res["accuracy"][0])

    scorer.__name__ = f"episodic_accuracy_instance_{instance}"
    return scorer
