"""The shipped pretrained weights: present, safe to load, usable by name."""

from __future__ import annotations

import numpy as np
import torch

from sk_mann import MANNOneShotClassifier
from sk_mann.pretrained import list_pretrained, load_weights, pretrained_manifest


def test_the_omniglot_model_is_shipped_with_a_manifest():
    assert "omniglot_5way" in list_pretrained()
    manifest = pretrained_manifest("omniglot_5way")
    for key in ("training", "heldout_accuracy", "produced_by", "kwargs"):
        assert key in manifest
    assert manifest["training"]["episodes"] > 0


def test_shipped_weights_load_without_executing_code():
    config, state = load_weights("omniglot_5way")
    assert config["n_inputs"] == 400 and config["labels"] == "onehot"
    assert all(isinstance(t, torch.Tensor) for t in state.values())


def test_loaded_by_name_learns_a_new_class_from_one_example():
    # Two very different synthetic "characters": a vertical and a horizontal bar.
    a = np.zeros((20, 20))
    a[4:16, 9:11] = 1.0
    b = np.zeros((20, 20))
    b[9:11, 4:16] = 1.0
    clf = MANNOneShotClassifier(pretrained="omniglot_5way", seed=0)
    clf.partial_fit(np.stack([a.ravel(), b.ravel()]), ["vertical", "horizontal"])
    config, state = load_weights("omniglot_5way")
    for name, tensor in clf.module_.state_dict().items():
        torch.testing.assert_close(tensor, state[name])
    proba = clf.predict_proba(np.stack([a.ravel(), b.ravel()]))
    assert proba.shape == (2, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)


def test_every_shipped_model_loads_with_the_parameters_its_manifest_names():
    """Each manifest's ``usage`` is a working call, and its weights are loaded."""
    import ast
    import re

    X = np.random.default_rng(0).random((2, 400))
    for name in list_pretrained():
        manifest = pretrained_manifest(name)
        call = manifest["usage"]
        assert call.startswith(f"MANNOneShotClassifier(pretrained={name!r}")
        kwargs = dict(re.findall(r", (\w+)=([^,)]+)", call))
        params = {k: ast.literal_eval(v) for k, v in kwargs.items()}
        clf = MANNOneShotClassifier(pretrained=name, **params).partial_fit(X, [0, 1])
        _, state = load_weights(name)
        for key, tensor in clf.module_.state_dict().items():
            torch.testing.assert_close(tensor, state[key])
        assert manifest["heldout_episodes"] == 1000


def test_the_key_strength_model_names_the_missing_parameter():
    import pytest

    X = np.random.default_rng(0).random((2, 400))
    clf = MANNOneShotClassifier(pretrained="omniglot_5way_add_ks", write_content="add")
    with pytest.raises(ValueError, match="key_strength: file=True, model=False"):
        clf.partial_fit(X, [0, 1])
    assert not hasattr(clf, "module_")
