"""Tests for :mod:`sk_mann.training`, the skorch meta-training engine.

The first test is a short synthetic meta-training: a small MANN, trained for a
few seconds on episodes of 40 synthetic classes, must classify the 2nd instance
of 20 held-out classes well above chance.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_mann
from numpy.testing import assert_allclose

from sk_mann.episodes import EpisodeSampler
from sk_mann.metrics import evaluate_network
from sk_mann.model import MANN
from sk_mann.training import (
    EpisodeDataset,
    GradientValueClipping,
    MetaNet,
    TimeBudget,
    meta_train,
)

QUIET = dict(progress_bar=False, verbose=0)


# ---------------------------------------------------------------------------
# A short synthetic meta-training.
# ---------------------------------------------------------------------------


def test_short_meta_training_learns_one_shot(prototypes_data):
    """2nd-instance accuracy on held-out classes well above chance (1/3).

    Measured (one thread): the loss leaves the "guess an unused label" plateau
    (about 49% at the 2nd instance) after about 4,000 episodes and reaches about
    66-70% after 16,000 episodes (about 9 s), for model seeds 0-3. The
    features are standardised with the training classes' statistics: on the raw
    features (all in [0, 1], mean 0.5) the same run stays on the plateau for more
    than 30,000 episodes.
    """
    X, y = prototypes_data
    train = y < 40
    X = (X - X[train].mean(axis=0)) / X[train].std(axis=0)
    kw = dict(n_way=3, n_per_class=4)
    train_sampler = EpisodeSampler(X[train], y[train], **kw)
    heldout_sampler = EpisodeSampler(X[~train], y[~train], **kw)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = MANN(64, 3, 3, controller_size=64, n_slots=16, slot_size=16, n_reads=1)
    before = evaluate_network(
        net, heldout_sampler, n_episodes=500, seed=1, instances=(1, 2)
    )
    meta_train(
        net,
        train_sampler,
        n_episodes=16_000,
        batch_size=16,
        batches_per_epoch=25,
        lr=1e-2,
        seed=0,
        **QUIET,
    )
    res = evaluate_network(
        net, heldout_sampler, n_episodes=500, seed=1, instances=(1, 2, 3)
    )
    acc2 = res["accuracy"][1]
    assert before["accuracy"][1] < 0.45
    assert acc2 >= 0.60, res
    assert acc2 - 3 * res["ci95"][1] > 1 / 3


# ---------------------------------------------------------------------------
# Tiny settings for the engine tests.
# ---------------------------------------------------------------------------


TINY = dict(batch_size=4, batches_per_epoch=3, lr=1e-2, seed=0, **QUIET)
EPOCH = 4 * 3  # episodes per epoch with TINY


def params_equal(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_meta_train_returns_the_fitted_net(tiny_sampler):
    module = tiny_mann()
    before = [p.detach().clone() for p in module.parameters()]
    net = meta_train(module, tiny_sampler, n_episodes=2 * EPOCH, **TINY)
    assert isinstance(net, MetaNet)
    assert net.module_ is module  # trained in place
    assert len(net.history) == 2
    assert all(np.isfinite(row["train_loss"]) for row in net.history)
    assert any(not torch.equal(p, q) for p, q in zip(before, module.parameters()))


@pytest.mark.parametrize(
    "n_episodes, epochs", [(1, 1), (EPOCH, 1), (EPOCH + 1, 2), (3 * EPOCH, 3)]
)
def test_episodes_are_rounded_up_to_whole_epochs(tiny_sampler, n_episodes, epochs):
    net = meta_train(tiny_mann(), tiny_sampler, n_episodes=n_episodes, **TINY)
    assert net.max_epochs == epochs
    assert len(net.history) == epochs


def test_training_is_deterministic(tiny_sampler):
    a, b = tiny_mann(), tiny_mann()
    meta_train(a, tiny_sampler, n_episodes=2 * EPOCH, **TINY)
    meta_train(b, tiny_sampler, n_episodes=2 * EPOCH, **TINY)
    assert params_equal(a, b)


def test_train_loss_is_the_label_loss_of_the_seeded_episodes(tiny_sampler):
    """With lr=0 nothing moves: the logged loss is the mean of the batch losses."""
    module = tiny_mann()
    kw = {**TINY, "lr": 0.0, "seed": 7}
    net = meta_train(module, tiny_sampler, n_episodes=EPOCH, **kw)
    epoch = net.history[0]["epoch"]
    losses = []
    with torch.no_grad():
        for i in range(3):
            ep = tiny_sampler.sample(4, np.random.default_rng([7, epoch, i]))
            logits = module(torch.from_numpy(ep.x), torch.from_numpy(ep.label_in))
            losses.append(
                tiny_sampler.scheme.loss(logits, torch.from_numpy(ep.targets)).item()
            )
    assert_allclose(net.history[0]["train_loss"], np.mean(losses), rtol=1e-5)


# ---------------------------------------------------------------------------
# Checkpoints and resuming.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
@pytest.mark.parametrize("lr_schedule", ["constant", "cosine"])
def test_resumed_run_equals_an_uninterrupted_one(
    tiny_sampler, tmp_path, optimizer, lr_schedule
):
    kw = dict(
        n_episodes=4 * EPOCH, optimizer=optimizer, lr_schedule=lr_schedule, **TINY
    )
    straight = tiny_mann()
    ref = meta_train(straight, tiny_sampler, **kw)

    # stopped by the time budget after the first epoch, checkpointed, resumed
    first = meta_train(
        tiny_mann(), tiny_sampler, checkpoint_dir=tmp_path, max_time=0.0, **kw
    )
    assert len(first.history) == 1
    for name in ("params.pt", "optimizer.pt", "history.json"):
        assert (Path(tmp_path) / name).exists()
    resumed = tiny_mann()
    net = meta_train(resumed, tiny_sampler, checkpoint_dir=tmp_path, **kw)
    assert len(net.history) == 4
    assert params_equal(resumed, straight)
    assert_allclose(
        net.history[:, "train_loss"], ref.history[:, "train_loss"], rtol=1e-6
    )

    # a finished run is not trained further
    again = tiny_mann()
    net = meta_train(again, tiny_sampler, checkpoint_dir=tmp_path, **kw)
    assert len(net.history) == 4
    assert params_equal(again, straight)


def test_a_finished_run_can_be_extended(tiny_sampler, tmp_path):
    straight = tiny_mann()
    meta_train(straight, tiny_sampler, n_episodes=3 * EPOCH, **TINY)
    meta_train(
        tiny_mann(), tiny_sampler, n_episodes=EPOCH, checkpoint_dir=tmp_path, **TINY
    )
    extended = tiny_mann()
    net = meta_train(
        extended, tiny_sampler, n_episodes=3 * EPOCH, checkpoint_dir=tmp_path, **TINY
    )
    assert len(net.history) == 3
    assert params_equal(extended, straight)


# ---------------------------------------------------------------------------
# Options and callbacks.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(optimizer="sgd"), "optimizer"),
        (dict(optimizer="Adam"), "optimizer"),
        (dict(lr_schedule="linear"), "lr_schedule"),
        (dict(lr_schedule="step"), "lr_schedule"),
    ],
)
def test_bad_options_are_errors(tiny_sampler, kwargs, match):
    with pytest.raises(ValueError, match=match):
        meta_train(tiny_mann(), tiny_sampler, n_episodes=EPOCH, **TINY, **kwargs)


@pytest.mark.parametrize(
    "optimizer, cls, expected",
    [
        ("adam", torch.optim.Adam, {}),
        ("rmsprop", torch.optim.RMSprop, {"alpha": 0.95, "momentum": 0.9}),
    ],
)
def test_optimizers(tiny_sampler, optimizer, cls, expected):
    net = meta_train(
        tiny_mann(), tiny_sampler, n_episodes=EPOCH, optimizer=optimizer, **TINY
    )
    assert type(net.optimizer_) is cls
    group = net.optimizer_.param_groups[0]
    assert group["lr"] == 1e-2
    for key, value in expected.items():
        assert group[key] == value


def test_cosine_schedule_decays_the_learning_rate(tiny_sampler):
    net = meta_train(
        tiny_mann(), tiny_sampler, n_episodes=5 * EPOCH, lr_schedule="cosine", **TINY
    )
    lrs = net.history[:, "event_lr"]
    assert lrs[0] == pytest.approx(1e-2)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] > 0.05 * 1e-2


def test_time_budget_stops_after_a_whole_epoch(tiny_sampler):
    net = meta_train(
        tiny_mann(), tiny_sampler, n_episodes=5 * EPOCH, max_time=0.0, **TINY
    )
    assert net.max_epochs == 5
    assert len(net.history) == 1
    assert np.isfinite(net.history[-1, "train_loss"])


def test_time_budget_callback():
    cb = TimeBudget(max_seconds=3600.0)
    cb.on_train_begin(None)
    cb.on_epoch_end(None)  # within budget: nothing happens
    cb = TimeBudget(max_seconds=0.0)
    cb.on_train_begin(None)
    time.sleep(0.01)
    with pytest.raises(KeyboardInterrupt):
        cb.on_epoch_end(None)


def test_repeated_compiled_runs_share_one_compiled_forward(tiny_sampler):
    """A ``torch.compile`` per ``meta_train`` call was a new backend each time,
    so torch kept one more graph per call and, past its recompile limit (8),
    ran the network eagerly without saying so beyond a log line."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    def graphs():
        return len(_debug_get_cache_entry_list(MANN.forward.__code__))

    before = graphs()
    kw = {**TINY, "batch_size": 2, "batches_per_epoch": 1}
    for _ in range(3):
        module = tiny_mann()
        meta_train(module, tiny_sampler, n_episodes=2, compile=True, **kw)
        assert "forward" not in vars(module)  # the module is left as it was
    assert graphs() - before == 1


