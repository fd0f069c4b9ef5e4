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


def test_from_pretrained_takes_the_architecture_from_the_file():
    import pytest
    from sklearn.base import clone

    X = np.random.default_rng(0).random((2, 400))
    for name in list_pretrained():
        config, state = load_weights(name)
        clf = MANNOneShotClassifier.from_pretrained(name, seed=3, n_jobs=1)
        params = clf.get_params()
        assert params["pretrained"] == name and params["seed"] == 3
        assert params["n_jobs"] == 1 and params["n_way"] == config["n_way"]
        for key, value in config["kwargs"].items():
            assert params[key] == value
        clf = clone(clf).partial_fit(X, ["a", "b"])
        for key, tensor in clf.module_.state_dict().items():
            torch.testing.assert_close(tensor, state[key])
    # a parameter the file fixes may be repeated, not contradicted
    MANNOneShotClassifier.from_pretrained("omniglot_5way_add_ks", key_strength=True)
    with pytest.raises(ValueError, match=r"write_content='key' \(the file's: 'add'\)"):
        MANNOneShotClassifier.from_pretrained(
            "omniglot_5way_add_ks", write_content="key"
        )
    with pytest.raises(FileNotFoundError, match="neither a shipped model"):
        MANNOneShotClassifier.from_pretrained("no_such_model")


def test_from_pretrained_refuses_a_file_without_a_mann(tmp_path):
    import pytest

    from sk_mann.model import build_network
    from sk_mann.pretrained import save_weights

    lstm = build_network("lstm", 400, 5, 5, hidden_size=4)
    config = {"network": "lstm", "n_inputs": 400, "labels": "onehot", "n_way": 5}
    path = save_weights(tmp_path / "lstm.pt", lstm, {**config, "kwargs": {}})
    with pytest.raises(ValueError, match="holds a 'lstm' network, not a MANN"):
        MANNOneShotClassifier.from_pretrained(path)
