"""Meta-training engine built on skorch.

An "epoch" here is a fixed number of optimiser steps, each on a freshly sampled
batch of episodes. Episodes are drawn from ``np.random.default_rng([seed, epoch,
batch])``, so a run resumed from a checkpoint sees the same episodes it would
have seen had it never stopped. The loss is summed over label groups and
averaged over every step of every episode.

Callbacks: skorch's ``ProgressBar``, ``LRScheduler`` and ``Checkpoint`` plus
:class:`GradientValueClipping` and :class:`HeldOutAccuracy` (per-instance
accuracy on held-out classes, logged in the history every few epochs).
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import Callback, Checkpoint, LRScheduler, PrintLog, ProgressBar

from .episodes import EpisodeSampler
from .metrics import evaluate_network

__all__ = [
    "EpisodeDataset",
    "GradientValueClipping",
    "HeldOutAccuracy",
    "MetaNet",
    "TimeBudget",
    "meta_train",
]


class EpisodeDataset(torch.utils.data.Dataset):
    """A dataset whose items are whole batches of freshly sampled episodes.

    Parameters
    ----------
    sampler : EpisodeSampler
    batch_size : int
        Episodes per item (per optimiser step).
    n_batches : int
        Items per epoch.
    seed : int
        Item ``i`` of epoch ``e`` is drawn with ``default_rng([seed, e, i])``.
    rank : int or None, default=None
        In data-parallel training (``meta_train(workers=n)``), the worker this
        dataset serves: its items are drawn with ``default_rng([seed, e, i,
        rank])``, so each worker has its own share of every batch.
    """

    def __init__(
        self,
        sampler: EpisodeSampler,
        batch_size: int,
        n_batches: int,
        seed: int,
        rank: int | None = None,
    ):
        self.sampler = sampler
        self.batch_size = batch_size
        self.n_batches = n_batches
        self.seed = seed
        self.rank = rank
        self.epoch = 0
        self._last: tuple[int, int] | None = None  # (epoch, item) last served
        self._ahead: tuple[tuple[int, int], Any] | None = None  # drawn early

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        where = (self.epoch, i)
        ahead, self._ahead = self._ahead, None
        self._last = where
        return (
            ahead[1] if ahead is not None and ahead[0] == where else self._draw(*where)
        )

    def _draw(self, epoch: int, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        key = [self.seed, epoch, i]
        rng = np.random.default_rng(key if self.rank is None else [*key, self.rank])
        ep = self.sampler.sample(self.batch_size, rng)
        X = {"x": torch.from_numpy(ep.x), "label_in": torch.from_numpy(ep.label_in)}
        return X, torch.from_numpy(ep.targets)

    def draw_ahead(self) -> None:
        """Draw the item that should follow the last one served, and keep it.

        Data-parallel ranks call this while they wait for their peers, so the
        sampling overlaps the wait. The item is the one its index would
        draw (same seed), and is used only if it is the one asked for next.
        """
        if self._last is None:
            return
        epoch, i = self._last
        where = (epoch, i + 1) if i + 1 < self.n_batches else (epoch + 1, 0)
        if self._ahead is None or self._ahead[0] != where:
            self._ahead = (where, self._draw(*where))


def _first_item(batch: list[Any]) -> Any:
    """Collate function: items already are batches."""
    return batch[0]


class MetaNet(NeuralNet):
    """skorch ``NeuralNet`` whose loss is the label scheme's per-step loss.

    Parameters
    ----------
    scheme : LabelScheme
        Decodes logits ``(batch, T, width)`` against targets ``(batch, T, n_groups)``.
    **kwargs
        Passed to :class:`skorch.NeuralNet`.
    """

    def __init__(self, *args: Any, scheme: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scheme = scheme

    def get_loss(self, y_pred, y_true, X=None, training=False):  # noqa: D102
        return self.scheme.loss(y_pred, y_true.to(y_pred.device))

    def train_step_single(self, batch, **fit_params):  # noqa: D102
        step = super().train_step_single(batch, **fit_params)
        exchange = getattr(self, "_exchange", None)
        if exchange is not None:  # data parallel: the whole batch's gradient
            params = [p for _, p in self.get_all_learnable_params()]
            step["loss"] = exchange.mean_gradients(params, step["loss"])
        return step


class _SetEpoch(Callback):
    """Tell the episode dataset which epoch it is serving (for resumable seeding)."""

    def on_epoch_begin(self, net, dataset_train=None, **kwargs):  # noqa: D102
        dataset_train.epoch = len(net.history)


class GradientValueClipping(Callback):
    """Clip every gradient element to ``[-clip_value, clip_value]`` (as the NTM paper).

    Parameters
    ----------
    clip_value : float, default=10.0
    """

    def __init__(self, clip_value: float = 10.0) -> None:
        self.clip_value = clip_value

    def on_grad_computed(self, net, named_parameters, **kwargs):  # noqa: D102
        torch.nn.utils.clip_grad_value_(
            [p for _, p in named_parameters], self.clip_value
        )


class TimeBudget(Callback):
    """Stop training cleanly (after a whole epoch) once ``max_seconds`` have passed.

    Parameters
    ----------
    max_seconds : float
    """

    def __init__(self, max_seconds: float) -> None:
        self.max_seconds = max_seconds

    def on_train_begin(self, net, **kwargs):  # noqa: D102
        self._start = time.monotonic()

    def expired(self) -> bool:
        """Whether ``max_seconds`` have passed since training began."""
        return time.monotonic() - self._start > self.max_seconds

    def on_epoch_end(self, net, **kwargs):  # noqa: D102
        if self.expired():
            # skorch ends fit quietly on KeyboardInterrupt, with the epoch saved.
            raise KeyboardInterrupt


class _StopTogether(Callback):
    """Data parallel: every rank ends after the epoch rank 0's budget ends.

    Rank 0 holds the :class:`TimeBudget` (or none); the ranks exchange its
    verdict at every epoch end, so they all run the same number of epochs.
    """

    def __init__(self, exchange: Any, budget: TimeBudget | None) -> None:
        self.exchange = exchange
        self.budget = budget

    def on_train_begin(self, net, **kwargs):  # noqa: D102
        if self.budget is not None:
            self.budget.on_train_begin(net)

    def on_epoch_end(self, net, **kwargs):  # noqa: D102
        stop = float(self.budget is not None and self.budget.expired())
        if self.exchange.mean(lambda row: row.fill_(stop), 1).item() > 0:
            raise KeyboardInterrupt


def _instance_order(key: str) -> tuple[str, int]:
    """``heldout_acc_10`` after ``heldout_acc_2``: numbered keys by their number."""
    stem, _, number = key.rpartition("_")
    return (stem, int(number)) if number.isdigit() else (key, -1)


class _EpochLog(PrintLog):
    """skorch's epoch table, held-out accuracy columns in instance order.

    skorch sorts columns by name, which puts ``heldout_acc_10`` between
    ``heldout_acc_1`` and ``heldout_acc_2``; here the accuracy columns keep
    their places in the table but follow the instances (1, 2, 3, 5, 10).
    """

    def _sorted_keys(self, keys):  # noqa: D102
        order = super()._sorted_keys(keys)
        spots = [i for i, k in enumerate(order) if k.startswith("heldout_acc_")]
        ranked = sorted((order[i] for i in spots), key=_instance_order)
        for i, key in zip(spots, ranked):
            order[i] = key
        return order


class HeldOutAccuracy(Callback):
    """Log per-instance accuracy on held-out classes every ``every`` epochs.

    Records ``heldout_acc_1``, ``heldout_acc_2``, ... (in %) and
    ``heldout_episodes`` in ``net.history``. The same ``n_episodes`` episodes
    (seeded by ``seed``) are used every time, so the curve is comparable.

    Parameters
    ----------
    sampler : EpisodeSampler
        Draws episodes from classes never used in meta-training.
    n_episodes : int, default=200
    every : int, default=1
    instances : tuple of int, default=(1, 2, 3, 5, 10)
    seed : int, default=12345
    """

    def __init__(
        self,
        sampler: EpisodeSampler,
        n_episodes: int = 200,
        every: int = 1,
        instances: tuple[int, ...] = (1, 2, 3, 5, 10),
        seed: int = 12345,
    ) -> None:
        self.sampler = sampler
        self.n_episodes = n_episodes
        self.every = every
        self.instances = instances
        self.seed = seed
        # Data parallel: the threads to evaluate on, while the workers wait
        # (rank 0 trains on one).
        self.threads: int | None = None

    def on_epoch_end(self, net, **kwargs):  # noqa: D102
        epoch = len(net.history)
        if epoch % self.every and epoch != net.max_epochs:
            return
        training_threads = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            res = evaluate_network(
                net.module_,
                self.sampler,
                n_episodes=self.n_episodes,
                seed=self.seed,
                instances=self.instances,
                device=net.device,
            )
        finally:
            torch.set_num_threads(training_threads)
        for k, acc in zip(res["instances"], res["accuracy"]):
            net.history.record(f"heldout_acc_{k}", round(100.0 * acc, 2))


def meta_train(
    module: torch.nn.Module,
    sampler: EpisodeSampler,
    *,
    n_episodes: int,
    batch_size: int = 16,
    batches_per_epoch: int = 100,
    optimizer: str = "adam",
    lr: float = 1e-3,
    lr_schedule: str = "constant",
    clip_value: float | None = 10.0,
    eval_sampler: EpisodeSampler | None = None,
    eval_episodes: int = 200,
    eval_every: int = 1,
    seed: int = 0,
    device: str = "cpu",
    checkpoint_dir: str | os.PathLike | None = None,
    max_time: float | None = None,
    progress_bar: bool = True,
    verbose: int = 1,
    compile: bool = False,
    compile_options: dict[str, Any] | None = None,
    workers: int = 1,
) -> MetaNet:
    """Meta-train ``module`` on episodes from ``sampler``; resumable.

    Parameters
    ----------
    module : torch.nn.Module
        A network of :mod:`sk_mann.model`, trained in place.
    sampler : EpisodeSampler
        Draws the training episodes.
    n_episodes : int
        Total episodes to train on, rounded up to whole epochs of
        ``batch_size * batches_per_epoch`` episodes.
    batch_size : int, default=16
    batches_per_epoch : int, default=100
    optimizer : {"adam", "rmsprop"}, default="adam"
        ``"rmsprop"`` uses decay 0.95 and momentum 0.9 (one reproduction's claim
        of the paper's setting).
    lr : float, default=1e-3
    lr_schedule : {"constant", "cosine"}, default="constant"
    clip_value : float or None, default=10.0
        Clip gradient elements to ``[-clip_value, clip_value]``.
    eval_sampler : EpisodeSampler or None
        Held-out classes for :class:`HeldOutAccuracy`.
    eval_episodes, eval_every : int
    seed : int, default=0
    device : str, default="cpu"
    checkpoint_dir : path or None
        Save parameters, optimiser and history here after every epoch; when it
        already holds a checkpoint, resume from it. With a constant schedule the
        ``lr`` given now replaces the checkpoint's, so a run can continue at a
        lower rate; a cosine schedule continues where it stopped.
    max_time : float or None
        Stop after the first epoch that ends past ``max_time`` seconds.
    progress_bar : bool, default=True
    verbose : int, default=1
        Print one history line per epoch when > 0.
    compile : bool, default=False
        Run the training forward pass (and so its backward) through
        ``torch.compile``, which fuses each episode's many small operations into
        a few generated kernels: 1.2-1.9x the episodes per second on a CPU
        (against the eager step with numba's memory kernels; 2-2.6x without
        numba), after a one-off compilation of a few minutes (2-6 on the 2-core
        machine of the benchmarks; needs a C++ compiler). Only training
        batches use it; evaluation stays eager.
    compile_options : dict or None, default=None
        With ``compile=True``, extra options of ``torch.compile`` (its
        ``options``: inductor settings). ``{"cpp_wrapper": True}`` makes the
        compiled step call its kernels from generated C++ instead of Python:
        5-8% more episodes per second at batch 16 on the benchmarks' 2-core
        CPU, for a first compilation 2-2.5 times as long (13-16 minutes
        there); once its kernels are in torch's disk cache, later runs start
        in seconds.
    workers : int, default=1
        Processes that share each batch (data parallel, CPU only, on
        platforms that fork: Linux, macOS). The calling process forks
        ``workers - 1`` copies of itself; each trains on ``batch_size /
        workers`` episodes of every batch on one thread, and the gradients
        are averaged before each step, so the update is the whole batch's.
        Each worker draws its own episodes (``EpisodeDataset(rank=...)``), so
        a run differs from a one-process run in which episodes it sees, not
        in what it computes from them. Small batches spend much of a
        step synchronising threads; processes of one thread avoid that, at
        the cost of a gradient exchange and of waiting for the slowest
        worker at every step. One worker per core; whether it pays on a
        given machine is for the speed benchmark to say
        (``benchmarks/speed.py``). With ``compile=True`` every worker
        compiles its own step (concurrently, from the same kernel cache).

    Returns
    -------
    MetaNet
        The fitted skorch net; ``net.history`` holds the loss and the
        held-out accuracies per epoch.
    """
    if optimizer not in ("adam", "rmsprop"):
        raise ValueError(f"optimizer={optimizer!r}: use 'adam' or 'rmsprop'.")
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule={lr_schedule!r}: use 'constant' or 'cosine'.")
    _check_workers(workers, batch_size, device)
    options = _check_compile_options(compile, compile_options)
    n_epochs = max(1, math.ceil(n_episodes / (batch_size * batches_per_epoch)))
    share = batch_size // workers  # episodes per worker and batch
    callbacks: list[tuple[str, Callback]] = [("set_epoch", _SetEpoch())]
    if clip_value is not None:
        callbacks.append(("clip", GradientValueClipping(clip_value)))
    if lr_schedule == "cosine":
        callbacks.append(
            (
                "lr",
                LRScheduler(
                    policy=torch.optim.lr_scheduler.CosineAnnealingLR,
                    T_max=n_epochs,
                    eta_min=lr * 0.05,
                ),
            )
        )
    every_rank = list(callbacks)  # the rest runs in rank 0 only
    if eval_sampler is not None:
        callbacks.append(
            ("heldout", HeldOutAccuracy(eval_sampler, eval_episodes, every=eval_every))
        )
    if progress_bar:
        callbacks.append(("progress", ProgressBar(batches_per_epoch=batches_per_epoch)))
    checkpoint = None
    if checkpoint_dir is not None:
        checkpoint = Checkpoint(
            dirname=str(checkpoint_dir),
            monitor=None,
            f_params="params.pt",
            f_optimizer="optimizer.pt",
            f_criterion=None,
            f_history="history.json",
            load_best=False,
        )
        callbacks.append(("checkpoint", checkpoint))
    # Last, so the epoch is checkpointed before stopping.
    budget = TimeBudget(max_time) if max_time is not None else None
    stop = None
    if workers > 1:  # the ranks stop together, when rank 0's budget says so
        stop = _StopTogether(None, budget)
        callbacks.append(("stop_together", stop))
    elif budget is not None:
        callbacks.append(("time_budget", budget))
    opt_kwargs: dict[str, Any] = {}
    if optimizer == "rmsprop":
        opt_kwargs = {"optimizer__alpha": 0.95, "optimizer__momentum": 0.9}
    elif _fused_adam_available(device):
        # One kernel for every parameter: 0.4 ms a step against 1.3-1.9 ms for
        # the default per-tensor loop (the paper's network, 2 CPU threads).
        opt_kwargs = {"optimizer__fused": True}
    net = MetaNet(
        module,
        scheme=sampler.scheme,
        criterion=torch.nn.Identity,  # unused: get_loss is overridden
        optimizer=torch.optim.Adam if optimizer == "adam" else torch.optim.RMSprop,
        lr=lr,
        max_epochs=n_epochs,
        batch_size=1,
        train_split=None,
        iterator_train__shuffle=False,
        iterator_train__collate_fn=_first_item,
        callbacks=callbacks,
        # PrintLog prints the epoch lines; only the per-batch bar is optional.
        callbacks__print_log=_EpochLog() if verbose else None,
        device=device,
        **opt_kwargs,
    )
    net.initialize()
    done = 0
    if checkpoint is not None and (Path(checkpoint_dir) / "params.pt").exists():
        net.load_params(checkpoint=checkpoint)
        if lr_schedule == "constant":  # the lr given now wins
            for group in net.optimizer_.param_groups:
                group["lr"] = lr
        done = len(net.history)
        if verbose:
            print(f"Resuming from {checkpoint_dir}: {done}/{n_epochs} epochs done.")
    remaining = n_epochs - done
    if remaining <= 0:
        return net

    def train(rank: int | None) -> None:
        restore = None
        if compile:
            announce = print if verbose and not rank else None
            restore = _compile_training_forward(
                module, share, announce=announce, options=options
            )
        dataset = EpisodeDataset(sampler, share, batches_per_epoch, seed, rank=rank)
        if net_exchange := getattr(net, "_exchange", None):
            net_exchange.idle = dataset.draw_ahead  # sample while peers finish
        try:
            net.partial_fit(dataset, None, epochs=remaining)
        finally:
            if restore is not None:
                restore()

    if workers == 1:
        train(None)
    else:
        _train_parallel(net, workers, every_rank, stop, train)
    return net


def _check_compile_options(compile: bool, options: Any) -> dict[str, Any]:
    """Validate ``meta_train``'s ``compile_options`` before anything is built."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValueError(
            f"compile_options={options!r}: give a dict of torch.compile options, "
            'e.g. {"cpp_wrapper": True}, or None.'
        )
    if options and not compile:
        raise ValueError(
            f"compile_options={options!r} needs compile=True (they are options "
            "of torch.compile)."
        )
    import torch._inductor.config as inductor_config

    known = set(inductor_config.get_config_copy())
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"compile_options: torch.compile (inductor) has no option "
            f"{', '.join(map(repr, unknown))}; see torch._inductor.config for "
            "the names."
        )
    return dict(options)


