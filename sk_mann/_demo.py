"""The logic behind ``sk-mann demo`` and ``sk-mann evaluate``.

Load a meta-trained network from a weights file, draw episodes of the paper's
protocol from classes it never saw (held-out Omniglot characters, or
scikit-learn's bundled digits when Omniglot is not on the machine), run the
network and the nearest-neighbour baselines through the *same* episodes and
report per-instance accuracy as a table, a plot and a JSON file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "IMAGE_SIDE",
    "LoadedModel",
    "UserError",
    "compare_on_episodes",
    "digits_as_omniglot",
    "format_table",
    "load_digits_data",
    "load_model",
    "load_omniglot_test",
    "omniglot_zip_present",
    "plot_curves",
]

#: Side of the square images the shipped networks read (20x20 = 400 inputs).
IMAGE_SIDE = 20
#: Instances plotted (the table shows the paper's 1, 2, 3, 4, 5, 10).
PLOT_INSTANCES = tuple(range(1, 11))
TABLE_INSTANCES = (1, 2, 3, 4, 5, 10)
#: Label of the network's row in tables, plots and JSON files.
NETWORK_LABEL = "MANN"
SKLEARN_LABEL = "kNN, k=1 (scikit-learn)"
RIVER_LABEL = "kNN, k=1 (River)"


class UserError(Exception):
    """An error caused by the user's input or environment: reported in one line."""


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def digits_as_omniglot(
    images: np.ndarray, size: int = IMAGE_SIDE, margin: int = 3
) -> np.ndarray:
    """Turn small digit images into the networks' input format.

    Each image is placed on a zero canvas with ``margin`` pixels on every side,
    the canvas is resized to ``size x size`` with bilinear interpolation and the
    result is divided by its maximum. For scikit-learn's 8x8 digits the default
    gives characters about 11 pixels tall, centred in a 20x20 frame, like the
    downscaled Omniglot characters (ink = 1, background = 0).

    Parameters
    ----------
    images : array-like of shape (n, height, width)
        Non-negative ink intensities (e.g. ``load_digits().images``, 0..16).
    size : int, default=20
    margin : int, default=3
        Empty pixels added around the input before resizing.

    Returns
    -------
    ndarray of shape (n, size, size), float32
        Values in [0, 1]; every image with some ink has maximum 1.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> out = digits_as_omniglot(load_digits().images[:3])
    >>> out.shape, float(out.max()), float(out.min())
    ((3, 20, 20), 1.0, 0.0)
    """
    import torch
    import torch.nn.functional as F

    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(
            f"images must have shape (n, height, width), got {images.shape}."
        )
    if (images < 0).any():
        raise ValueError("images must be non-negative ink intensities.")
    canvas = np.pad(images, ((0, 0), (margin, margin), (margin, margin)))
    with torch.no_grad():
        out = F.interpolate(
            torch.from_numpy(canvas)[:, None],
            size=(size, size),
            mode="bilinear",
            align_corners=False,
        )[:, 0].numpy()
    peak = out.reshape(len(out), -1).max(axis=1)
    out = out / np.where(peak > 0, peak, 1.0)[:, None, None]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def load_digits_data() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (1797 images, 10 classes) as 20x20 inputs."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = digits_as_omniglot(digits.images).reshape(len(digits.images), -1)
    return X, digits.target.astype(np.int64)


def omniglot_zip_present(data_home: str | os.PathLike | None) -> bool:
    """Whether the zip holding the held-out characters is in the data home."""
    from .datasets import get_data_home

    return (get_data_home(data_home) / "omniglot" / "images_evaluation.zip").is_file()


