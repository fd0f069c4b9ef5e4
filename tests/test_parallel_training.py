"""Data-parallel meta-training: ``meta_train(workers=n)`` (forked workers).

The reference is a plain loop in this process: each batch is the workers'
shares concatenated, one loss over it, the same clipping and optimiser. The
workers' averaged gradient must give the same update.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch
from conftest import tiny_mann
from numpy.testing import assert_allclose

from sk_mann import _parallel
from sk_mann.training import EpisodeDataset, meta_train

pytestmark = pytest.mark.skipif(
    not _parallel.fork_available(), reason="workers need fork (Linux, macOS)"
)

QUIET = dict(progress_bar=False, verbose=0)
BATCH, BATCHES, LR, SEED = 4, 3, 1e-2, 5


def train(module, sampler, epochs=1, **kwargs):
    """``meta_train`` with this file's small settings."""
    kwargs = {"workers": 2, **QUIET, **kwargs}
    return meta_train(
        module,
        sampler,
        n_episodes=epochs * BATCH * BATCHES,
        batch_size=BATCH,
        batches_per_epoch=BATCHES,
        lr=LR,
        seed=SEED,
        **kwargs,
    )


def reference_run(sampler, workers, epochs, clip=10.0):
    """One process, each batch = the workers' shares of it, concatenated.

    skorch numbers epochs from 1 (``EpisodeDataset.epoch``).
    """
    module = tiny_mann()
    opt = torch.optim.Adam(module.parameters(), lr=LR)
    share = BATCH // workers
    losses = []
    for epoch in range(epochs):
        for i in range(BATCHES):
            eps = [
                sampler.sample(share, np.random.default_rng([SEED, epoch + 1, i, r]))
                for r in range(workers)
            ]
            x = torch.from_numpy(np.concatenate([e.x for e in eps]))
            lab = torch.from_numpy(np.concatenate([e.label_in for e in eps]))
            tg = torch.from_numpy(np.concatenate([e.targets for e in eps]))
            opt.zero_grad()
            loss = sampler.scheme.loss(module(x, lab), tg)
            loss.backward()
            torch.nn.utils.clip_grad_value_(module.parameters(), clip)
            opt.step()
            losses.append(loss.item())
    return module, np.array(losses).reshape(epochs, BATCHES).mean(axis=1)


@pytest.mark.parametrize("workers", [2, 4])
def test_workers_take_the_whole_batchs_step(tiny_sampler, workers):
    module = tiny_mann()
    net = train(module, tiny_sampler, epochs=2, workers=workers)
    ref, ref_losses = reference_run(tiny_sampler, workers, epochs=2)
    assert net.module_ is module
    assert len(net.history) == 2
    # the logged loss is the whole batch's (the mean of the workers' losses)
    assert_allclose(net.history[:, "train_loss"], ref_losses, rtol=1e-5)
    for p, q in zip(module.parameters(), ref.parameters()):
        assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_workers_leave_no_process_and_restore_threads(tiny_sampler):
    import multiprocessing

    threads = torch.get_num_threads()
    train(tiny_mann(), tiny_sampler)
    assert torch.get_num_threads() == threads
    workers = [
        p for p in multiprocessing.active_children() if p.name.startswith("sk_mann")
    ]  # other tests' process pools (joblib's) may still be around
    assert workers == []


def test_time_budget_stops_every_worker_after_the_same_epoch(tiny_sampler, tmp_path):
    net = train(
        tiny_mann(), tiny_sampler, epochs=5, max_time=0.0, checkpoint_dir=tmp_path
    )
    assert len(net.history) == 1  # and the run returned: no worker still waiting
    assert (tmp_path / "params.pt").exists()


def test_heldout_checks_run_in_rank_0_on_all_its_threads(tiny_sampler, monkeypatch):
    """Workers wait during the checks, so rank 0 evaluates on the threads it
    was given (it trains on one), and the result is the trained network's."""
    import sk_mann.training

    seen = []
    real = sk_mann.training.evaluate_network

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(sk_mann.training, "evaluate_network", spy)
    torch.set_num_threads(2)  # the autouse fixture sets 1 again for the next test
    module = tiny_mann()
    net = train(module, tiny_sampler, epochs=2, eval_sampler=tiny_sampler)
    assert seen == [2, 2]
    assert torch.get_num_threads() == 2
    want = real(
        module, tiny_sampler, n_episodes=200, seed=12345, instances=(1, 2, 3, 5, 10)
    )
    got = [net.history[-1, f"heldout_acc_{k}"] for k in want["instances"]]
    assert_allclose(got, np.round(100 * np.array(want["accuracy"]), 2))