@pytest.fixture
def heldout():
    """Held-out episodes of 3 classes x 2 instances (later instances: NaN)."""
    rng = np.random.default_rng(1)
    return EpisodeSampler(
        rng.random((50, 8)).astype(np.float32),
        np.repeat(np.arange(5), 10),
        n_way=3,
        n_per_class=2,
    )


@pytest.mark.parametrize("eval_every, recorded", [(1, [1, 2, 3]), (2, [2, 3])])
def test_heldout_accuracy_is_recorded(tiny_sampler, heldout, eval_every, recorded):
    """Every ``eval_every`` epochs and always after the last one."""
    module = tiny_mann()
    net = meta_train(
        module,
        tiny_sampler,
        n_episodes=3 * EPOCH,
        eval_sampler=heldout,
        eval_episodes=20,
        eval_every=eval_every,
        **TINY,
    )
    for row in net.history:
        has = [k in row for k in ("heldout_acc_1", "heldout_acc_2", "heldout_acc_10")]
        assert all(has) if row["epoch"] in recorded else not any(has)
        if row["epoch"] in recorded:
            assert 0.0 <= row["heldout_acc_2"] <= 100.0
            assert np.isnan(row["heldout_acc_10"])  # episodes of 2 per class
    want = evaluate_network(
        module, heldout, n_episodes=20, seed=12345, instances=(1, 2)
    )
    got = [net.history[-1, f"heldout_acc_{k}"] for k in (1, 2)]
    assert_allclose(got, np.round(100 * np.array(want["accuracy"]), 2))


