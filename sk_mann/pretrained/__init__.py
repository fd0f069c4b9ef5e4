"""Shipped meta-trained weights and the weights file format.

A weights file is a ``torch.save`` of a plain dict::

    {"format": "sk_mann-weights-v1",
     "config": {"network": "mann", "n_inputs": 400, "labels": "onehot",
                "n_way": 5, "kwargs": {...network keyword arguments...}},
     "state_dict": {...tensors...}}

It holds only tensors and plain Python values, so it is read with
``torch.load(weights_only=True)``: loading never executes code. Each shipped
file ``<name>.pt`` has a manifest ``<name>.json`` beside it that says how it was
made (data, episodes, command, held-out accuracy).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["list_pretrained", "load_weights", "pretrained_manifest", "save_weights"]

FORMAT = "sk_mann-weights-v1"
_HERE = Path(__file__).resolve().parent


def list_pretrained() -> list[str]:
    """Names of the weights shipped with sk_mann.

    Examples
    --------
    >>> "omniglot_5way" in list_pretrained()
    True
    """
    return sorted(p.stem for p in _HERE.glob("*.pt"))


def pretrained_manifest(name: str) -> dict[str, Any]:
    """The manifest (how the weights were made) of a shipped model."""
    path = _HERE / f"{name}.json"
    if not path.exists():
        raise ValueError(
            f"No shipped model named {name!r}; available: {list_pretrained()}."
        )
    return json.loads(path.read_text())


def resolve(pretrained: str | os.PathLike) -> Path:
    """Path of ``pretrained``: a shipped model's name or a file path."""
    text = os.fspath(pretrained)
    if text in list_pretrained():
        return _HERE / f"{text}.pt"
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"pretrained={text!r} is neither a shipped model ({list_pretrained()}) "
            "nor an existing file. Pass one of those names or the path of a weights "
            "file written "
            "by `sk-mann train` or `sk_mann.pretrained.save_weights`."
        )
    return path


def save_weights(
    path: str | os.PathLike, module: torch.nn.Module, config: dict
) -> Path:
    """Write ``module``'s parameters and its ``config`` to ``path`` (CPU tensors)."""
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    payload = {"format": FORMAT, "config": config, "state_dict": state}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_weights(pretrained: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a weights file safely; returns ``(config, state_dict)``.

    Raises
    ------
    FileNotFoundError
        When ``pretrained`` names no shipped model and no file.
    ValueError
        When the file is not a readable sk_mann weights file.
    """
    path = resolve(pretrained)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or not a torch file
        raise ValueError(
            f"Could not read weights from {str(path)!r} ({type(exc).__name__}: {exc}). "
            "The file is corrupt or not an sk_mann weights file; re-create it with "
            "`sk-mann train` or use a shipped model."
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"{str(path)!r} is not an sk_mann weights file (expected a dict with "
            f"format={FORMAT!r}). Re-create it with `sk-mann train`."
        )
    return payload["config"], payload["state_dict"]