def _fail_in_worker_1(monkeypatch, action):
    """Make worker 1's second batch call ``action()`` (fork copies the patch)."""
    original = EpisodeDataset.__getitem__

    def patched(self, i):
        if self.rank == 1 and i == 1:
            action()
        return original(self, i)

    monkeypatch.setattr(EpisodeDataset, "__getitem__", patched)


def test_a_workers_error_is_raised_here(tiny_sampler, monkeypatch):
    def boom():
        raise ArithmeticError("boom in the worker")

    _fail_in_worker_1(monkeypatch, boom)
    with pytest.raises(RuntimeError, match="worker 1 failed(.|\n)*boom in the worker"):
        train(tiny_mann(), tiny_sampler)


def test_a_killed_worker_is_an_error_not_a_hang(tiny_sampler, monkeypatch):
    _fail_in_worker_1(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGKILL))
    with pytest.raises(RuntimeError, match=r"worker 1 exited \(exit code -9\)"):
        train(tiny_mann(), tiny_sampler)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(workers=0), "workers=0"),
        (dict(workers=1.5), "whole number"),
        (dict(workers=True), "whole number"),
        (dict(workers=3), "batch_size=4 is not a multiple of workers=3"),
        (dict(workers=2, device="cuda"), "CPU"),
    ],
)
def test_bad_workers_are_errors(tiny_sampler, kwargs, match):
    module = tiny_mann()
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(ValueError, match=match):
        train(module, tiny_sampler, **kwargs)
    assert all(torch.equal(p, q) for p, q in zip(before, module.parameters()))


def test_exchange_mean_is_the_rows_mean():
    """A rank's round: its row written by ``fill``, the mean of all rows back
    (here rank 0 alone in this process: no peers bound, no signalling)."""
    ex = _parallel.Exchange(2, 5, torch.float32)
    ex._buffers[0, 1].copy_(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))  # rank 1's
    ex.rank = 0
    out = ex.mean(lambda row: row.copy_(torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])), 5)
    assert_allclose(out.numpy(), [2.0, 2.0, 2.0, 2.0, 2.0])
    # the next round uses the other buffer (see Exchange: one signal per round)
    out = ex.mean(lambda row: row.fill_(4.0), 3)
    assert_allclose(out.numpy(), [2.0, 2.0, 2.0])
    ex.close()


COMPILED_WORKERS = """
import sys
import numpy as np, torch
sys.path.insert(0, {tests!r})
import torch._inductor.config
torch._inductor.config.compile_threads = 2  # the parent compiles with a pool
from conftest import tiny_mann
from sk_mann.episodes import EpisodeSampler
from sk_mann.training import meta_train
import time
from torch._inductor.async_compile import AsyncCompile
pool = AsyncCompile.pool()  # what a compilation of many kernels leaves behind:
for f in [pool.submit(time.sleep, 0.3) for _ in range(2)]:  # every thread started
    f.result()
rng = np.random.default_rng(0)
X = rng.random((100, 8)).astype(np.float32)
sampler = EpisodeSampler(X, np.repeat(np.arange(10), 10), n_way=3, n_per_class=2)
net = meta_train(tiny_mann(), sampler, n_episodes=8, batch_size=4,
                 batches_per_epoch=2, progress_bar=False, verbose=0,
                 compile=True, workers=2)
print("epochs", len(net.history))
"""


def test_compiled_workers_after_the_parent_compiled(tmp_path):
    """Forked workers inherit torch's compile pools without their threads; a
    worker that compiles must not wait on them (it did: a hang). Run in a
    fresh interpreter with a time limit, so a regression fails, not hangs."""
    import subprocess
    import sys
    from pathlib import Path

    script = COMPILED_WORKERS.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("epochs 1")