def test_epoch_table_lists_instances_in_order(tiny_sampler, heldout, capsys):
    """The printed held-out columns follow the instances: 1, 2, 3, 5, 10 (not 1, 10)."""
    capsys.readouterr()
    net = meta_train(
        tiny_mann(),
        tiny_sampler,
        n_episodes=EPOCH,
        eval_sampler=heldout,
        eval_episodes=4,
        **{**TINY, "verbose": 1},
    )
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if "heldout_acc_1" in line)
    header = lines[at].split()
    columns = [c for c in header if c.startswith("heldout_acc_")]
    assert columns == [f"heldout_acc_{k}" for k in (1, 2, 3, 5, 10)]
    # Each printed value sits under its own header (row: the line after the rule).
    row = dict(zip(header, lines[at + 2].split(), strict=False))
    for k in (1, 2):  # (episodes of 2 per class: later instances are NaN)
        assert float(row[f"heldout_acc_{k}"]) == pytest.approx(
            net.history[-1, f"heldout_acc_{k}"], abs=1e-4
        )


@pytest.mark.parametrize("clip_value, present", [(10.0, True), (None, False)])
def test_gradient_clipping_is_optional(tiny_sampler, clip_value, present):
    net = meta_train(
        tiny_mann(), tiny_sampler, n_episodes=EPOCH, clip_value=clip_value, **TINY
    )
    names = [name for name, _ in net.callbacks_]
    assert ("clip" in names) is present


