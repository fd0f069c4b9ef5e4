"""Tests for :mod:`sk_mann.metrics` and the baselines of :mod:`sk_mann.baselines`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from sk_mann.baselines import RiverKNN, SklearnKNN, evaluate_online
from sk_mann.episodes import EpisodeSampler
from sk_mann.metrics import DEFAULT_INSTANCES, evaluate_network, per_instance_accuracy
from sk_mann.model import MANN

# SklearnKNN refits on a handful of samples with as many classes: sklearn warns.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The number of unique classes:UserWarning"
)


# ---------------------------------------------------------------------------
# per_instance_accuracy.
# ---------------------------------------------------------------------------


def test_per_instance_accuracy_docstring_case():
    correct = np.array([[0, 1, 1, 1], [0, 0, 1, 1]], dtype=bool)
    instance = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    res = per_instance_accuracy(correct, instance, instances=(1, 2, 3))
    assert res["instances"] == [1, 2, 3]
    assert res["n_episodes"] == 2
    assert_allclose(res["accuracy"][:2], [0.25, 1.0])
    # per-episode accuracies at instance 1: [0.5, 0.0] -> std (ddof=1) = sqrt(0.125)
    assert_allclose(res["ci95"][:2], [1.96 * math.sqrt(0.125) / math.sqrt(2), 0.0])
    assert math.isnan(res["accuracy"][2]) and math.isnan(res["ci95"][2])


def test_per_instance_accuracy_averages_over_episodes_that_reach_the_instance():
    correct = np.array([[1, 1, 1], [0, 1, 0]], dtype=bool)
    instance = np.array([[1, 2, 3], [1, 1, 2]])
    res = per_instance_accuracy(correct, instance, instances=(1, 2, 3))
    # instance 1: episode 0 -> 1/1, episode 1 -> 1/2; instance 3: episode 0 only
    assert_allclose(res["accuracy"], [0.75, 0.5, 1.0])
    assert_allclose(res["ci95"][0], 1.96 * np.std([1.0, 0.5], ddof=1) / math.sqrt(2))
    assert_allclose(res["ci95"][1], 1.96 * np.std([1.0, 0.0], ddof=1) / math.sqrt(2))
    assert math.isnan(res["ci95"][2])  # one episode: no interval


def test_per_instance_accuracy_matches_a_loop():
    rng = np.random.default_rng(0)
    correct = rng.random((30, 20)) < 0.6
    instance = rng.integers(1, 6, size=(30, 20))
    res = per_instance_accuracy(correct, instance, instances=(1, 2, 5, 10))
    for k, acc, ci in zip(res["instances"], res["accuracy"], res["ci95"]):
        per_episode = [
            correct[e][instance[e] == k].mean()
            for e in range(30)
            if (instance[e] == k).any()
        ]
        if not per_episode:
            assert math.isnan(acc) and math.isnan(ci)
            continue
        assert_allclose(acc, np.mean(per_episode), rtol=1e-12)
        assert_allclose(
            ci, 1.96 * np.std(per_episode, ddof=1) / math.sqrt(len(per_episode))
        )


def test_per_instance_accuracy_default_instances():
    res = per_instance_accuracy(np.ones((2, 3), dtype=bool), np.array([[1, 2, 3]] * 2))
    assert tuple(res["instances"]) == DEFAULT_INSTANCES == (1, 2, 3, 4, 5, 10)
    assert_allclose(res["accuracy"][:3], 1.0)
    assert all(math.isnan(a) for a in res["accuracy"][3:])


# ---------------------------------------------------------------------------
# evaluate_network.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_data():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 6)
    X = rng.random((60, 8)).astype(np.float32)
    return X, y


class ConstantCode(torch.nn.Module):
    """Always predicts digit 0 in every group, i.e. code 0."""

    def forward(self, x, label_in):
        out = torch.zeros(*label_in.shape, dtype=x.dtype)
        out[..., ::5] = (
            1.0  # the first unit of each group (5-way one-hot or 5x5 string)
        )
        return out


class PeekNextLabel(torch.nn.Module):
    """Cheats: the label input at t+1 is the code of step t. Last step: code 0."""

    def __init__(self):
        super().__init__()
        self.modes = []

    def forward(self, x, label_in):
        self.modes.append(self.training)
        out = torch.zeros_like(label_in)
        out[:, :-1] = 10.0 * label_in[:, 1:] - 5.0
        return out


def replay(sampler, n_episodes, seed, batch_size):
    """The episodes evaluate_network draws, as documented."""
    rng = np.random.default_rng(seed)
    eps, done = [], 0
    while done < n_episodes:
        b = min(batch_size, n_episodes - done)
        eps.append(sampler.sample(batch_size, rng).head(b))
        done += b
    return eps


@pytest.mark.parametrize("labels", ["onehot", "string"])
def test_evaluate_network_grades_against_the_right_targets(small_data, labels):
    X, y = small_data
    sampler = EpisodeSampler(X, y, n_way=5, n_per_class=3, labels=labels)
    net = PeekNextLabel()
    res = evaluate_network(
        net, sampler, n_episodes=23, seed=4, batch_size=10, instances=(1, 2, 3)
    )
    eps = replay(sampler, 23, 4, 10)
    correct = np.concatenate(
        [
            np.column_stack([np.ones((len(e.codes), 14), bool), e.codes[:, -1] == 0])
            for e in eps
        ]
    )
    instance = np.concatenate([e.instance for e in eps])
    want = per_instance_accuracy(correct, instance, (1, 2, 3))
    assert res["n_episodes"] == 23
    assert_allclose(res["accuracy"], want["accuracy"], rtol=1e-12)
    assert_allclose(res["ci95"], want["ci95"], rtol=1e-12)
    assert min(res["accuracy"]) > 0.8


def test_evaluate_network_constant_prediction_is_chance(small_data):
    """One-hot 5-way: code 0 is the label of exactly one of the 5 classes."""
    X, y = small_data
    sampler = EpisodeSampler(X, y, n_way=5, n_per_class=4)
    res = evaluate_network(
        ConstantCode(), sampler, n_episodes=400, instances=(1, 2, 3, 4)
    )
    assert_allclose(res["accuracy"], 0.2, rtol=1e-12)
    assert_allclose(res["ci95"], 0.0, atol=1e-12)


def test_evaluate_network_string_labels_need_every_character():
    """String labels: code 0 is almost never an episode's label, so ~0% correct."""
    rng = np.random.default_rng(1)
    X, y = rng.random((60, 8)).astype(np.float32), np.repeat(np.arange(10), 6)
    sampler = EpisodeSampler(X, y, n_way=5, n_per_class=2, labels="string")
    res = evaluate_network(ConstantCode(), sampler, n_episodes=200, instances=(1, 2))
    assert max(res["accuracy"]) < 0.02


