"""Behaviour of MANNOneShotClassifier: the estimator contract of DESIGN.md.

Every model here is tiny (a 16-unit controller, 8 memory slots of 4) so the whole
file runs in well under a minute on two shared cores.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import warnings

import joblib
import numpy as np
import pytest
import torch
from river import compose, evaluate, metrics, preprocessing, stream
from sklearn.base import clone
from sklearn.metrics import accuracy_score
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import InvalidParameterError

import sk_mann
from sk_mann import MANNOneShotClassifier, _jit_step, evaluate_per_instance
from sk_mann.pretrained import save_weights

# Streaming new classes into a fitted 5-code model recycles codes by design; the
# tests that are about that warning catch it explicitly.
pytestmark = pytest.mark.filterwarnings(
    "ignore:All \\d+ label codes are bound:UserWarning"
)

#: Architecture of every model in this file (tiny: fast on 2 shared cores).
ARCH = dict(controller_size=16, n_slots=8, slot_size=4, n_reads=1)
TINY = dict(**ARCH, batch_size=4, seed=0)


def make(**params) -> MANNOneShotClassifier:
    """A tiny estimator; ``params`` override the defaults of this file."""
    kwargs = {**TINY, "n_episodes": 0, "n_per_class": 3}
    kwargs.update(params)
    return MANNOneShotClassifier(**kwargs)


def as_dict(row) -> dict:
    """A River dict ``{0: v0, 1: v1, ...}`` of a feature vector."""
    return {j: float(v) for j, v in enumerate(row)}


def state_tensors(est) -> list[torch.Tensor]:
    """Every tensor of the fast state (controller state, reads, memory)."""
    out: list[torch.Tensor] = []

    def walk(s):
        if isinstance(s, torch.Tensor):
            out.append(s)
        elif isinstance(s, tuple):
            for part in s:
                walk(part)

    walk(est.state_)
    assert out, "no state found"
    return out


def assert_same_weights(a, b) -> None:
    sa, sb = a.module_.state_dict(), b.module_.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module")
def data(prototypes_data):
    """Five classes (0..4) for fitting, and a few unseen classes for streaming."""
    X, y = prototypes_data
    return X[:50], y[:50], X[50:100], y[50:100]


@pytest.fixture(scope="module")
def fitted(data):
    """A meta-trained tiny model on 5 classes.

    Shared by many tests: it must NOT be refit or mutated -- use copy.deepcopy.
    """
    X, y, _, _ = data
    return make(n_episodes=8).fit(X, y)


# ---------------------------------------------------------------------------
# 1. Contract semantics
# ---------------------------------------------------------------------------
def test_fit_returns_self(data):
    X, y, _, _ = data
    est = make()
    assert est.fit(X, y) is est


def test_fit_is_deterministic_given_seed(data, fitted):
    X, y, _, _ = data
    other = make(n_episodes=8).fit(X, y)
    assert_same_weights(other, fitted)
    np.testing.assert_array_equal(other.predict_proba(X), fitted.predict_proba(X))
    # Refitting the same object gives the same model again.
    other.fit(X, y)
    np.testing.assert_array_equal(other.predict_proba(X), fitted.predict_proba(X))
    # ... and the seed matters (so the checks above can fail).
    reseeded = make(n_episodes=8, seed=1).fit(X, y)
    assert not np.array_equal(reseeded.predict_proba(X), fitted.predict_proba(X))


def test_fit_after_partial_fit_forgets_the_stream(data, fitted):
    X, y, Xn, yn = data
    est = copy.deepcopy(fitted)
    est.partial_fit(Xn[:20], yn[:20] + 100)
    for i in range(3):
        est.learn_one(as_dict(Xn[20 + i]), "river")
    assert len(est.classes_) == 5 + 2 + 1
    est.fit(X, y)
    np.testing.assert_array_equal(est.classes_, np.arange(5))
    np.testing.assert_array_equal(est.predict_proba(X), fitted.predict_proba(X))
    np.testing.assert_array_equal(est.predict_proba(Xn), fitted.predict_proba(Xn))
    assert_same_weights(est, fitted)


def test_compile_reaches_meta_train(data, monkeypatch):
    """compile=True (or a dict of torch.compile options) is passed to
    meta_train (compiling itself is tested there)."""
    import sk_mann.training

    seen = []
    real = sk_mann.training.meta_train

    def spy(*args, **kwargs):
        seen.append((kwargs["compile"], kwargs["compile_options"]))
        return real(*args, **{**kwargs, "compile": False, "compile_options": None})

    monkeypatch.setattr(sk_mann.training, "meta_train", spy)
    X, y, _, _ = data
    make(n_episodes=4).fit(X, y)
    make(n_episodes=4, compile=True).fit(X, y)
    make(n_episodes=4, compile={"cpp_wrapper": True}).fit(X, y)
    assert seen == [(False, None), (True, None), (True, {"cpp_wrapper": True})]


@pytest.mark.parametrize(
    "jit,n_jobs",
    [(False, None), (True, None), (True, 2)],
    ids=["numpy", "compiled", "compiled-2-threads"],
)
def test_numpy_stream_equals_torch_stream(data, fitted, jit, n_jobs):
    """The River loop on the CPU fast paths gives the torch path's answers."""
    if jit and not _jit_step.AVAILABLE:
        pytest.skip("numba is not installed")
    _, _, Xn, yn = data
    fast, ref = copy.deepcopy(fitted), copy.deepcopy(fitted)
    fast.set_params(n_jobs=n_jobs)
    fast._numpy_.jit = jit
    ref._numpy_ = None  # the straightforward torch path, kept as the reference
    _assert_same_stream(fast, ref, Xn, yn, 30)