def _check_workers(workers: Any, batch_size: int, device: str) -> None:
    """Validate ``meta_train``'s ``workers`` before anything is built."""
    from ._parallel import fork_available

    if (
        not isinstance(workers, numbers.Integral)
        or isinstance(workers, bool)
        or workers < 1
    ):
        raise ValueError(
            f"workers={workers!r}: give a whole number >= 1 (1 trains in this process)."
        )
    if workers == 1:
        return
    if batch_size % workers:
        raise ValueError(
            f"batch_size={batch_size} is not a multiple of workers={workers}: each "
            "worker trains on an equal share of every batch. Use a batch size "
            f"such as {workers * max(1, round(batch_size / workers))}, or another "
            "number of workers."
        )
    if torch.device(device).type != "cpu":
        raise ValueError(
            f"workers={workers} with device={device!r}: worker processes are for "
            "CPU training; on an accelerator train in one process (workers=1)."
        )
    if not fork_available():
        raise ValueError(
            f"workers={workers}: worker processes are started by fork, which this "
            "platform lacks (Windows); train with workers=1."
        )


def _train_parallel(
    net: MetaNet,
    workers: int,
    every_rank: list[tuple[str, Callback]],
    stop: _StopTogether,
    train: Callable[[int | None], None],
) -> None:
    """Run ``train(rank)`` in this process (rank 0) and in forked workers."""
    from ._parallel import Exchange, run_parallel

    params = [p for _, p in net.get_all_learnable_params()]
    size = sum(p.numel() for p in params) + 1  # the gradients and the loss
    exchange = Exchange(workers, size, params[0].dtype)
    stop.exchange = exchange

    def worker(rank: int) -> Callable[[], None]:
        def run() -> None:
            # Workers print nothing, evaluate nothing, save nothing.
            net.callbacks = [*every_rank, ("stop", _StopTogether(exchange, None))]
            net.callbacks__print_log = None
            net.initialize_callbacks()
            train(rank)

        return run

    heldout = dict(net.callbacks_).get("heldout")
    if heldout is not None:
        heldout.threads = torch.get_num_threads()
    net._exchange = exchange
    try:
        run_parallel(exchange, lambda: train(0), worker)
    finally:
        net._exchange = None  # pipes do not pickle; the net may be
        stop.exchange = None
        if heldout is not None:
            heldout.threads = None