def test_gradient_value_clipping_clips_every_element():
    p = torch.nn.Parameter(torch.zeros(4))
    q = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([-30.0, -1.0, 2.5, 12.0])
    q.grad = torch.tensor([100.0, -0.5])
    GradientValueClipping(2.0).on_grad_computed(None, [("p", p), ("q", q)])
    assert torch.equal(p.grad, torch.tensor([-2.0, -1.0, 2.0, 2.0]))
    assert torch.equal(q.grad, torch.tensor([2.0, -0.5]))


def test_episode_dataset_is_seeded_by_epoch_and_item(tiny_sampler):
    ds = EpisodeDataset(tiny_sampler, batch_size=5, n_batches=4, seed=3)
    assert len(ds) == 4
    ds.epoch = 2
    X, y = ds[1]
    ep = tiny_sampler.sample(5, np.random.default_rng([3, 2, 1]))
    assert torch.equal(X["x"], torch.from_numpy(ep.x))
    assert torch.equal(X["label_in"], torch.from_numpy(ep.label_in))
    assert torch.equal(y, torch.from_numpy(ep.targets))
    X2, _ = ds[1]
    assert torch.equal(X2["x"], X["x"])  # the same item again
    ds.epoch = 3
    assert not torch.equal(ds[1][0]["x"], X["x"])  # another epoch, other episodes
    assert not torch.equal(ds[2][0]["x"], ds[1][0]["x"])


def test_quiet_training_prints_nothing(tiny_sampler, capsys):
    meta_train(tiny_mann(), tiny_sampler, n_episodes=EPOCH, **TINY)
    out = capsys.readouterr()
    assert out.out == ""


def test_resume_with_a_lower_constant_lr_uses_it(tmp_path, prototypes_data):
    X, y = prototypes_data
    sampler = EpisodeSampler(X[y < 40], y[y < 40], n_way=3, n_per_class=2)

    def run(episodes, lr):
        torch.manual_seed(0)
        module = MANN(64, 3, 3, controller_size=8, n_slots=4, slot_size=4, n_reads=1)
        return meta_train(
            module,
            sampler,
            n_episodes=episodes,
            batch_size=2,
            batches_per_epoch=2,
            lr=lr,
            checkpoint_dir=tmp_path,
            progress_bar=False,
            verbose=0,
        )

    run(4, 1e-3)
    net = run(8, 1e-4)
    assert len(net.history) == 2
    assert all(g["lr"] == 1e-4 for g in net.optimizer_.param_groups)


# torch.compile imports code that uses torch's own deprecated torch.jit API.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")
@pytest.mark.parametrize("options", [None, {"cpp_wrapper": True}])
def test_compiled_training_matches_eager(tiny_sampler, capsys, monkeypatch, options):
    """compile=True trains the same network (up to rounding), then undoes itself;
    also with inductor's C++ wrapper (``compile_options``)."""
    import sk_mann._graph_passes as passes

    # Kernels from inductor's disk cache would skip the graph pass: build anew.
    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", False)
    merged = []
    real_merge = passes.merge_accumulated_products
    monkeypatch.setattr(
        passes,
        "merge_accumulated_products",
        lambda graph: merged.append(real_merge(graph)) or merged[-1],
    )
    eager, compiled = tiny_mann(), tiny_mann()
    meta_train(eager, tiny_sampler, n_episodes=2 * EPOCH, **TINY)
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    capsys.readouterr()
    loud = {**TINY, "verbose": 1}
    net = meta_train(
        compiled,
        tiny_sampler,
        n_episodes=2 * EPOCH,
        compile=True,
        compile_options=options,
        **loud,
    )
    # Said once, before the first (compiling) batch.
    assert capsys.readouterr().out.count("Compiling the training step") == 1
    assert counters["stats"]["unique_graphs"] > graphs  # it really compiled
    # Forward graph: nothing to merge; backward: the recurrent and head weights'
    # gradients, each summed over the steps in one product.
    assert merged == [0, 2]
    assert "forward" not in vars(compiled)  # the eager method is back
    assert not params_equal(compiled, tiny_mann())  # it did train
    for p, q in zip(eager.parameters(), compiled.parameters(), strict=True):
        assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-4, atol=1e-5)
    assert all(np.isfinite(row["train_loss"]) for row in net.history)