def test_evaluate_network_is_reproducible(small_data):
    X, y = small_data
    sampler = EpisodeSampler(X, y, n_way=3, n_per_class=4)
    torch.manual_seed(0)
    net = MANN(8, 3, 3, controller_size=8, n_slots=6, slot_size=4, n_reads=1)
    kw = dict(n_episodes=60, batch_size=25, instances=(1, 2, 3, 4))
    a = evaluate_network(net, sampler, seed=3, **kw)
    b = evaluate_network(net, sampler, seed=3, **kw)
    c = evaluate_network(net, sampler, seed=4, **kw)
    assert a == b
    assert a["accuracy"] != c["accuracy"]


class RecordInputs(torch.nn.Module):
    """Predicts code 0 everywhere and keeps every input batch it is shown."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, label_in):
        self.seen.append(x.numpy().copy())
        return torch.zeros_like(label_in)


def test_fewer_episodes_are_the_first_of_the_same_sequence(small_data):
    """A shorter evaluation (network or online) sees a prefix of a longer one."""
    X, y = small_data
    sampler = EpisodeSampler(X, y, n_way=3, n_per_class=2)
    long, short = RecordInputs(), RecordInputs()
    evaluate_network(long, sampler, n_episodes=12, seed=5, batch_size=5)
    evaluate_network(short, sampler, n_episodes=7, seed=5, batch_size=5)
    assert [len(b) for b in short.seen] == [5, 2]
    assert_allclose(np.concatenate(short.seen), np.concatenate(long.seen)[:7])

    class RecordRows(PreviousCode):
        def __init__(self):
            super().__init__()
            self.rows = []

        def learn(self, x, code):
            self.rows.append(np.array(x))
            super().learn(x, code)

    a, b = RecordRows(), RecordRows()
    evaluate_online(a, sampler, n_episodes=12, seed=5, batch_size=5)
    evaluate_online(b, sampler, n_episodes=7, seed=5, batch_size=5)
    assert_allclose(np.stack(b.rows), np.stack(a.rows)[: len(b.rows)])
    assert_allclose(np.stack(b.rows), np.concatenate(short.seen).reshape(-1, 8))


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_network_runs_in_eval_mode_and_restores_the_mode(small_data, training):
    X, y = small_data
    net = PeekNextLabel().train(training)
    evaluate_network(
        net, EpisodeSampler(X, y, n_way=3, n_per_class=2), n_episodes=5, batch_size=2
    )
    assert net.modes == [False, False, False]
    assert net.training is training


# ---------------------------------------------------------------------------
# Baselines.
# ---------------------------------------------------------------------------


class PreviousCode:
    """A fake online learner: predicts the last code it learnt (nothing at t=0)."""

    def __init__(self):
        self.resets = 0
        self.reset()

    def reset(self):
        self.resets += 1
        self.last = None

    def predict(self, x):
        return -5 if self.last is None else self.last  # -5 is never right

    def learn(self, x, code):
        self.last = code


def test_evaluate_online_predicts_then_learns_and_resets_per_episode(small_data):
    X, y = small_data
    sampler = EpisodeSampler(X, y, n_way=3, n_per_class=3)
    learner = PreviousCode()
    learner.resets = 0
    res = evaluate_online(
        learner, sampler, n_episodes=14, seed=2, batch_size=5, instances=(1, 2, 3)
    )
    assert learner.resets == 14
    eps = replay(sampler, 14, 2, 5)
    codes = np.concatenate([e.codes for e in eps])
    correct = np.zeros(codes.shape, dtype=bool)
    correct[:, 1:] = codes[:, 1:] == codes[:, :-1]
    want = per_instance_accuracy(
        correct, np.concatenate([e.instance for e in eps]), (1, 2, 3)
    )
    assert_allclose(res["accuracy"], want["accuracy"], rtol=1e-12)


@pytest.fixture(scope="module")
def prototype_sampler(prototypes_data):
    X, y = prototypes_data
    return EpisodeSampler(X, y, n_way=5, n_per_class=3)


@pytest.mark.parametrize("learner", [SklearnKNN, RiverKNN], ids=["sklearn", "river"])
def test_one_nn_is_one_shot_on_separable_prototypes(prototype_sampler, learner):
    res = evaluate_online(
        learner(1), prototype_sampler, n_episodes=10, seed=0, instances=(1, 2, 3)
    )
    acc1, acc2, acc3 = res["accuracy"]
    # 1st instance: only the random guess at t=0 can be right (0 or 1/5 per episode)
    assert acc1 < 0.1
    assert acc2 > 0.9 and acc3 > 0.9


@pytest.fixture(scope="module")
def noisy_sampler():
    """Overlapping classes, so that 1-NN makes mistakes."""
    rng = np.random.default_rng(3)
    protos = rng.random((20, 16))
    y = np.repeat(np.arange(20), 10)
    X = (protos[y] + 0.5 * rng.standard_normal((200, 16))).astype(np.float32)
    return EpisodeSampler(X, y, n_way=5, n_per_class=4)


def test_sklearn_and_river_knn_agree(noisy_sampler):
    kw = dict(n_episodes=8, seed=1, batch_size=3, instances=(1, 2, 3, 4))
    a = evaluate_online(SklearnKNN(1), noisy_sampler, **kw)
    b = evaluate_online(RiverKNN(1), noisy_sampler, **kw)
    assert a == b
    assert 0.2 < a["accuracy"][1] < 0.95  # the task is not trivial: errors to agree on


def test_knn_learners_start_empty():
    for learner in (SklearnKNN(1), RiverKNN(1)):
        x = np.array([0.0, 1.0])
        assert learner.predict(x) is None
        learner.learn(x, 3)
        learner.learn(np.array([5.0, 5.0]), 1)
        assert learner.predict(np.array([0.1, 0.9])) == 3
        learner.reset()
        assert learner.predict(x) is None