def _fused_adam_available(device: str) -> bool:
    """Whether this torch has a fused Adam for ``device`` (CPU: torch >= 2.4)."""
    try:
        param = torch.zeros(1, device=device, requires_grad=True)
        torch.optim.Adam([param], fused=True)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


_COMPILED: dict[tuple[Callable[..., Any], str], Callable[..., Any]] = {}


def _compiled_forward(
    forward: Callable[..., Any], options: dict[str, Any] | None = None
) -> Callable[..., Any]:
    """``torch.compile`` of a network class's ``forward``, made once per class.

    One compiled function serves every call of ``meta_train`` with the same
    ``options`` (extra ``torch.compile`` options): torch keeps its graphs by
    backend, and a new ``torch.compile`` per call is a new backend, so after
    8 calls in one process (its recompile limit) torch would silently run the
    network eagerly.
    """
    options = options or {}
    key = (forward, repr(sorted(options.items())))
    fn = _COMPILED.get(key)
    if fn is None:
        from ._graph_passes import MergeAccumulatedProducts

        # The pass sums each weight gradient over the episode's steps in one
        # product instead of a chain of small ones (see _graph_passes).
        fn = _COMPILED[key] = torch.compile(
            forward,
            dynamic=False,
            options={
                **options,
                "post_grad_custom_post_pass": MergeAccumulatedProducts(),
            },
        )
    return fn