def load_omniglot_test(
    data_home: str | os.PathLike | None, split: str = "paper"
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out Omniglot characters (no download); :class:`UserError` when missing."""
    from .datasets import fetch_omniglot

    try:
        return fetch_omniglot(
            data_home=data_home,
            subset="test",
            split=split,
            download_if_missing=False,
            return_X_y=True,
        )
    except OSError as exc:
        raise UserError(str(exc)) from exc


def load_omniglot_train(
    data_home: str | os.PathLike | None, split: str = "paper", download: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Meta-training Omniglot characters; :class:`UserError` when missing."""
    from .datasets import fetch_omniglot

    try:
        return fetch_omniglot(
            data_home=data_home,
            subset="train",
            split=split,
            download_if_missing=download,
            return_X_y=True,
            verbose=download,
        )
    except OSError as exc:
        raise UserError(str(exc)) from exc


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A network read from a weights file, ready for evaluation."""

    module: Any
    config: dict
    scheme: Any
    source: str
    path: Path
    shipped: bool
    manifest: dict | None = field(default=None)

    @property
    def n_inputs(self) -> int:
        return int(self.config["n_inputs"])

    def describe(self) -> str:
        """One line: network, architecture, training."""
        cfg, kw = self.config, self.config.get("kwargs", {})
        net = cfg.get("network", "?")
        if net == "mann":
            arch = (
                f"MANN, {kw.get('controller', 'lstm')} controller "
                f"{kw.get('controller_size', '?')}, memory "
                f"{kw.get('n_slots', '?')}x{kw.get('slot_size', '?')}, "
                f"{kw.get('n_reads', '?')} read heads"
            )
        else:
            arch = f"{net} network"
        arch += f", {cfg.get('labels', '?')} labels"
        trained = ""
        if self.manifest:
            training = self.manifest.get("training", {})
            episodes = training.get("episodes") or self.manifest.get("episodes_trained")
            if episodes:
                trained = f"; meta-trained on {int(episodes):,} Omniglot episodes"
        kind = "shipped model" if self.shipped else "weights file"
        return f"{self.source} ({kind}: {arch}{trained})"


def _manifest_path(path: Path) -> Path:
    """``model.pt`` -> ``model.json``; any other name gets ``.json`` appended."""
    if path.suffix == ".pt":
        return path.with_suffix(".json")
    return path.with_name(path.name + ".json")


def load_model(name_or_path: str | os.PathLike) -> LoadedModel:
    """Read a weights file (or a shipped model's name) into a network.

    Raises :class:`UserError` with a one-line explanation when the file is
    missing, unreadable or holds weights of another architecture.
    """
    import torch

    from .labels import make_label_scheme
    from .model import build_network
    from .pretrained import list_pretrained, load_weights, resolve

    text = os.fspath(name_or_path)
    shipped_names = list_pretrained()
    try:
        path = resolve(text)
    except FileNotFoundError as exc:
        names = ", ".join(shipped_names) or "none in this installation"
        raise UserError(
            f"model {text!r} is neither a shipped model (shipped: {names}) nor an "
            "existing file. Pass the path of a weights file written by `sk-mann "
            "train` (or sk_mann.pretrained.save_weights)."
        ) from exc
    try:
        config, state_dict = load_weights(path)
    except FileNotFoundError as exc:
        raise UserError(f"model file {str(path)!r} not found.") from exc
    except ValueError as exc:
        cause = exc.__cause__
        if cause is None:
            raise UserError(" ".join(str(exc).split())) from exc
        raise UserError(
            f"cannot read model file {str(path)!r}: it is corrupt, truncated or not "
            f"an sk_mann weights file ({type(cause).__name__}). Re-create it with "
            "`sk-mann train`, or pass a shipped model's name."
        ) from exc
    if not isinstance(config, dict) or not isinstance(state_dict, dict):
        raise UserError(f"{str(path)!r} is not a valid sk_mann weights file.")
    try:
        scheme = make_label_scheme(config["labels"], config["n_way"])
        with torch.random.fork_rng(devices=[]):
            module = build_network(
                config["network"],
                int(config["n_inputs"]),
                scheme.width,
                scheme.width,
                **config.get("kwargs", {}),
            )
        module.load_state_dict(state_dict)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(
            f"{str(path)!r} holds weights that do not match their own configuration "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "The file is damaged or was written by another version of sk_mann."
        ) from exc
    module.eval()
    shipped = text in shipped_names
    manifest = None
    manifest_file = _manifest_path(path)
    if manifest_file.is_file():
        try:
            manifest = json.loads(manifest_file.read_text())
        except (OSError, ValueError):
            manifest = None
    return LoadedModel(module, config, scheme, text, path, shipped, manifest)


def check_input_size(model: LoadedModel, n_features: int, what: str) -> None:
    """:class:`UserError` when the model does not read ``n_features`` inputs."""
    if model.n_inputs != n_features:
        raise UserError(
            f"model {model.source!r} reads {model.n_inputs} inputs per image, but "
            f"{what} has {n_features} (20x20 images, flattened). Use a model "
            "meta-trained on 20x20 images, e.g. one written by `sk-mann train`."
        )


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------


def episode_n_way(model: LoadedModel, n_classes: int, requested: int | None) -> int:
    """Classes per episode: the requested number or the model's, checked."""
    n_codes = model.scheme.n_codes
    n_way = requested if requested is not None else int(model.config["n_way"])
    if n_way < 2:
        raise UserError(f"--n-way must be at least 2, got {n_way}.")
    if n_way > n_codes:
        raise UserError(
            f"--n-way {n_way}: model {model.source!r} has only {n_codes} labels "
            f"({model.config['labels']} labels for {model.config['n_way']} classes)."
        )
    if requested is None:
        n_way = min(n_way, n_classes)
    elif n_way > n_classes:
        raise UserError(f"--n-way {n_way}: the data has only {n_classes} classes.")
    return n_way


def compare_on_episodes(
    model: LoadedModel,
    X: np.ndarray,
    y: np.ndarray,
    *,
    n_way: int,
    n_per_class: int = 10,
    episodes: int = 200,
    river_episodes: int | None = None,
    sklearn_episodes: int | None = None,
    baselines: bool = True,
    seed: int = 0,
    batch_size: int = 100,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Per-instance accuracy of the network and the kNN baselines on shared episodes.

    Every learner draws its episodes from the same sampler with the same
    ``seed`` and ``batch_size``, so they see the same episodes in the same
    order; a baseline run on fewer episodes sees the first ones of the same
    sequence (the evaluations draw whole batches and cut the last one).

    Returns
    -------
    dict
        ``label -> result`` of :func:`sk_mann.metrics.per_instance_accuracy`
        (instances 1..10) plus ``seconds``.
    """
    from threadpoolctl import threadpool_limits

    from .baselines import RiverKNN, SklearnKNN, evaluate_online
    from .episodes import EpisodeSampler
    from .metrics import evaluate_network

    sampler = EpisodeSampler(
        X, y, n_way=n_way, n_per_class=n_per_class, scheme=model.scheme
    )
    results: dict[str, dict[str, Any]] = {}

    def timed(label: str, n: int, fn: Callable[[], dict]) -> None:
        t0 = time.perf_counter()
        res = fn()
        res["seconds"] = round(time.perf_counter() - t0, 2)
        results[label] = res
        acc2 = 100 * res["accuracy"][1]
        log(
            f"  {label:<26} {n:>5} episodes  {res['seconds']:7.1f} s"
            f"   (2nd instance: {acc2:.1f}%)"
        )

    common = {"seed": seed, "batch_size": batch_size, "instances": PLOT_INSTANCES}
    timed(
        NETWORK_LABEL,
        episodes,
        lambda: evaluate_network(model.module, sampler, n_episodes=episodes, **common),
    )
    if baselines:
        n_sk = episodes if sklearn_episodes is None else min(sklearn_episodes, episodes)
        n_river = episodes if river_episodes is None else min(river_episodes, episodes)

        def run_sklearn() -> dict:
            # One fit per step on a few dozen samples: OpenMP threads only add
            # overhead (tens of ms per call on a busy machine).
            with threadpool_limits(limits=1, user_api="openmp"):
                return evaluate_online(
                    SklearnKNN(1), sampler, n_episodes=n_sk, **common
                )

        if n_sk > 0:
            timed(SKLEARN_LABEL, n_sk, run_sklearn)
        if n_river > 0:
            timed(
                RIVER_LABEL,
                n_river,
                lambda: evaluate_online(
                    RiverKNN(1), sampler, n_episodes=n_river, **common
                ),
            )
    return results


def _pct(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{100 * value:.1f}"


def format_table(
    results: dict[str, dict[str, Any]], instances: tuple[int, ...] = TABLE_INSTANCES
) -> str:
    """Per-instance accuracy (%) and 95% confidence half-widths, as plain text.

    One row of accuracies per model, followed by a row of the half-widths of
    their 95% confidence intervals (over episodes).
    """
    names = {1: "1st", 2: "2nd", 3: "3rd"}
    head = [names.get(k, f"{k}th") for k in instances]
    width = max([len("model")] + [len(label) for label in results]) + 2
    col = 7
    header = "model".ljust(width) + "".join(h.rjust(col) for h in head)
    header += "  episodes"
    lines = [header, "-" * len(header)]
    for label, res in results.items():
        idx = [res["instances"].index(k) for k in instances]
        acc = "".join(_pct(res["accuracy"][i]).rjust(col) for i in idx)
        ci = "".join(("+-" + _pct(res["ci95"][i])).rjust(col) for i in idx)
        lines.append(label.ljust(width) + acc + f"{res['n_episodes']:>10}")
        lines.append("  95% CI".ljust(width) + ci)
    return "\n".join(lines)


_STYLES = [
    {"marker": "o", "ls": "-", "lw": 2.2},
    {"marker": "s", "ls": "-", "lw": 1.5, "ms": 5},
    {"marker": "x", "ls": "--", "lw": 1.5, "ms": 8},
    {"marker": "^", "ls": "-.", "lw": 1.5},
]


def plot_curves(
    results: dict[str, dict[str, Any]],
    path: str | os.PathLike,
    *,
    title: str,
    chance: float | None = None,
) -> Path:
    """Accuracy vs instance (1..10), one line per model, 95% CI bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(
            f"cannot write the plot: directory {str(path.parent)!r} does not exist."
        )
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, (label, res) in enumerate(results.items()):
        x = np.array(res["instances"])
        acc = 100 * np.array(res["accuracy"], dtype=float)
        ci = 100 * np.nan_to_num(np.array(res["ci95"], dtype=float))
        line = ax.plot(
            x,
            acc,
            label=f"{label} ({res['n_episodes']} episodes)",
            **_STYLES[i % len(_STYLES)],
        )
        ax.fill_between(x, acc - ci, acc + ci, color=line[0].get_color(), alpha=0.12)
    if chance is not None:
        ax.axhline(
            100 * chance, ls=":", color="grey", label=f"chance ({100 * chance:.0f}%)"
        )
    ax.set_xlabel("instance of the class in the episode (1 = first time seen)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks(list(PLOT_INSTANCES))
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12),
        ncol=2,
        frameon=False,
    )
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise UserError(f"cannot write the plot to {str(path)!r}: {exc}") from exc
    finally:
        plt.close(fig)
    return path


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` as indented JSON; :class:`UserError` on failure."""
    path = Path(path)
    try:
        path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write {str(path)!r}: {exc}") from exc
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