def _assert_same_stream(fast, ref, Xn, yn, n):
    """``n`` predict_proba_one + learn_one through both models: same answers."""
    for i in range(n):
        x = as_dict(Xn[i])
        p_fast, p_ref = fast.predict_proba_one(x), ref.predict_proba_one(x)
        assert p_fast.keys() == p_ref.keys()
        for k in p_ref:
            assert p_fast[k] == pytest.approx(p_ref[k], abs=1e-5)
        # Every third sample learns another row than the one just predicted.
        learn = x if i % 3 else as_dict(Xn[i + 20])
        fast.learn_one(learn, yn[i])
        ref.learn_one(learn, yn[i])
    for a, b in zip(state_tensors(fast), state_tensors(ref), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_key_strength_model_streams_and_predicts_as_torch(data):
    """key_strength=True: meta-trains, and its NumPy paths (streaming, batch
    predict) give the torch path's answers."""
    X, y, Xn, yn = data
    fast = make(key_strength=True, n_episodes=8).fit(X, y)
    assert fast.module_.key_strength
    ref = copy.deepcopy(fast)
    ref._numpy_ = None  # the torch path
    np.testing.assert_allclose(
        fast.predict_proba(Xn[:10]), ref.predict_proba(Xn[:10]), atol=1e-5
    )
    _assert_same_stream(fast, ref, Xn, yn, 12)


def test_numpy_path_state_pickles_and_feeds_the_torch_path(data, fitted):
    """The NumPy path keeps its state as arrays; pickles and the torch path use it."""
    _, _, Xn, yn = data
    fast, ref = copy.deepcopy(fitted), copy.deepcopy(fitted)
    ref._numpy_ = None
    for i in range(5):
        fast.learn_one(as_dict(Xn[i]), yn[i])
        ref.learn_one(as_dict(Xn[i]), yn[i])
    assert isinstance(fast._state_.h, np.ndarray)  # kept as arrays between samples
    assert isinstance(fast.state_.h, torch.Tensor)  # and shown as tensors
    assert pickle.dumps(fast) == pickle.dumps(fast)  # River's checks compare pickles
    loaded = pickle.loads(pickle.dumps(fast))
    for a, b in zip(state_tensors(loaded), state_tensors(fast), strict=True):
        assert torch.equal(a, b)
    # The torch path continues from the NumPy path's state.
    fast._numpy_ = None
    for i in range(5, 8):
        fast.learn_one(as_dict(Xn[i]), yn[i])
        ref.learn_one(as_dict(Xn[i]), yn[i])
    for a, b in zip(state_tensors(fast), state_tensors(ref), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast.predict_proba(Xn), ref.predict_proba(Xn), atol=1e-5)


def test_pickles_that_stored_the_state_as_state_still_load(data, fitted):
    """Models pickled before the state moved to ``_state_`` load and stream."""
    _, _, Xn, yn = data
    est = copy.deepcopy(fitted)
    est.learn_one(as_dict(Xn[0]), yn[0])
    old = est.__getstate__()
    old["state_"] = est.state_  # the former layout: tensors under "state_"
    del old["_state_"]
    loaded = MANNOneShotClassifier.__new__(MANNOneShotClassifier)
    loaded.__setstate__(old)
    for a, b in zip(state_tensors(loaded), state_tensors(est), strict=True):
        assert torch.equal(a, b)
    for i in range(1, 4):
        x = as_dict(Xn[i])
        assert loaded.predict_proba_one(x) == est.predict_proba_one(x)
        loaded.learn_one(x, yn[i])
        est.learn_one(x, yn[i])


def test_learning_a_predicted_row_reuses_nothing_stale(data, fitted):
    """predict_one before learn_one (even across resets) changes no state."""
    _, _, Xn, yn = data
    a, b = copy.deepcopy(fitted), copy.deepcopy(fitted)
    for i in range(12):
        x = as_dict(Xn[i])
        a.predict_one(x)
        if i == 6:
            a.reset_memory()
            b.reset_memory()
        a.learn_one(x, yn[i])
        b.learn_one(x, yn[i])
        if i == 9:  # a batch write in between
            a.partial_fit(Xn[40:42], yn[40:42])
            b.partial_fit(Xn[40:42], yn[40:42])
    for ta, tb in zip(state_tensors(a), state_tensors(b), strict=True):
        assert torch.equal(ta, tb)
    np.testing.assert_array_equal(a.predict_proba(Xn), b.predict_proba(Xn))


def test_streaming_follows_in_place_weight_updates(data, fitted):
    """Weights changed in place (e.g. load_state_dict) are used at the next call."""
    _, _, Xn, yn = data
    fast, ref = copy.deepcopy(fitted), copy.deepcopy(fitted)
    ref._numpy_ = None
    for est in (fast, ref):
        est.learn_one(as_dict(Xn[0]), yn[0])
    x = as_dict(Xn[1])
    fast.predict_proba_one(x)  # memoises the step and the gate terms
    for est in (fast, ref):
        with torch.no_grad():
            est.module_.input_proj.bias.add_(0.5)
            est.module_.recurrent_proj.weight.mul_(1.5)
    p_fast, p_ref = fast.predict_proba_one(x), ref.predict_proba_one(x)
    for k in p_ref:
        assert p_fast[k] == pytest.approx(p_ref[k], abs=1e-5)
    for est in (fast, ref):
        est.learn_one(x, yn[1])
    for a, b in zip(state_tensors(fast), state_tensors(ref), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_prediction_methods_are_pure(data, fitted):
    X, y, Xn, _ = data
    est = copy.deepcopy(fitted)
    before = pickle.dumps(est)
    attrs = set(est.__dict__)
    memory = [t.clone() for t in state_tensors(est)]
    ids = {k: id(v) for k, v in est.__dict__.items()}

    est.predict_proba(Xn)
    est.predict(X)
    est.score(X, y)
    est.predict_proba_one(as_dict(Xn[0]))
    est.predict_one(as_dict(Xn[1]))

    assert set(est.__dict__) == attrs
    assert {k: id(v) for k, v in est.__dict__.items()} == ids
    for old, new in zip(memory, state_tensors(est)):
        assert torch.equal(old, new)
    assert pickle.dumps(est) == before


def test_rows_are_answered_independently(data, fitted):
    X, _, Xn, _ = data
    Xall = np.vstack([X, Xn])
    batch = fitted.predict_proba(Xall)
    rows = np.vstack([fitted.predict_proba(Xall[i : i + 1]) for i in range(len(Xall))])
    # Equal up to float32 rounding of batched vs single-row matrix products.
    np.testing.assert_allclose(rows, batch, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(
        fitted.predict(Xall), [fitted.predict(Xall[i : i + 1])[0] for i in range(100)]
    )
    perm = np.random.default_rng(0).permutation(len(Xall))
    np.testing.assert_allclose(fitted.predict_proba(Xall[perm]), batch[perm], atol=1e-6)
    np.testing.assert_array_equal(
        fitted.predict(Xall[perm]), fitted.predict(Xall)[perm]
    )
    # The River API gives the same answer as the array API.
    one = fitted.predict_proba_one(as_dict(Xn[3]))
    assert list(one) == list(fitted.classes_)
    np.testing.assert_allclose(list(one.values()), batch[53], atol=1e-6)


def test_predict_is_argmax_of_predict_proba(data, fitted):
    X, _, Xn, _ = data
    for A in (X, Xn):
        proba = fitted.predict_proba(A)
        np.testing.assert_array_equal(
            fitted.predict(A), fitted.classes_[np.argmax(proba, axis=1)]
        )
    assert fitted.predict(X).dtype == fitted.classes_.dtype


def test_probabilities_sum_to_one_in_float64(data, fitted):
    X, _, Xn, _ = data
    proba = fitted.predict_proba(np.vstack([X, Xn]))
    assert proba.dtype == np.float64
    assert proba.shape == (100, 5)
    assert np.all(proba >= 0)
    assert np.all(np.abs(proba.sum(axis=1) - 1.0) <= 1e-9)
    one = fitted.predict_proba_one(as_dict(Xn[0]))
    assert all(type(p) is float for p in one.values())
    assert abs(sum(one.values()) - 1.0) <= 1e-9


def test_partial_fit_and_learn_one_are_the_same_path(data, fitted):
    _, _, Xn, yn = data
    rows, labels = Xn[::3], yn[::3]  # 17 rows of 5 classes, mixed order
    a = copy.deepcopy(fitted)
    b = copy.deepcopy(fitted)
    a.partial_fit(rows, labels)
    for row, label in zip(rows, labels):
        b.learn_one(as_dict(row), label)
    np.testing.assert_array_equal(a.classes_, b.classes_)
    np.testing.assert_array_equal(a.predict_proba(Xn), b.predict_proba(Xn))
    assert a.predict_proba_one(as_dict(Xn[0])) == b.predict_proba_one(as_dict(Xn[0]))
    for ta, tb in zip(state_tensors(a), state_tensors(b)):
        assert torch.equal(ta, tb)
    # The rows were really learnt: the stream's classes are predicted now.
    assert set(yn) <= set(a.classes_)
    assert not np.array_equal(a.predict_proba(Xn)[:, :5], fitted.predict_proba(Xn))


def test_partial_fit_row_by_row_equals_one_call(data, fitted):
    _, _, Xn, yn = data
    a = copy.deepcopy(fitted).partial_fit(Xn[:12], yn[:12])
    b = copy.deepcopy(fitted)
    for i in range(12):
        assert b.partial_fit(Xn[i : i + 1], yn[i : i + 1]) is b
    np.testing.assert_array_equal(a.predict_proba(Xn), b.predict_proba(Xn))


def test_partial_fit_classes_argument(data, fitted):
    _, _, Xn, yn = data
    est = copy.deepcopy(fitted).partial_fit(Xn[:2], yn[:2], classes=[5, 6, 7, 42])
    np.testing.assert_array_equal(est.classes_, [0, 1, 2, 3, 4, 5, 6, 7, 42])
    proba = est.predict_proba(Xn[:3])
    # Declared but never learnt: never predicted.
    assert np.all(proba[:, [6, 7, 8]] == 0)


def test_reset_memory_wipes_bindings_and_keeps_slow_weights(data, fitted):
    X, _, Xn, yn = data
    est = copy.deepcopy(fitted)
    est.partial_fit(Xn[:10], yn[:10])
    classes = est.classes_.copy()
    assert est.reset_memory() is est
    assert_same_weights(est, fitted)
    np.testing.assert_array_equal(est.classes_, classes)
    # Fresh episode: the memory is the network's initial state again.
    for t0, t in zip(_initial_tensors(est), state_tensors(est)):
        assert torch.equal(t0, t)
    # Nothing is bound: uniform over classes_ (every class still a key).
    proba = est.predict_proba_one(as_dict(X[0]))
    assert proba == {int(c): 1 / 6 for c in classes}
    np.testing.assert_array_equal(est.predict_proba(X[:4]), np.full((4, 6), 1 / 6))
    # Learning one sample binds one class: it gets all the probability.
    est.learn_one(as_dict(Xn[0]), yn[0])
    proba = est.predict_proba_one(as_dict(X[0]))
    assert proba[int(yn[0])] == 1.0
    assert sum(proba.values()) == 1.0
    assert est.predict_one(as_dict(X[0])) == yn[0]


def _initial_tensors(est):
    fresh = copy.copy(est)
    fresh.state_ = est.module_.initial_state(1)
    return state_tensors(fresh)


def test_reset_memory_does_not_depend_on_history(data, fitted):
    """After reset_memory the fast state is the same whatever was learnt before."""
    _, _, Xn, yn = data
    a = copy.deepcopy(fitted).reset_memory()
    b = copy.deepcopy(fitted)
    b.partial_fit(Xn[:7], yn[:7])
    b.learn_one(as_dict(Xn[8]), "other")
    b.reset_memory()
    for ta, tb in zip(state_tensors(a), state_tensors(b)):
        assert torch.equal(ta, tb)
    assert a.prev_code_ == b.prev_code_ == -1  # no previous label in a new episode
    assert len(a.bindings_) == len(b.bindings_) == 0
    # The code generator is not rewound (by design); with the same generator
    # the same stream then gives the same answers.
    b.rng_ = copy.deepcopy(a.rng_)
    a.partial_fit(Xn[::4], yn[::4])
    b.partial_fit(Xn[::4], yn[::4])
    for row in Xn[::9]:
        pa, pb = a.predict_proba_one(as_dict(row)), b.predict_proba_one(as_dict(row))
        assert pb.pop("other") == 0.0
        assert pa == pb
    assert list(a.bindings_.items()) == list(b.bindings_.items())


def test_reset_memory_on_unfitted_raises():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        make().reset_memory()


@pytest.mark.parametrize("how", ["partial_fit", "learn_one"])
def test_first_write_initialises_lazily_and_seeded(data, how):
    X, y, Xn, yn = data

    def stream_into(est):
        if how == "partial_fit":
            assert est.partial_fit(Xn[::5], yn[::5]) is est
        else:
            for row, label in zip(Xn[::5], yn[::5]):
                assert est.learn_one(as_dict(row), label) is None
        return est

    a = stream_into(make())
    b = stream_into(make())
    assert a.n_features_in_ == 64
    np.testing.assert_array_equal(a.classes_, np.unique(yn))
    np.testing.assert_array_equal(a.predict_proba(Xn), b.predict_proba(Xn))
    # No meta-training: the weights are the seeded initial weights.
    assert a.history_ == []
    assert_same_weights(a, make(n_episodes=0).fit(X, y))
    c = stream_into(make(seed=1))
    assert not np.array_equal(a.predict_proba(Xn), c.predict_proba(Xn))


def test_score_is_plain_accuracy(data, fitted):
    X, y, Xn, yn = data
    for A, b in ((X, y), (np.vstack([X, Xn]), np.r_[y, yn])):
        assert fitted.score(A, b) == accuracy_score(b, fitted.predict(A))
    weights = np.linspace(0.1, 1, len(y))
    assert fitted.score(X, y, sample_weight=weights) == accuracy_score(
        y, fitted.predict(X), sample_weight=weights
    )


# ---------------------------------------------------------------------------
# 2. Label capacity
# ---------------------------------------------------------------------------
def test_onehot_capacity_recycles_least_recently_seen(data):
    _, _, Xn, _ = data
    est = make(n_way=3)
    stream_labels = ["a", "b", "c", "a", "d", "e", "f"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, label in enumerate(stream_labels):
            est.learn_one(as_dict(Xn[i]), label)
    user = [w for w in caught if issubclass(w.category, UserWarning)]
    assert len(user) == 1, [str(w.message) for w in user]
    # "b" is the least recently seen when "d" arrives ("a" was seen again).
    message = str(user[0].message)
    assert "'b'" in message and "'d'" in message

    proba = est.predict_proba_one(as_dict(Xn[10]))
    assert set(proba) == set("abcdef")
    # Forgotten: b (for d), c (for e), a (for f). Bound: d, e, f.
    assert proba["a"] == proba["b"] == proba["c"] == 0.0
    assert all(proba[k] > 0 for k in "def")
    assert abs(sum(proba.values()) - 1.0) <= 1e-9
    np.testing.assert_array_equal(est.classes_, list("abcdef"))
    assert est.predict_one(as_dict(Xn[10])) in {"d", "e", "f"}
    # A forgotten class seen again is re-bound (evicting the next least recent).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est.learn_one(as_dict(Xn[11]), "a")
    proba = est.predict_proba_one(as_dict(Xn[10]))
    assert proba["a"] > 0 and proba["d"] == 0.0


@pytest.mark.parametrize("method", ["learn_one", "partial_fit", "fit"])
def test_capacity_warning_points_at_the_caller(data, method):
    _, _, Xn, yn = data
    est = make(n_way=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if method == "learn_one":
            for row, label in zip(Xn[::10], yn[::10]):
                est.learn_one(as_dict(row), label)
        else:
            getattr(est, method)(Xn, yn)
    user = [w for w in caught if issubclass(w.category, UserWarning)]
    assert len(user) == 1
    assert user[0].filename == __file__


def test_onehot_capacity_in_partial_fit_and_predict_proba(data):
    _, _, Xn, yn = data  # 5 classes, 3 codes
    est = make(n_way=3)
    with pytest.warns(UserWarning, match="forgotten") as record:
        est.partial_fit(Xn, yn)
    assert len([w for w in record if "forgotten" in str(w.message)]) == 1
    proba = est.predict_proba(Xn)
    assert proba.shape == (50, 5)
    assert np.all(np.abs(proba.sum(axis=1) - 1) <= 1e-9)
    assert ((proba > 0).sum(axis=1) == 3).all()


def test_string_labels_bind_ten_classes_without_warning(prototypes_data):
    X, y = prototypes_data
    est = make(labels="string")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(0, 100, 5):  # 2 samples of each of 10 classes
            est.learn_one(as_dict(X[i]), f"class-{y[i]}")
    proba = est.predict_proba_one(as_dict(X[0]))
    assert len(proba) == 10
    assert all(p > 0 for p in proba.values())
    assert abs(sum(proba.values()) - 1.0) <= 1e-9


# ---------------------------------------------------------------------------
# 3. Labels of any hashable type; River dicts
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "labels, expected_type",
    [
        (["cat", "dog"], str),
        ([7, 3], int),
        ([True, False], bool),
        ([np.int64(7), np.int64(3)], np.int64),  # the original label objects come back
        ([np.str_("cat"), np.str_("dog")], np.str_),
        ([("a", 1), ("b", 2)], tuple),
        ([2.5, -1.0], float),
        (["cat", 3], None),  # mixed types
    ],
    ids=["str", "int", "bool", "np.int64", "np.str_", "tuple", "float", "mixed"],
)
def test_learn_one_accepts_any_hashable_label(data, labels, expected_type):
    _, _, Xn, _ = data
    est = make()
    for i in range(6):
        est.learn_one(as_dict(Xn[i * 8]), labels[i % 2])
    proba = est.predict_proba_one(as_dict(Xn[0]))
    assert len(proba) == 2
    for label in labels:
        assert label in proba
    assert abs(sum(proba.values()) - 1.0) <= 1e-9
    pred = est.predict_one(as_dict(Xn[0]))
    assert pred in labels
    if expected_type is not None:
        assert type(pred) is expected_type
        assert all(type(k) is expected_type for k in proba)
    else:
        assert {type(k) for k in proba} == {str, int}
    assert len(est.classes_) == 2
    assert est.predict(Xn[:1])[0] == pred


def test_label_one_and_string_one_are_different_classes(data):
    _, _, Xn, _ = data
    est = make()
    est.learn_one(as_dict(Xn[0]), 1)
    est.learn_one(as_dict(Xn[10]), "1")
    proba = est.predict_proba_one(as_dict(Xn[0]))
    assert set(proba) == {1, "1"} and len(proba) == 2
    assert all(p > 0 for p in proba.values())


def test_label_true_and_one_are_handled_consistently(data):
    _, _, Xn, _ = data
    est = make()
    for i, label in enumerate([1, True, "1"]):
        est.learn_one(as_dict(Xn[i * 10]), label)
    proba = est.predict_proba_one(as_dict(Xn[0]))
    # Whichever semantics (True is 1, or True is its own class), the River
    # dict must list every class of classes_ and sum to 1.
    assert len(proba) == len(est.classes_)
    assert abs(sum(proba.values()) - 1.0) <= 1e-9
    assert np.all(np.abs(est.predict_proba(Xn[:3]).sum(axis=1) - 1) <= 1e-9)


def test_feature_order_fixed_at_first_learn_one_sorted(data):
    _, _, Xn, yn = data
    names = ["b", "a", "c"]
    a, b = make(), make()
    for row, label in zip(Xn[::6], yn[::6]):
        values = dict(zip(names, row[:3].tolist()))
        a.learn_one(values, label)  # insertion order b, a, c
        b.learn_one(dict(sorted(values.items())), label)  # insertion order a, b, c
    assert a.n_features_in_ == 3
    probe = dict(zip(names, Xn[3, :3].tolist()))
    assert a.predict_proba_one(probe) == b.predict_proba_one(probe)
    # Columns of array inputs follow the sorted names: a, b, c.
    arr = np.array([[probe["a"], probe["b"], probe["c"]]])
    np.testing.assert_allclose(
        a.predict_proba(arr)[0], list(a.predict_proba_one(probe).values()), atol=1e-12
    )


def test_numeric_feature_names_sort_numerically(data):
    _, _, Xn, yn = data
    keys = [10, 2, 1]  # numeric order 1, 2, 10 (not "1" < "10" < "2")
    est = make()
    for row, label in zip(Xn[::6], yn[::6]):
        est.learn_one(dict(zip(keys, row[:3].tolist())), label)
    probe = dict(zip(keys, Xn[3, :3].tolist()))
    arr = np.array([[probe[1], probe[2], probe[10]]])
    np.testing.assert_allclose(
        est.predict_proba(arr)[0],
        list(est.predict_proba_one(probe).values()),
        atol=1e-12,
    )


def test_missing_features_are_zero_and_extra_features_ignored(data, fitted):
    _, _, Xn, _ = data
    est = copy.deepcopy(fitted)
    row = as_dict(Xn[0])
    row[5] = 0.0
    missing = {k: v for k, v in row.items() if k != 5}
    assert est.predict_proba_one(missing) == est.predict_proba_one(row)
    assert est.predict_one(missing) == est.predict_one(row)
    extra = {**row, "new": 123.0, 999: -5.0}
    assert est.predict_proba_one(extra) == est.predict_proba_one(row)
    # Same for learning.
    a, b = copy.deepcopy(fitted), copy.deepcopy(fitted)
    a.learn_one(missing, "x")
    b.learn_one(extra, "x")
    probe = as_dict(Xn[1])
    assert a.predict_proba_one(probe) == b.predict_proba_one(probe)


def test_predictions_before_any_learning(data):
    _, _, Xn, _ = data
    est = make()
    assert est.predict_proba_one(as_dict(Xn[0])) == {}
    assert est.predict_one(as_dict(Xn[0])) is None
    assert not hasattr(est, "module_")  # still unfitted


def test_predict_on_unfitted_raises(data):
    from sklearn.exceptions import NotFittedError

    _, _, Xn, _ = data
    with pytest.raises(NotFittedError):
        make().predict(Xn)
    with pytest.raises(NotFittedError):
        make().predict_proba(Xn)


def test_fit_on_a_dataframe(data):
    pd = pytest.importorskip("pandas")
    X, y, Xn, _ = data
    columns = [f"f{j}" for j in range(64)]
    est = make().fit(pd.DataFrame(X, columns=columns), y)
    np.testing.assert_array_equal(est.feature_names_in_, columns)
    np.testing.assert_array_equal(
        est.predict_proba(pd.DataFrame(Xn, columns=columns)),
        make().fit(X, y).predict_proba(Xn),
    )


def test_river_dicts_after_fit_on_a_dataframe_use_the_column_names(data):
    pd = pytest.importorskip("pandas")
    X, y, Xn, yn = data
    columns = [f"f{j}" for j in range(64)]
    est = make().fit(pd.DataFrame(X, columns=columns), y)
    named = dict(zip(columns, Xn[0].tolist()))
    expected = est.predict_proba(pd.DataFrame(Xn[:1], columns=columns))[0]
    np.testing.assert_allclose(
        list(est.predict_proba_one(named).values()), expected, atol=1e-12
    )


@pytest.mark.parametrize("labels", ["onehot", "string"])
def test_predict_one_is_the_top_of_predict_proba_one(data, labels):
    """predict_one (which skips the dict of every class) = argmax of the dict."""
    _, _, Xn, yn = data
    est = make(labels=labels)
    names = [f"c{v}" for v in yn]
    for i in range(30):
        x = as_dict(Xn[i])
        if i:
            proba = est.predict_proba_one(x)
            assert est.predict_one(x) == max(proba, key=proba.get)
        est.learn_one(x, names[i])


def test_predict_one_breaks_ties_in_classes_order(data, monkeypatch):
    """Equal probabilities: the first class of classes_, as max over the dict."""
    _, _, Xn, _ = data
    est = make()
    for i, label in enumerate([4, 2, 3]):  # bound (LRU) order differs from classes_
        est.learn_one(as_dict(Xn[i]), label)
    assert list(est.bindings_) == [4, 2, 3]
    n_out = est.module_.output.weight.shape[0]
    monkeypatch.setattr(est, "_predict_row_fast", lambda row: np.zeros(n_out))
    proba = est.predict_proba_one(as_dict(Xn[5]))
    assert len(set(proba.values()) - {0.0}) == 1  # every bound class tied
    expected = max(proba, key=proba.get)
    assert est.predict_one(as_dict(Xn[5])) == expected
    assert expected == 2


def test_predict_one_near_ties_follow_the_probabilities(data, monkeypatch):
    """Scores 2**-54 apart have equal probabilities: classes_ order decides."""
    _, _, Xn, _ = data
    est = make()
    for i, label in enumerate([4, 2, 3]):
        est.learn_one(as_dict(Xn[i]), label)
    logits = np.full(est.module_.output.weight.shape[0], -5.0)
    logits[est.bindings_[3]] = 0.5
    logits[est.bindings_[2]] = 0.5 - 2.0**-54  # a lower score, the same probability
    monkeypatch.setattr(est, "_predict_row_fast", lambda row: logits)
    proba = est.predict_proba_one(as_dict(Xn[5]))
    assert proba[2] == proba[3] > proba[4]
    assert est.predict_one(as_dict(Xn[5])) == max(proba, key=proba.get) == 2
    logits[est.bindings_[2]] = 0.5 - 1e-9  # apart: the top score wins
    proba = est.predict_proba_one(as_dict(Xn[5]))
    assert est.predict_one(as_dict(Xn[5])) == max(proba, key=proba.get) == 3


@pytest.mark.parametrize("kind", ["list", "ndarray"])
def test_predict_one_rejects_non_dicts(data, fitted, kind):
    _, _, Xn, _ = data
    x = Xn[0].tolist() if kind == "list" else Xn[0]
    with pytest.raises(TypeError, match="dict"):
        fitted.predict_proba_one(x)
    with pytest.raises(TypeError, match="dict"):
        fitted.predict_one(x)


def test_river_rows_are_read_only(data, fitted):
    """The row of a dict is memoised for learn_one: nobody may write to it."""
    _, _, Xn, _ = data
    est = copy.deepcopy(fitted)
    row = est._dict_to_row(as_dict(Xn[0]))
    assert not row.flags.writeable
    assert est._dict_to_row(as_dict(Xn[0])) is row  # the memo's row
    np.testing.assert_allclose(row, Xn[0], rtol=1e-6)


def test_none_feature_value_counts_as_missing(data, fitted):
    _, _, Xn, _ = data
    row = as_dict(Xn[0])
    row[5] = 0.0
    with_none = {**row, 5: None}
    assert fitted.predict_proba_one(with_none) == fitted.predict_proba_one(row)
    a, b = copy.deepcopy(fitted), copy.deepcopy(fitted)
    a.learn_one(with_none, "x")
    b.learn_one(row, "x")
    probe = as_dict(Xn[1])
    assert a.predict_proba_one(probe) == b.predict_proba_one(probe)


def test_learn_one_rejects_a_nan_label(data, fitted):
    _, _, Xn, _ = data
    est = copy.deepcopy(fitted)
    before = pickle.dumps(est)
    with pytest.raises(ValueError, match="NaN"):
        est.learn_one(as_dict(Xn[0]), float("nan"))
    assert pickle.dumps(est) == before


def test_fit_on_missing_cuda_fails_cleanly(data, fitted):
    if torch.cuda.is_available():
        pytest.skip("needs a CPU-only machine")
    X, y, _, _ = data
    est = copy.deepcopy(fitted).set_params(device="cuda")
    before = pickle.dumps(est)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        est.fit(X, y)
    assert pickle.dumps(est) == before


# ---------------------------------------------------------------------------
# 4. Persistence
# ---------------------------------------------------------------------------
def _pickle_roundtrip(est):
    return pickle.loads(pickle.dumps(est))


def _joblib_roundtrip(est):
    buf = io.BytesIO()
    joblib.dump(est, buf)
    buf.seek(0)
    return joblib.load(buf)


ROUNDTRIPS = pytest.mark.parametrize(
    "roundtrip", [_pickle_roundtrip, _joblib_roundtrip], ids=["pickle", "joblib"]
)


@ROUNDTRIPS
def test_roundtrip_unfitted(data, roundtrip):
    X, y, _, _ = data
    est = make(n_episodes=8)
    loaded = roundtrip(est)
    assert loaded.get_params() == est.get_params()
    assert not hasattr(loaded, "module_")
    cloned = clone(loaded)
    np.testing.assert_array_equal(
        cloned.fit(X, y).predict_proba(X), clone(est).fit(X, y).predict_proba(X)
    )


def _continue(est, Xn, yn):
    """Learn more of the stream, with both APIs."""
    est.partial_fit(Xn[30:35], yn[30:35])
    for row, label in zip(Xn[35:40], yn[35:40]):
        est.learn_one(as_dict(row), label)
    est.learn_one(as_dict(Xn[40]), "brand-new")
    return est


@ROUNDTRIPS
def test_roundtrip_fitted(data, fitted, roundtrip):
    X, y, Xn, yn = data
    # A fresh fit (not a deepcopy: deepcopy goes through __getstate__ too).
    original = make(n_episodes=8).fit(X, y)
    loaded = roundtrip(original)
    assert loaded.prev_code_ == original.prev_code_
    np.testing.assert_array_equal(loaded.predict_proba(Xn), original.predict_proba(Xn))
    np.testing.assert_array_equal(loaded.predict_proba(Xn), fitted.predict_proba(Xn))
    _continue(original, Xn, yn)
    _continue(loaded, Xn, yn)
    np.testing.assert_array_equal(loaded.classes_, original.classes_)
    np.testing.assert_array_equal(loaded.predict_proba(Xn), original.predict_proba(Xn))
    np.testing.assert_array_equal(loaded.predict_proba(X), original.predict_proba(X))


@ROUNDTRIPS
def test_roundtrip_mid_stream(data, roundtrip):
    _, _, Xn, yn = data
    original = make(n_way=3)
    with pytest.warns(UserWarning, match="forgotten"):
        for row, label in zip(Xn[0:50:3], yn[0:50:3]):  # 5 classes, 3 codes
            original.learn_one(as_dict(row), f"c{label}")
    loaded = roundtrip(original)
    probe = as_dict(Xn[1])
    assert loaded.predict_proba_one(probe) == original.predict_proba_one(probe)
    assert loaded.prev_code_ == original.prev_code_
    assert list(loaded.bindings_.items()) == list(original.bindings_.items())
    # Continue the stream on both: same codes drawn, same memory, same answers.
    # (The capacity warning was already given: neither warns again.)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for est in (original, loaded):
            for row, label in zip(Xn[1:50:4], yn[1:50:4]):
                est.learn_one(as_dict(row), f"c{label}")
    for i in range(0, 50, 7):
        assert loaded.predict_proba_one(as_dict(Xn[i])) == original.predict_proba_one(
            as_dict(Xn[i])
        )
    assert list(loaded.bindings_.items()) == list(original.bindings_.items())


def test_model_saved_on_cuda_loads_on_cpu(data, fitted):
    if torch.cuda.is_available():
        pytest.skip("simulates a CPU-only machine")
    _, _, Xn, yn = data
    est = copy.deepcopy(fitted)
    expected = est.predict_proba(Xn)
    est.device = "cuda"  # as if fitted with device="cuda"
    payload = pickle.dumps(est)
    with pytest.warns(UserWarning, match="CUDA is not available") as record:
        loaded = pickle.loads(payload)
    assert len(record) == 1
    assert loaded.device == "cpu"
    assert loaded.module_.output.weight.device.type == "cpu"
    np.testing.assert_array_equal(loaded.predict_proba(Xn), expected)
    loaded.partial_fit(Xn[:3], yn[:3])  # keeps working
    with pytest.warns(UserWarning, match="CUDA is not available"):
        joblib.load(_joblib_bytes(est))


def _joblib_bytes(est):
    buf = io.BytesIO()
    joblib.dump(est, buf)
    buf.seek(0)
    return buf


def test_clone_keeps_pretrained(tmp_path):
    est = make(pretrained=str(tmp_path / "w.pt"))
    assert clone(est).pretrained == str(tmp_path / "w.pt")
    assert clone(est).get_params() == est.get_params()


# ---------------------------------------------------------------------------
# 5. Pretrained weights
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, fitted):
    """Weights of ``fitted`` written with save_weights (read-only for tests)."""
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_weights(path, fitted.module_, fitted._network_config(64))
    return path


@pytest.mark.parametrize("as_path", [False, True], ids=["str", "Path"])
def test_pretrained_file_loads_the_slow_weights(data, fitted, weights_file, as_path):
    X, y, Xn, yn = data
    name = weights_file if as_path else str(weights_file)
    est = make(pretrained=name, n_episodes=0).fit(Xn, yn)
    assert_same_weights(est, fitted)
    assert est.history_ == []
    np.testing.assert_array_equal(est.classes_, np.unique(yn))
    # Survives clone, and the clone loads the same weights.
    cloned = clone(est)
    assert cloned.pretrained == name
    assert_same_weights(cloned.fit(X, y), fitted)
    # Lazy initialisation also loads the file.
    lazy = make(pretrained=name)
    lazy.learn_one(as_dict(Xn[0]), "a")
    assert_same_weights(lazy, fitted)


def test_weights_file_older_than_key_strength_loads(data, fitted, tmp_path):
    """A file written before ``key_strength`` existed has none in its config:
    it is a network without key strengths, and loads as one."""
    X, y, Xn, yn = data
    config = fitted._network_config(64)
    del config["kwargs"]["key_strength"]
    path = tmp_path / "old.pt"
    save_weights(path, fitted.module_, config)
    assert_same_weights(make(pretrained=str(path)).fit(Xn, yn), fitted)
    with pytest.raises(ValueError, match="key_strength: file=False, model=True"):
        make(pretrained=str(path), key_strength=True).fit(Xn, yn)


def _bad_weights(kind, tmp_path, fitted):
    path = tmp_path / f"{kind}.pt"
    if kind == "missing":
        return path
    if kind == "corrupt":
        path.write_bytes(np.random.default_rng(0).bytes(2048))
    elif kind == "foreign":
        torch.save({"a": 1}, path)
    elif kind == "architecture":
        other = make(controller_size=8).fit(np.eye(64)[:4], [0, 1, 2, 3])
        save_weights(path, other.module_, other._network_config(64))
    elif kind == "n_inputs":
        other = make().fit(np.eye(10)[:4], [0, 1, 2, 3])
        save_weights(path, other.module_, other._network_config(10))
    elif kind == "key_strength":
        other = make(key_strength=True).fit(np.eye(64)[:4], [0, 1, 2, 3])
        save_weights(path, other.module_, other._network_config(64))
    elif kind == "lying_config":  # config says ours, tensors are another network
        other = make(controller_size=8).fit(np.eye(64)[:4], [0, 1, 2, 3])
        save_weights(path, other.module_, fitted._network_config(64))
    return path


BAD_WEIGHTS = [
    ("missing", FileNotFoundError, "neither a shipped model"),
    ("corrupt", ValueError, "corrupt"),
    ("foreign", ValueError, "not an sk_mann weights file"),
    ("architecture", ValueError, r"architecture.*controller_size: file=8, model=16"),
    ("n_inputs", ValueError, r"input size.*n_inputs: file=10, model=64"),
    ("key_strength", ValueError, r"architecture.*key_strength: file=True, model=False"),
    ("lying_config", ValueError, "another architecture"),
]


@pytest.mark.parametrize(
    "kind, error, match", BAD_WEIGHTS, ids=[b[0] for b in BAD_WEIGHTS]
)
def test_bad_pretrained_fails_clearly_and_atomically(
    data, fitted, tmp_path, kind, error, match
):
    X, y, Xn, _ = data
    path = _bad_weights(kind, tmp_path, fitted)
    est = copy.deepcopy(fitted)
    expected = est.predict_proba(Xn)
    est.set_params(pretrained=str(path))
    before = pickle.dumps(est)
    with pytest.raises(error, match=match) as info:
        est.fit(X, y)
    if kind in ("missing", "corrupt", "foreign"):
        assert str(path) in str(info.value)
    assert pickle.dumps(est) == before
    np.testing.assert_array_equal(est.predict_proba(Xn), expected)
    # Also when the failed fit had already reset n_features_in_ (32 here).
    with pytest.raises(error):
        est.fit(X[:, :32], y)
    assert pickle.dumps(est) == before
    # An unfitted model stays unfitted when the lazy initialisation fails.
    lazy = make(pretrained=str(path))
    with pytest.raises(error, match=match):
        lazy.learn_one(as_dict(Xn[0]), "a")
    with pytest.raises(error, match=match):
        lazy.partial_fit(Xn[:2], [0, 1])
    assert not hasattr(lazy, "module_")
    assert lazy.predict_proba_one(as_dict(Xn[0])) == {}


# ---------------------------------------------------------------------------
# 6. Bad input
# ---------------------------------------------------------------------------
def _with(value, A):
    A = np.array(A, dtype=np.float64)
    A[1, 3] = value
    return A


NONFINITE = pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])


@NONFINITE
def test_nonfinite_X_is_rejected_without_side_effects(data, fitted, value):
    X, y, Xn, yn = data
    est = copy.deepcopy(fitted)
    before = pickle.dumps(est)
    match = "NaN|infinity"
    for call in (
        lambda: est.fit(_with(value, X), y),
        lambda: est.partial_fit(_with(value, Xn[:5]), yn[:5]),
        lambda: est.predict(_with(value, Xn[:5])),
        lambda: est.predict_proba(_with(value, Xn[:5])),
        lambda: est.score(_with(value, Xn[:5]), yn[:5]),
    ):
        with pytest.raises(ValueError, match=match):
            call()
        assert pickle.dumps(est) == before
    bad = as_dict(Xn[0])
    bad[3] = value
    bound = next(iter(est.bindings_))  # a bound class takes learn_one's fast lane
    for call in (
        lambda: est.learn_one(bad, "x"),
        lambda: est.learn_one(bad, bound),
        lambda: est.predict_one(bad),
        lambda: est.predict_proba_one(bad),
    ):
        with pytest.raises(ValueError, match="NaN or infinity"):
            call()
        assert pickle.dumps(est) == before
    # On an unfitted model: nothing is initialised by the failed call.
    fresh = make()
    with pytest.raises(ValueError, match="NaN or infinity"):
        fresh.learn_one(bad, "x")
    with pytest.raises(ValueError, match=match):
        fresh.partial_fit(_with(value, Xn[:5]), yn[:5])
    assert not hasattr(fresh, "module_")


def test_huge_finite_dict_values_are_accepted(data, fitted):
    """Values whose squares overflow float32 still stream (the slow path checks)."""
    _, _, Xn, yn = data
    est, ref = copy.deepcopy(fitted), copy.deepcopy(fitted)
    ref._numpy_ = None
    big = as_dict(Xn[0])
    big[3] = 1e30
    for model in (est, ref):
        model.learn_one(as_dict(Xn[1]), yn[1])
        model.learn_one(big, yn[0])
    p, p_ref = est.predict_proba_one(big), ref.predict_proba_one(big)
    assert p.keys() == p_ref.keys()
    for k in p_ref:
        assert p[k] == pytest.approx(p_ref[k], abs=1e-5)


@pytest.mark.parametrize(
    "value",
    [np.float32(0.25), np.float64(-3.5), 7, True, "0.5", 1e38, 3.5e38, -1e300],
    ids=repr,
)
def test_dict_values_of_any_numeric_kind_convert_as_float(data, fitted, value):
    """The packed fast conversion and the general one give the same row."""
    _, _, Xn, _ = data
    est = copy.deepcopy(fitted)
    x = as_dict(Xn[0])
    x[3] = value
    expected = np.array([float(v) for v in x.values()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # beyond float32: inf
        expected = expected.astype(est._numpy_.dtype).astype(float)
        row = est._dict_to_row(x)
        got = np.asarray(row, dtype=est._numpy_.dtype).astype(float)
    np.testing.assert_array_equal(got, expected)


def test_wrong_number_of_features_after_fit(data, fitted):
    _, _, Xn, yn = data
    est = copy.deepcopy(fitted)
    before = pickle.dumps(est)
    match = "has 10 features, but MANNOneShotClassifier is expecting 64 features"
    with pytest.raises(ValueError, match=match):
        est.predict(Xn[:, :10])
    with pytest.raises(ValueError, match=match):
        est.predict_proba(Xn[:, :10])
    with pytest.raises(ValueError, match=match):
        est.partial_fit(Xn[:5, :10], yn[:5])
    assert pickle.dumps(est) == before


@pytest.mark.parametrize(
    "make_args, error, match",
    [
        (lambda X, y: (X[:, 0], y), ValueError, "Expected 2D array"),
        (lambda X, y: (X[:0], y[:0]), ValueError, "0 sample"),
        (lambda X, y: (X, y[:-1]), ValueError, "inconsistent numbers of samples"),
        (lambda X, y: (X, np.r_[np.nan, y[1:]]), ValueError, "y contains NaN"),
        (
            lambda X, y: (X, np.linspace(0, 1, len(y))),
            ValueError,
            "Unknown label type",
        ),
    ],
    ids=["1d-X", "empty", "length-mismatch", "nan-y", "continuous-y"],
)
@pytest.mark.parametrize("method", ["fit", "partial_fit"])
def test_bad_X_y_is_rejected_without_side_effects(
    data, fitted, make_args, error, match, method
):
    X, y, _, _ = data
    est = copy.deepcopy(fitted)
    before = pickle.dumps(est)
    args = make_args(X, y.astype(np.float64))
    with pytest.raises(error, match=match):
        getattr(est, method)(*args)
    assert pickle.dumps(est) == before
    fresh = make()
    with pytest.raises(error, match=match):
        getattr(fresh, method)(*args)
    assert not hasattr(fresh, "module_")


@pytest.mark.parametrize("bad_X", ["1d", "empty"])
def test_bad_X_for_predict(data, fitted, bad_X):
    _, _, Xn, _ = data
    A = Xn[:, 0] if bad_X == "1d" else Xn[:0]
    match = "Expected 2D array" if bad_X == "1d" else "0 sample"
    with pytest.raises(ValueError, match=match):
        fitted.predict(A)
    with pytest.raises(ValueError, match=match):
        fitted.predict_proba(A)


@pytest.mark.parametrize("x", [[1.0, 2.0], np.ones(64), "abc", None])
def test_learn_one_rejects_non_dicts(data, fitted, x):
    est = copy.deepcopy(fitted)
    before = pickle.dumps(est)
    with pytest.raises(TypeError, match="expects a dict"):
        est.learn_one(x, 1)
    assert pickle.dumps(est) == before
    fresh = make()
    with pytest.raises(TypeError, match="expects a dict"):
        fresh.learn_one(x, 1)
    assert not hasattr(fresh, "module_")


@pytest.mark.parametrize(
    "param, value",
    [
        ("n_slots", 0),
        ("controller", "gru"),
        ("labels", "binary"),
        ("n_episodes", -1),
        ("n_episodes", "many"),
        ("lr", 0.0),
        ("gamma", 1.5),
        ("n_way", 0),
    ],
)
def test_invalid_parameters_raise_at_fit(data, fitted, param, value):
    X, y, Xn, yn = data
    est = copy.deepcopy(fitted).set_params(**{param: value})
    before = pickle.dumps(est)
    with pytest.raises(InvalidParameterError, match=param):
        est.fit(X, y)
    assert pickle.dumps(est) == before
    for call in (
        lambda m: m.fit(X, y),
        lambda m: m.partial_fit(Xn[:3], yn[:3]),
        lambda m: m.learn_one(as_dict(Xn[0]), 1),
    ):
        fresh = make(**{param: value})
        with pytest.raises(InvalidParameterError, match=param):
            call(fresh)
        assert not hasattr(fresh, "module_")


# ---------------------------------------------------------------------------
# 7. Integration
# ---------------------------------------------------------------------------
def test_sklearn_pipeline(data):
    X, y, _, _ = data
    pipe = Pipeline([("scale", StandardScaler()), ("mann", make(n_episodes=8))])
    assert pipe.fit(X, y) is pipe
    pred = pipe.predict(X)
    assert pred.shape == (50,)
    assert set(pred) <= set(range(5))
    assert pipe.score(X, y) == accuracy_score(y, pred)
    mann = pipe.named_steps["mann"]
    np.testing.assert_array_equal(
        pipe.predict_proba(X),
        mann.predict_proba(pipe.named_steps["scale"].transform(X)),
    )


def test_grid_search_with_episodic_scorer(prototypes_data):
    X, y = prototypes_data
    X, y = X[:120], y[:120]  # 12 classes: 6 per test fold >= n_way
    search = GridSearchCV(
        make(n_episodes=8, n_per_class=2),
        {"n_slots": [4, 8], "controller_size": [8, 16]},
        cv=GroupKFold(2),
        scoring=sk_mann.episodic_scorer(2, n_episodes=20),
        n_jobs=2,
        error_score="raise",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 6 classes > 5 codes
        search.fit(X, y, groups=y)
    assert set(search.best_params_) == {"n_slots", "controller_size"}
    scores = search.cv_results_["mean_test_score"]
    assert scores.shape == (4,)
    assert np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores <= 1))
    assert isinstance(search.best_estimator_, MANNOneShotClassifier)
    assert search.best_estimator_.n_slots == search.best_params_["n_slots"]


def test_episodic_scorer_returns_a_probability(data, fitted):
    _, _, Xn, yn = data
    scorer = sk_mann.episodic_scorer(2, n_episodes=10)
    value = scorer(fitted, Xn, yn)
    assert type(value) is float
    assert 0.0 <= value <= 1.0
    assert scorer(fitted, Xn, yn) == value  # seeded


def test_evaluate_per_instance_leaves_the_estimator_untouched(data, fitted):
    _, _, Xn, yn = data
    est = copy.deepcopy(fitted)
    before = pickle.dumps(est)
    # n_per_class=3: no class reaches a 4th instance within an episode.
    res = evaluate_per_instance(est, Xn, yn, n_episodes=12, instances=(1, 2, 3, 4))
    assert pickle.dumps(est) == before
    assert res["instances"] == [1, 2, 3, 4]
    assert res["n_episodes"] == 12
    assert len(res["accuracy"]) == len(res["ci95"]) == 4
    assert all(0.0 <= a <= 1.0 for a in res["accuracy"][:3])
    assert all(np.isfinite(c) and c >= 0 for c in res["ci95"][:3])
    assert np.isnan(res["accuracy"][3]) and np.isnan(res["ci95"][3])
    again = evaluate_per_instance(est, Xn, yn, n_episodes=12, instances=(1, 2, 3, 4))
    np.testing.assert_equal(again, res)


def test_river_progressive_validation_is_predict_then_learn(prototypes_data):
    X, y = prototypes_data
    X, y = X[:60], y[:60] % 3  # 3 classes, 60 samples
    pipeline = preprocessing.StandardScaler() | make()
    assert isinstance(pipeline, compose.Pipeline)
    metric = evaluate.progressive_val_score(
        stream.iter_array(X, y), pipeline, metrics.Accuracy()
    )
    assert isinstance(metric, metrics.Accuracy)
    assert 0.0 <= metric.get() <= 1.0
    # Same as the explicit paper protocol: predict, then learn.
    manual = preprocessing.StandardScaler() | make()
    hits = scored = 0
    for x, label in stream.iter_array(X, y):
        pred = manual.predict_one(x)
        if pred is not None:  # River skips "no prediction yet" (the first step)
            scored += 1
            hits += pred == label
        manual.learn_one(x, label)
    assert scored == len(y) - 1
    assert metric.get() == hits / scored


def test_meta_trained_model_streamed_in_episodes(prototypes_data):
    X, y = prototypes_data
    train = y < 20
    est = make(n_episodes=8, n_per_class=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 20 classes > 5 codes
        est.fit(X[train], y[train])
    rng = np.random.default_rng(0)
    for episode in range(2):
        est.reset_memory()
        classes = rng.choice(np.arange(20, 60), size=5, replace=False)
        idx = rng.permutation(np.flatnonzero(np.isin(y, classes)))[:25]
        for step, i in enumerate(idx):
            x = as_dict(X[i])
            pred = est.predict_one(x)
            assert pred is not None
            proba = est.predict_proba_one(x)
            assert abs(sum(proba.values()) - 1.0) <= 1e-9
            est.learn_one(x, y[i])
            if step == 0:  # only one class bound: it gets all the probability
                assert est.predict_one(as_dict(X[idx[-1]])) == y[i]
        # Exactly the episode's classes are bound (non-zero probability).
        proba = est.predict_proba_one(as_dict(X[idx[0]]))
        assert {c for c, p in proba.items() if p > 0} == set(y[idx].tolist())


# ---------------------------------------------------------------------------
# 8. Memory accounting
# ---------------------------------------------------------------------------
def test_raw_memory_usage_counts_the_memory_tensors(data):
    _, _, Xn, yn = data
    small = make(n_slots=8).partial_fit(Xn[:2], yn[:2])
    large = make(n_slots=24).partial_fit(Xn[:2], yn[:2])
    assert isinstance(small._raw_memory_usage, int)
    # Only the memory depends on n_slots: memory (slots x slot_size), usage,
    # least-used and read weights (n_reads x slots), float32.
    per_slot = (ARCH["slot_size"] + 2 + ARCH["n_reads"]) * 4
    assert large._raw_memory_usage - small._raw_memory_usage == 16 * per_slot
    params = sum(p.numel() * 4 for p in small.module_.parameters())
    assert small._raw_memory_usage >= params + 8 * per_slot
    wider = make(controller_size=32).partial_fit(Xn[:2], yn[:2])
    assert wider._raw_memory_usage > small._raw_memory_usage
    assert make()._raw_memory_usage > 0  # unfitted: still a number


def test_fast_state_size_is_independent_of_stream_length(data, fitted):
    _, _, Xn, yn = data
    est = copy.deepcopy(fitted)
    shapes = [t.shape for t in state_tensors(est)]
    usage = est._raw_memory_usage
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 10 classes > 5 codes
        for row, label in zip(Xn, yn):
            est.learn_one(as_dict(row), label)
        est.partial_fit(Xn, yn)
    assert [t.shape for t in state_tensors(est)] == shapes
    assert est._raw_memory_usage == usage
    assert len(est.bindings_) <= est.scheme_.n_codes


def test_episodic_scorer_accepts_a_pipeline(data):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sk_mann import episodic_scorer

    X, y, Xn, yn = data
    pipe = make_pipeline(StandardScaler(), make(n_episodes=8)).fit(X, y)
    direct = episodic_scorer(2, n_episodes=10)(pipe[-1], pipe[:-1].transform(Xn), yn)
    assert episodic_scorer(2, n_episodes=10)(pipe, Xn, yn) == direct


def test_n_jobs_changes_no_prediction(data, fitted, monkeypatch):
    """Chunks scored in parallel and a split streaming step give the same bits."""
    import sk_mann.classifier as classifier_module

    monkeypatch.setattr(classifier_module, "_PREDICT_CHUNK", 7)  # several chunks
    _, _, Xn, yn = data
    one, two = copy.deepcopy(fitted), copy.deepcopy(fitted).set_params(n_jobs=2)
    for i in range(10):
        x = as_dict(Xn[i])
        assert one.predict_proba_one(x) == two.predict_proba_one(x)
        one.learn_one(x, yn[i])
        two.learn_one(x, yn[i])
    np.testing.assert_array_equal(one.predict_proba(Xn), two.predict_proba(Xn))
    assert len(Xn) > 2 * 7


@pytest.mark.skipif(
    not (_jit_step.AVAILABLE and hasattr(os, "fork")), reason="needs numba, fork"
)
def test_a_forked_process_streams_after_the_parent_used_threads(data, fitted):
    """numba's OpenMP pool terminates a forked child that starts a parallel
    region after its parent ran one: a child of a process that streamed with
    ``n_jobs=2`` streams on one thread, with the same probabilities."""
    _, _, Xn, yn = data
    two = copy.deepcopy(fitted).set_params(n_jobs=2)
    for i in range(3):  # the parent runs the threaded kernels
        two.learn_one(as_dict(Xn[i]), yn[i])
    want = copy.deepcopy(two).predict_proba_one(as_dict(Xn[3]))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            code = 0 if two.predict_proba_one(as_dict(Xn[3])) == want else 2
            two.learn_one(as_dict(Xn[3]), yn[3])
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_string_label_stream_equals_torch_stream(data):
    """Probabilities from 5-digit label codes: fast path == torch path."""
    _, _, Xn, _ = data
    fast = make(labels="string", seed=0)
    for i in range(3):  # classes "c0".."c2" bound before the comparison
        fast.learn_one(as_dict(Xn[i]), f"c{i}")
    ref = copy.deepcopy(fast)
    ref._numpy_ = None
    for i in range(3, 15):
        x = as_dict(Xn[i])
        p_fast, p_ref = fast.predict_proba_one(x), ref.predict_proba_one(x)
        assert list(p_fast) == list(p_ref)
        for k in p_ref:
            assert p_fast[k] == pytest.approx(p_ref[k], abs=1e-5)
        fast.learn_one(x, f"c{i % 7}")
        ref.learn_one(x, f"c{i % 7}")