def _compile_training_forward(
    module: torch.nn.Module,
    batch_size: int,
    announce: Callable[[str], Any] | None = None,
    options: dict[str, Any] | None = None,
) -> Callable[[], None]:
    """Route ``module``'s training batches through ``torch.compile``; returns undo.

    Other calls (evaluation, other batch sizes) keep the eager forward, so the
    one compiled graph (static shapes) is never recompiled. ``announce``, if
    given, is called with one line before the first (compiling) batch, which
    can take minutes with nothing else to show.
    """
    # Imported here: torch._dynamo takes most of a second to import.
    from torch._dynamo.exc import BackendCompilerFailed

    eager = module.forward
    compiled = functools.partial(
        _compiled_forward(type(module).forward, options), module
    )
    started: list[bool] = []

    def forward(*args: Any, **kwargs: Any) -> Any:
        x = args[0] if args else next(iter(kwargs.values()))
        if module.training and torch.is_grad_enabled() and x.shape[0] == batch_size:
            if announce is not None and not started:
                announce(
                    "Compiling the training step (torch.compile): a few minutes "
                    "the first time, seconds once its kernels are cached on disk."
                )
                started.append(True)
            try:
                return compiled(*args, **kwargs)
            except BackendCompilerFailed as exc:
                raise RuntimeError(
                    "compile=True: torch.compile could not build the training "
                    f"kernels ({str(exc).splitlines()[0]}). On a CPU it needs a "
                    "working C++ compiler (e.g. gcc); install one, or train with "
                    "compile=False."
                ) from exc
        return eager(*args, **kwargs)

    module.forward = forward  # an instance attribute shadows the method

    def restore() -> None:
        del module.forward

    return restore