@pytest.mark.parametrize(
    "compile, options, message",
    [
        (True, ["cpp_wrapper"], "give a dict of torch.compile options"),
        (False, {"cpp_wrapper": True}, "needs compile=True"),
        (True, {"cpp_wraper": True}, "has no option 'cpp_wraper'"),
    ],
)
def test_bad_compile_options_are_refused_before_training(
    tiny_sampler, compile, options, message
):
    module = tiny_mann()
    with pytest.raises(ValueError, match=message):
        meta_train(
            module,
            tiny_sampler,
            n_episodes=EPOCH,
            compile=compile,
            compile_options=options,
            **TINY,
        )
    assert params_equal(module, tiny_mann()) and "forward" not in vars(module)


def test_compile_options_reach_torch_compile_once_per_setting(
    tiny_sampler, monkeypatch
):
    """Each distinct ``compile_options`` is one ``torch.compile`` (one backend),
    reused by later calls with the same options; the graph pass is always on."""
    import sk_mann.training as training

    made = []

    def spy_compile(fn, **kwargs):  # records the options, runs eagerly
        made.append(kwargs["options"])
        return fn

    monkeypatch.setattr(training.torch, "compile", spy_compile)
    monkeypatch.setattr(training, "_COMPILED", {})
    for options in (None, {"cpp_wrapper": True}, {"cpp_wrapper": True}, {}):
        meta_train(
            tiny_mann(),
            tiny_sampler,
            n_episodes=EPOCH,
            compile=True,
            compile_options=options,
            **TINY,
        )
    assert [sorted(m) for m in made] == [
        ["post_grad_custom_post_pass"],
        ["cpp_wrapper", "post_grad_custom_post_pass"],
    ]
    assert made[1]["cpp_wrapper"] is True


def test_compile_failure_is_a_clear_error(tiny_sampler, monkeypatch):
    """Without a working compiler, compile=True says so and leaves the module usable."""
    import sk_mann.training as training

    def broken_compile(fn, **kwargs):
        def run(*args, **kw):
            raise torch._dynamo.exc.BackendCompilerFailed(
                "inductor", RuntimeError("no C++ compiler"), None
            )

        return run

    monkeypatch.setattr(training.torch, "compile", broken_compile)
    monkeypatch.setattr(training, "_COMPILED", {})  # not the real one of a test before
    module = tiny_mann()
    with pytest.raises(RuntimeError, match="C\\+\\+ compiler"):
        meta_train(module, tiny_sampler, n_episodes=EPOCH, compile=True, **TINY)
    assert "forward" not in vars(module)  # the eager forward is back
    meta_train(module, tiny_sampler, n_episodes=EPOCH, **TINY)  # and trains


@pytest.mark.parametrize("fused", [True, False])
def test_adam_is_fused_where_torch_has_it(tiny_sampler, monkeypatch, fused):
    """One fused Adam kernel where available; the per-tensor loop elsewhere."""
    from sk_mann import training

    monkeypatch.setattr(training, "_fused_adam_available", lambda device: fused)
    net = meta_train(tiny_mann(), tiny_sampler, n_episodes=EPOCH, **TINY)
    assert isinstance(net.optimizer_, torch.optim.Adam)
    assert bool(net.optimizer_.param_groups[0]["fused"]) is fused
    rms = meta_train(
        tiny_mann(), tiny_sampler, n_episodes=EPOCH, optimizer="rmsprop", **TINY
    )
    assert isinstance(rms.optimizer_, torch.optim.RMSprop)


def test_fused_adam_is_detected_on_the_cpu():
    from sk_mann.training import _fused_adam_available

    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    assert _fused_adam_available("cpu") is ((major, minor) >= (2, 4))
    assert _fused_adam_available("no-such-device") is False
