"""Speed of meta-training and streaming, beside the kNN baselines.

    python benchmarks/speed.py [--threads 2] [--stream-samples 1000000]

Measures, in one run, on the paper's configuration (LSTM 200, memory 128x40,
4 heads, 5-way one-hot, 50-step episodes):

- meta-training episodes/s at several batch sizes, eager and with
  ``meta_train(compile=True)`` (``torch.compile``; compilation time reported
  apart), and the achieved GFLOP/s
  (FLOPs counted by ``torch.utils.flop_counter``) against a 2048x2048 float32
  matmul peak measured in the same run;
- ``predict_one`` + ``learn_one`` latency (median, p99) through the public River
  API with 400-feature dicts, for the MANN, River's ``KNNClassifier`` and
  scikit-learn's ``KNeighborsClassifier`` on the same stream;
- batch ``predict`` throughput (rows/s);
- peak RSS of a meta-training process, and the size of one stream's fast state
  after up to ``--stream-samples`` samples.

Writes ``benchmarks/results/speed.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from _common import (
    RESULTS,
    machine_line,
    metadata,
    produced_by,
    pyplot,
    write_json,
)

from sk_mann import MANNOneShotClassifier, _jit_step, _memory_op
from sk_mann.model import MANN
from sk_mann.training import _compile_training_forward

PAPER = {"controller_size": 200, "n_slots": 128, "slot_size": 40, "n_reads": 4}
N_FEATURES, N_WAY, T = 400, 5, 50


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n float32 matmul."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _train_iteration(module, opt, x, label_in, targets):
    logits = module(x, label_in)
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, N_WAY), targets.reshape(-1)
    )
    opt.zero_grad()
    loss.backward()
    opt.step()


def flops_per_episode() -> float:
    """FLOPs of forward + backward of one episode (matmul-like ops).

    Counted on the tensor operations: torch's counter does not see inside the
    eager memory step's numba kernels, which do the same products.
    """
    from torch.utils.flop_counter import FlopCounterMode

    module = MANN(N_FEATURES, N_WAY, N_WAY, **PAPER)
    x, lab, tg = (
        torch.rand(4, T, N_FEATURES),
        torch.zeros(4, T, N_WAY),
        torch.zeros(4, T, dtype=torch.long),
    )
    kernels, _memory_op.ENABLED = _memory_op.ENABLED, False
    try:
        with FlopCounterMode(display=False) as counter:
            logits = module(x, lab)
            torch.nn.functional.cross_entropy(
                logits.reshape(-1, N_WAY), tg.reshape(-1)
            ).backward()
    finally:
        _memory_op.ENABLED = kernels
    return counter.get_total_flops() / 4


def _training_setup(bs: int, compile: bool, options: dict | None = None) -> tuple:
    torch.manual_seed(0)
    module = MANN(N_FEATURES, N_WAY, N_WAY, **PAPER)
    if compile:
        _compile_training_forward(module, bs, options=options)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    x = torch.rand(bs, T, N_FEATURES)
    lab = torch.zeros(bs, T, N_WAY)
    tg = torch.randint(0, N_WAY, (bs, T))
    t0 = time.perf_counter()
    for _ in range(2):  # warm-up, and the compilation when compiled
        _train_iteration(module, opt, x, lab, tg)
    return (module, opt, x, lab, tg), time.perf_counter() - t0


def _timed_iteration(args: tuple) -> float:
    t0 = time.perf_counter()
    _train_iteration(*args)
    return time.perf_counter() - t0


def train_throughput(batch_sizes, iters: int, compile: bool = False) -> list[dict]:
    """Training episodes/s per batch size (median step time over ``iters``).

    With ``compile``, an eager network is timed in alternation with the
    compiled one (step for step), so that the speed-up is measured under the
    same machine load.
    """
    out = []
    for bs in batch_sizes:
        run, warmup = _training_setup(bs, compile)
        eager = _training_setup(bs, False)[0] if compile else None
        times, eager_times = [], []
        for _ in range(iters):
            times.append(_timed_iteration(run))
            if eager is not None:
                eager_times.append(_timed_iteration(eager))
        med = float(np.median(times))
        row = {
            "batch_size": bs,
            "compiled": compile,
            "seconds_per_step": med,
            "episodes_per_s": bs / med,
            "warmup_seconds": warmup,
        }
        if eager is not None:
            row["eager_episodes_per_s_alternated"] = bs / float(np.median(eager_times))
        out.append(row)
        tag = " (compiled)" if compile else ""
        print(
            f"train batch {bs}{tag}: {bs / med:.0f} episodes/s, warm-up {warmup:.0f} s"
            + (
                f", eager alternated {row['eager_episodes_per_s_alternated']:.0f}"
                if eager is not None
                else ""
            )
        )
    return out


def cpp_wrapper_training(bs: int, iters: int) -> dict:
    """The compiled step with inductor's C++ wrapper against the default one.

    ``meta_train(compile=True, compile_options={"cpp_wrapper": True})``: the
    compiled graph calls its kernels from generated C++ instead of Python.
    Three networks (C++ wrapper, Python wrapper, eager) are timed step for
    step in turn, so the ratios are read under the same machine load; each
    compiled one's warm-up is its compilation (or its kernels' load where an
    earlier part of the run compiled them into the same cache).
    """
    settings = {
        "cpp": (True, {"cpp_wrapper": True}),
        "python": (True, None),
        "eager": (False, None),
    }
    runs, warmup, times = {}, {}, {}
    for name, (compile, options) in settings.items():
        runs[name], warmup[name] = _training_setup(bs, compile, options)
        times[name] = []
    for _ in range(iters):
        for name, run in runs.items():
            times[name].append(_timed_iteration(run))
    rate = {name: bs / float(np.median(t)) for name, t in times.items()}
    out = {"batch_size": bs, "steps_timed": iters}
    for name in settings:
        out[f"{name}_episodes_per_s"] = rate[name]
    out["cpp_warmup_seconds"] = warmup["cpp"]
    out["python_warmup_seconds"] = warmup["python"]
    out["ratio"] = rate["cpp"] / rate["python"]
    print(
        f"train batch {bs} compiled, C++ wrapper: {rate['cpp']:.0f} episodes/s "
        f"(warm-up {warmup['cpp']:.0f} s), Python wrapper {rate['python']:.0f} "
        f"(warm-up {warmup['python']:.0f} s), eager {rate['eager']:.0f}, "
        f"alternated: {out['ratio']:.3f}x"
    )
    return out


def _synthetic_sampler(n_classes: int = 200, per_class: int = 20):
    """Episodes of the paper's shape over random 400-d classes (cheap to draw)."""
    from sk_mann.episodes import EpisodeSampler

    rng = np.random.default_rng(0)
    X = rng.random((n_classes * per_class, N_FEATURES), dtype=np.float32)
    y = np.repeat(np.arange(n_classes), per_class)
    return EpisodeSampler(X, y, n_way=N_WAY, n_per_class=T // N_WAY)


def parallel_training(
    bs: int,
    workers: int,
    epochs: int = 5,
    reps: int = 4,
    batches: int = 25,
    compile: bool = True,
    compile_options: dict | None = None,
) -> dict:
    """Compiled ``meta_train`` episodes/s: one process on every thread against
    ``workers`` forked processes of one thread (``meta_train(workers=...)``).

    The two alternate in blocks of ``epochs`` epochs of ``batches`` steps (each
    block a fresh network), so both are read under the same machine load. The
    first epoch of each block (compilation or cache load, fork) is left out;
    the rest are skorch's epoch durations (training steps and sampling).
    ``compile_options`` go to ``meta_train`` for both settings (e.g. inductor's
    C++ wrapper).
    """
    from sk_mann.training import meta_train

    sampler = _synthetic_sampler()
    durations: dict[int, list[float]] = {1: [], workers: []}
    first: dict[int, list[float]] = {1: [], workers: []}
    for rep in range(reps):
        for w in (1, workers) if rep % 2 == 0 else (workers, 1):
            torch.manual_seed(rep)
            module = MANN(N_FEATURES, N_WAY, N_WAY, **PAPER)
            net = meta_train(
                module,
                sampler,
                n_episodes=bs * batches * epochs,
                batch_size=bs,
                batches_per_epoch=batches,
                seed=rep,
                progress_bar=False,
                verbose=0,
                compile=compile,
                compile_options=compile_options,
                workers=w,
            )
            dur = [h["dur"] for h in net.history]
            first[w].append(dur[0])
            durations[w] += dur[1:]
    out = {"batch_size": bs, "workers": workers, "epochs_timed": {}}
    if compile_options:
        out["compile_options"] = compile_options
    for w, d in durations.items():
        key = "one_process" if w == 1 else "workers"
        out[key + "_episodes_per_s"] = bs * batches / float(np.median(d))
        out[key + "_first_epoch_s"] = first[w]
        out["epochs_timed"][key] = len(d)
    out["ratio"] = out["workers_episodes_per_s"] / out["one_process_episodes_per_s"]
    print(
        f"meta_train batch {bs}{' compiled' if compile else ''}: one process "
        f"{out['one_process_episodes_per_s']:.0f} episodes/s, {workers} workers "
        f"{out['workers_episodes_per_s']:.0f} ({out['ratio']:.2f}x, alternated)"
    )
    return out


def _eager_memory_steps(iters: int) -> dict:
    """Eager batch-16 training with each memory step, alternated step for step:
    the reference LRUA step, the fused one, and (with numba) the kernels."""
    import sk_mann.model as model_mod
    from sk_mann import memory as mem

    fused, kernels = model_mod.mem.lrua_step_fused, _memory_op.ENABLED
    variants = {"reference lrua_step": (mem.lrua_step, False)}
    variants["lrua_step_fused"] = (fused, False)
    if _memory_op.AVAILABLE:
        variants["memory step kernels (numba, sk_mann._memory_op)"] = (fused, True)

    def use(step, enabled):
        model_mod.mem.lrua_step_fused = step
        _memory_op.ENABLED = enabled

    setups, times = {}, {name: [] for name in variants}
    try:
        for name, variant in variants.items():
            use(*variant)
            setups[name] = _training_setup(16, False)[0]
        for _ in range(iters):
            for name, variant in variants.items():
                use(*variant)
                times[name].append(_timed_iteration(setups[name]))
    finally:
        use(fused, kernels)
    out = {}
    for name, ts in times.items():
        med = float(np.median(ts))
        out[f"train batch 16, {name}"] = {
            "batch_size": 16,
            "seconds_per_step": med,
            "episodes_per_s": 16 / med,
            "alternated_steps": iters,
        }
        print(f"train batch 16, {name}: {16 / med:.0f} episodes/s (alternated)")
    return out


def optimisations(iters: int) -> dict:
    """Before/after of each optimisation, measured in this run.

    "Before" swaps the straightforward code back in: the reference LRUA step
    built from one function per equation (and the tensor operations instead
    of the eager training step's memory kernels), and the torch step in the
    estimator's streaming path.
    """
    out = _eager_memory_steps(2 * iters)
    xs, ys, _ = _stream(1000)

    def forget(m):  # drop the NumPy engine's memos: predict and learn both step
        m._numpy_.memo = None
        m._numpy_.row_memo = ((), None)

    variants = {
        "torch step (reference)": ("torch", lambda m, x: m.predict_one(x)),
        "NumPy one-row step, learn_one recomputes": (
            "numpy",
            lambda m, x: (m.predict_one(x), forget(m)),
        ),
        "NumPy one-row step, learn_one reuses predict_one's step": (
            "numpy",
            lambda m, x: m.predict_one(x),
        ),
    }
    if _jit_step.AVAILABLE:
        variants["compiled (numba) step, 1 thread"] = (
            "jit",
            lambda m, x: m.predict_one(x),
        )
        variants["compiled (numba) step, 2 threads (n_jobs=2)"] = (
            "jit2",
            lambda m, x: m.predict_one(x),
        )
    for name, (engine, predict) in variants.items():
        mann = MANNOneShotClassifier(
            **PAPER, seed=0, n_jobs=2 if engine == "jit2" else None
        )
        mann.learn_one(xs[0], ys[0])
        if engine == "torch":
            mann._numpy_ = None
        elif engine == "numpy":
            mann._numpy_.jit = False
        out[f"stream, {name}"] = _latency(
            mann, xs[1:], ys[1:], lambda m, x, y: m.learn_one(x, y), predict
        )
        print(f"stream {name}: {out[f'stream, {name}']['median_us']:.0f} us")
    return out


def weight_traffic(repeats: int = 2000) -> dict:
    """What one streamed sample's weight reads cost, in cache and out of it.

    A step multiplies vectors by the controller's input, recurrent and head
    matrices; that is the floor of ``predict_one`` + ``learn_one`` once the
    step is computed only once per sample.
    """
    from sk_mann._numpy_step import NumpyMANN

    fast = NumpyMANN(MANN(N_FEATURES, N_WAY, N_WAY, **PAPER))
    rng = np.random.default_rng(0)
    x = rng.random(N_FEATURES, dtype=np.float32)
    rec = rng.random(fast.w_rec_t.shape[0], dtype=np.float32)
    h = rng.random(fast.w_head_t.shape[0], dtype=np.float32)
    mats = (fast.w_x_t, fast.w_rec_t, fast.w_head_t)
    n_bytes = sum(w.nbytes for w in mats)

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn()
            times.append((time.perf_counter() - t0) / repeats)
        return min(times) * 1e6

    alone = sum(
        best(lambda v=v, w=w: v @ w) for v, w in zip((x, rec, h), mats, strict=True)
    )
    together = best(lambda: (x @ mats[0], rec @ mats[1], h @ mats[2]))
    out = {
        "weight_bytes": n_bytes,
        "each_alone_in_cache_us": alone,
        "in_sequence_us": together,
        "in_sequence_gb_per_s": n_bytes / together / 1e3,
    }
    print(
        f"weights {n_bytes / 1e6:.2f} MB: {alone:.0f} us when each stays in cache, "
        f"{together:.0f} us in sequence ({out['in_sequence_gb_per_s']:.0f} GB/s)"
    )
    return out


def _stream(n: int, seed: int = 0, dicts: bool = True):
    """A 400-feature dict stream of 5 classes (prototypes + noise)."""
    rng = np.random.default_rng(seed)
    protos = rng.random((N_WAY, N_FEATURES))
    y = rng.integers(0, N_WAY, n)
    X = protos[y] + 0.1 * rng.standard_normal((n, N_FEATURES))
    if not dicts:
        return None, y.tolist(), X
    return [dict(enumerate(row)) for row in X.tolist()], y.tolist(), X


def _latency(model, xs, ys, learn, predict, raw: bool = False):
    """predict + learn per sample: median and p99 (or the raw ns with ``raw``)."""
    times = np.empty(len(xs))
    for i, (x, y) in enumerate(zip(xs, ys)):
        t0 = time.perf_counter_ns()
        predict(model, x)
        learn(model, x, y)
        times[i] = time.perf_counter_ns() - t0
    if raw:
        return times
    return {
        "median_us": float(np.median(times) / 1e3),
        "p99_us": float(np.percentile(times, 99) / 1e3),
        "samples": len(xs),
    }


class _SklearnStream:
    """scikit-learn KNeighborsClassifier on a stream: refit on all seen samples."""

    def __init__(self):
        from sklearn.neighbors import KNeighborsClassifier

        self.knn = KNeighborsClassifier(n_neighbors=1)
        self.X, self.y = [], []

    def predict_one(self, x):
        if not self.y:
            return None
        return self.knn.predict(np.fromiter(x.values(), float, len(x))[None, :])[0]

    def learn_one(self, x, y):
        self.X.append(np.fromiter(x.values(), float, len(x)))
        self.y.append(y)
        self.knn.fit(np.stack(self.X), self.y)


class StreamingRounds:
    """Public-API latency of the MANN, in rounds spread over the whole run.

    The machine is shared: a slow phase of the host can double every latency
    for minutes. So the MANN's rounds are not run back to back: ``main`` runs
    one between each part of the benchmark (minutes apart). Each round streams
    ``n`` new samples through both ``n_jobs`` settings in alternating blocks of
    200 (so that both are read under the same load); the round with the lowest
    median is reported, with every round's median alongside, as ``timeit``
    reports the best of its repeats. The models keep streaming from round to
    round (their memory is never reset). Each round also times batch
    ``predict`` on 20,000 rows once per setting (default ``n_jobs``,
    ``n_jobs=2``, and NumPy's passes instead of the compiled ones), from the
    default model's committed state; the best round of each is reported.
    """

    def __init__(self, n: int, rounds: int):
        self.n, self.rounds = n, rounds
        self.xs, self.ys, _ = _stream(rounds * n + 1000)
        self.settings = (None, 2) if _jit_step.AVAILABLE else (None,)
        self.models = {}
        for n_jobs in self.settings:
            self.models[n_jobs] = MANNOneShotClassifier(**PAPER, seed=0, n_jobs=n_jobs)
            self.models[n_jobs].learn_one(self.xs[0], self.ys[0])
        self.per_round = {n_jobs: [] for n_jobs in self.settings}
        self.done = 0
        self.rows = _stream(20000, seed=1, dicts=False)[2]
        # "numpy": the NumPy passes instead of the compiled ones (before/after).
        self.batch_settings = [None, 2] + (["numpy"] if _jit_step.AVAILABLE else [])
        self.batch_rates = {setting: [] for setting in self.batch_settings}
        self.models[None].predict(self.rows[:2048])  # compiles the batch kernels

    def round(self) -> None:
        """Stream the next ``n`` samples (no-op once every round has run)."""
        if self.done == self.rounds:
            return
        lo, hi = 1 + self.done * self.n, 1 + (self.done + 1) * self.n
        times = {n_jobs: [] for n_jobs in self.settings}
        for start in range(lo, hi, 200):
            block = slice(start, min(start + 200, hi))
            for n_jobs, mann in self.models.items():
                times[n_jobs].append(
                    _latency(
                        mann,
                        self.xs[block],
                        self.ys[block],
                        lambda m, x, y: m.learn_one(x, y),
                        lambda m, x: m.predict_one(x),
                        raw=True,
                    )
                )
        for n_jobs in self.settings:
            self.per_round[n_jobs].append(np.concatenate(times[n_jobs]))
        self.done += 1
        medians = {
            n_jobs: float(np.median(t[-1]) / 1e3)
            for n_jobs, t in self.per_round.items()
        }
        print(f"stream round {self.done}: medians (us) {medians}")
        mann = self.models[None]
        for setting, rates in self.batch_rates.items():
            mann.set_params(n_jobs=2 if setting == 2 else None)
            mann._numpy_.jit = setting != "numpy" and _jit_step.AVAILABLE
            t0 = time.perf_counter()
            mann.predict(self.rows)
            rates.append(len(self.rows) / (time.perf_counter() - t0))
        mann.set_params(n_jobs=None)
        mann._numpy_.jit = _jit_step.AVAILABLE
        rates = {k: round(v[-1]) for k, v in self.batch_rates.items()}
        print(f"batch predict round {self.done}: rows/s {rates}")

    def result(self) -> dict:
        """The remaining rounds, then the MANN rows and the baselines."""
        while self.done < self.rounds:
            self.round()
        return streaming(self)


def streaming(rounds: StreamingRounds) -> dict:
    """The MANN's best round, the baselines on the same stream, batch predict."""
    xs, ys, n = rounds.xs, rounds.ys, rounds.n
    res = {}
    for n_jobs in rounds.settings:
        medians = [float(np.median(t) / 1e3) for t in rounds.per_round[n_jobs]]
        best = rounds.per_round[n_jobs][int(np.argmin(medians))]
        res[f"MANN (sk_mann, n_jobs={n_jobs})"] = {
            "median_us": min(medians),
            "p99_us": float(np.percentile(best, 99) / 1e3),
            "samples": len(best),
            "round_medians_us": medians,
        }
    from river import neighbors

    knn = neighbors.KNNClassifier()
    res["[baseline] River KNNClassifier (default)"] = _latency(
        knn,
        xs[:n],
        ys[:n],
        lambda m, x, y: m.learn_one(x, y),
        lambda m, x: m.predict_one(x),
    )
    sk = _SklearnStream()
    m_sk = min(n, 2000)
    res["[baseline] scikit-learn KNeighborsClassifier (refit per sample)"] = _latency(
        sk,
        xs[:m_sk],
        ys[:m_sk],
        lambda m, x, y: m.learn_one(x, y),
        lambda m, x: m.predict_one(x),
    )
    for k, v in res.items():
        print(f"stream {k}: median {v['median_us']:.0f} us, p99 {v['p99_us']:.0f} us")
    for setting, key in ((None, ""), (2, "_n_jobs_2"), ("numpy", "_numpy_passes")):
        if setting in rounds.batch_rates:
            rates = rounds.batch_rates[setting]
            res["batch_predict_rows_per_s" + key] = max(rates)
            res["batch_predict_rounds" + key] = rates
            print(f"batch predict, {setting}: {max(rates):.0f} rows/s")
    return res


def _proc_status_mib(field: str) -> float:
    """A memory field of /proc/self/status (e.g. VmRSS, VmHWM), in MiB."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(field + ":")) / 1024


def state_growth(n_total: int) -> list[dict]:
    """Fast-state bytes and RSS of one stream after 1k, 10k, ... samples."""
    rng = np.random.default_rng(1)
    protos = rng.random((N_WAY, N_FEATURES))
    mann = MANNOneShotClassifier(**PAPER, seed=0)
    out, done, chunk = [], 0, 1000
    marks = {m for m in (1_000, 10_000, 100_000, 1_000_000, n_total) if m <= n_total}
    t0 = time.perf_counter()
    while done < n_total:
        y = rng.integers(0, N_WAY, chunk)
        X = protos[y] + 0.1 * rng.standard_normal((chunk, N_FEATURES))
        mann.partial_fit(X, y)
        done += chunk
        if done in marks:
            gc.collect()
            state_bytes = sum(
                t.numel() * t.element_size()
                for t in torch.utils._pytree.tree_leaves(mann.state_)
            )
            out.append(
                {
                    "samples": done,
                    "state_bytes": int(state_bytes),
                    "rss_mib": _proc_status_mib("VmRSS"),
                    "seconds": time.perf_counter() - t0,
                }
            )
            print(
                f"stream state after {done}: {state_bytes} B, "
                f"RSS {out[-1]['rss_mib']:.0f} MiB"
            )
    return out


_TRAIN_RSS = """
import torch, numpy as np
torch.set_num_threads({threads})
from sk_mann.episodes import EpisodeSampler
from sk_mann.model import MANN
from sk_mann.training import meta_train
rng = np.random.default_rng(0)
X = rng.random((1200 * 4, 400)).astype(np.float32); y = np.repeat(np.arange(1200), 4)
s = EpisodeSampler(X, y, n_way=5, n_per_class=10, image_shape=(20, 20),
                   rotate_classes=True, augment=True)
meta_train(MANN(400, 5, 5), s, n_episodes=16 * 60, batches_per_epoch=20,
           progress_bar=False, verbose=0, compile={compile}, workers={workers})
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec, so a child's
# would report its parent's peak whenever that is larger.
with open("/proc/self/status") as f:
    print(next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024)
"""


def training_peak_rss(threads: int, compile: bool = False) -> float:
    code = _TRAIN_RSS.format(threads=threads, compile=compile, workers=1)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _ranks(pid: int) -> list[int]:
    """``pid`` and its forked training workers (children with its command line).

    Children started otherwise (torch's compile workers) are left out, as the
    one-process figure leaves them out.
    """

    def cmdline(p: int) -> bytes:
        with open(f"/proc/{p}/cmdline", "rb") as f:
            return f.read()

    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = [int(c) for c in f.read().split()]
    own = cmdline(pid)
    out = [pid]
    for child in children:
        try:
            if cmdline(child) == own:
                out.append(child)
        except OSError:  # exited meanwhile
            pass
    return out


def _pss_mib(pid: int) -> float:
    """Proportional set size of a process (shared pages split between sharers)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("Pss:")) / 1024


def training_peak_memory_workers(
    threads: int, workers: int, compile: bool = True, every_s: float = 0.05
) -> dict:
    """Memory of a ``meta_train(workers=...)`` run, all its processes together.

    Each process's RSS counts the pages it shares with the others since the
    fork, so their sum overstates the run; the sum of their proportional set
    sizes (PSS: a shared page split between its sharers) does not. It is
    sampled every ``every_s`` seconds from here (a peak shorter than that can
    be missed); rank 0's own peak RSS (VmHWM) is exact.
    """
    code = _TRAIN_RSS.format(threads=threads, compile=compile, workers=workers)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    )
    peak_sum, peak_by_rank, samples = 0.0, [0.0] * workers, 0
    while proc.poll() is None:
        try:  # rank order: rank 0 first, then its forked children
            pss = [_pss_mib(r) for r in _ranks(proc.pid)]
        except (OSError, StopIteration):  # a process exited between the reads
            pss = []
        if len(pss) == workers:  # every rank running (not before the fork)
            samples += 1
            peak_sum = max(peak_sum, sum(pss))
            peak_by_rank = [max(a, b) for a, b in zip(peak_by_rank, pss)]
        time.sleep(every_s)
    out, _ = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"the workers' memory run failed ({proc.returncode})")
    return {
        "workers": workers,
        "compiled": compile,
        "rank0_peak_rss_mib": float(out.strip().splitlines()[-1]),
        "peak_pss_sum_mib": peak_sum,
        "peak_pss_by_rank_mib": peak_by_rank,
        "samples": samples,
        "every_s": every_s,
    }


def _workers_memory_text(mem: dict | None) -> str:
    """The memory of a run with worker processes (runs that measured it)."""
    if not mem:
        return ""
    ranks = " / ".join(f"{v:.0f}" for v in mem["peak_pss_by_rank_mib"])
    return (
        f" With {mem['workers']} worker processes"
        f"{' (compiled)' if mem['compiled'] else ''}: all processes together "
        f"peaked at {mem['peak_pss_sum_mib']:.0f} MiB (sum of their proportional "
        f"set sizes, shared pages counted once; per process {ranks} MiB; sampled "
        f"every {1000 * mem['every_s']:.0f} ms, {mem['samples']} samples); rank "
        f"0's own peak RSS {mem['rank0_peak_rss_mib']:.0f} MiB."
    )


def _batch_rounds_text(res: dict) -> str:
    """The batch-predict rates of every round (runs that timed it in rounds)."""
    names = (("", "default"), ("_n_jobs_2", "n_jobs=2"), ("_numpy_passes", "NumPy"))
    parts = [
        f"{label}: "
        + " / ".join(f"{r / 1000:.0f}k" for r in res[f"batch_predict_rounds{key}"])
        for key, label in names
        if f"batch_predict_rounds{key}" in res
    ]
    if not parts:
        return ""
    return (
        " Best of one 20,000-row predict per setting in each latency round; "
        "every round (rows/s): " + "; ".join(parts) + "."
    )


def _cpp_wrapper_lines(cw: dict | None) -> list[str]:
    """The C++-wrapper table of ``speed.md`` (none without a measurement)."""
    if not cw:
        return []
    lines = [
        "",
        f"| batch {cw['batch_size']}, compiled, three networks alternated step "
        "for step | episodes/s | warm-up (s) |",
        "|---|---|---|",
        f'| C++ wrapper (`compile_options={{"cpp_wrapper": True}}`) '
        f"| {cw['cpp_episodes_per_s']:.0f} | {cw['cpp_warmup_seconds']:.0f} |",
        f"| Python wrapper (`compile=True` alone) "
        f"| {cw['python_episodes_per_s']:.0f} "
        f"| {cw['python_warmup_seconds']:.0f} |",
        f"| eager | {cw['eager_episodes_per_s']:.0f} | |",
        "",
        "Inductor's C++ wrapper: the compiled graph calls its kernels from "
        f"generated C++ instead of Python: {cw['ratio']:.3f}x the default "
        f"compiled step, medians of {cw['steps_timed']} steps each. A warm-up "
        "of seconds is a load from the kernel cache (an earlier part of the "
        "run compiled the same graph).",
    ]
    lines[-1] += _apart_text(cw, "table", " in an empty kernel cache")
    return lines


def _parallel_lines(par: dict | None, p: dict) -> list[str]:
    """A workers table of ``speed.md`` (none without a measurement)."""
    if not par:
        return []
    one = par["one_process_episodes_per_s"]
    many = par["workers_episodes_per_s"]
    gf1, gf = (e * p["flops_per_episode"] / 1e9 for e in (one, many))
    cpp = (par.get("compile_options") or {}).get("cpp_wrapper")
    how = ", C++ wrapper" if cpp else ""
    lines = [
        "",
        f"| `meta_train`, batch {par['batch_size']}, compiled{how} | episodes/s "
        "| achieved GFLOP/s |",
        "|---|---|---|",
        f"| one process, {p['threads']} threads | {one:.0f} | {gf1:.1f} |",
        f"| `workers={par['workers']}`: {par['workers']} processes of one thread "
        f"| {many:.0f} | {gf:.1f} |",
        "",
        f"Data-parallel training (`meta_train(workers={par['workers']})`"
        + (
            ', both settings with `compile_options={"cpp_wrapper": True}`'
            if cpp
            else ""
        )
        + "): each process trains on its share of every batch and the gradients "
        "are averaged before each step. The two settings alternate in blocks of "
        "epochs (random 400-feature episodes, sampling included; each "
        "block's first epoch, with compilation or the kernel cache's load, "
        f"left out): {par['ratio']:.2f}x.",
    ]
    lines[-1] += _apart_text(par, "row")
    return lines


def _apart_text(row: dict, what: str, extra: str = "") -> str:
    """ " This row was measured apart ..." for a row of ``_merge_apart``."""
    apart = row.get("measured_apart")
    if not apart:
        return ""
    return (
        f" This {what} was measured apart from the rest of the run, by "
        f"`{apart['command']}` on {apart['date']} (commit "
        f"{apart['git_commit']}){',' if extra else ''}{extra}."
    )


def _optimisations_note(opt: dict) -> str:
    """How the optimisations table was measured (older runs: no note)."""
    rows = [v for v in opt.values() if isinstance(v, dict)]
    steps = max((v.get("alternated_steps", 0) for v in rows), default=0)
    note = (
        f" The training rows alternated step for step, {steps} steps each; the "
        "streaming rows one after the other."
        if steps
        else ""
    )
    return note + _apart_text(opt, "table")


def _kernels_text(p: dict) -> str:
    """Whether the eager rows' memory step ran in numba kernels (older runs: no)."""
    if not p.get("eager_memory_kernels"):
        return ""
    return (
        " Eager (uncompiled) rows: the memory step runs in the numba kernels of "
        "`sk_mann._memory_op` (forward and hand-written backward); a compiled "
        "step keeps inductor's fused loops."
    )


def write_markdown(p: dict) -> None:
    wt = p["weight_traffic"]
    lines = [
        "# Speed (paper configuration: LSTM 200, memory 128x40, 4 heads, "
        "50-step episodes)",
        "",
        f"Matmul peak measured in the same run: {p['matmul_peak_gflops']:.0f} GFLOP/s "
        f"({p['threads']} threads). FLOPs per episode (forward + backward): "
        f"{p['flops_per_episode'] / 1e6:.0f} MFLOP. {machine_line(p)}.",
        "",
        "| meta-training batch | compiled | episodes/s | achieved GFLOP/s "
        "| % of matmul peak | warm-up (s) | eager, alternated step for step |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in p["training"] + p.get("training_compiled", []):
        gf = r["episodes_per_s"] * p["flops_per_episode"] / 1e9
        alt = r.get("eager_episodes_per_s_alternated")
        lines.append(
            f"| {r['batch_size']} | {'yes' if r.get('compiled') else 'no'} "
            f"| {r['episodes_per_s']:.0f} | {gf:.1f} | "
            f"{100 * gf / p['matmul_peak_gflops']:.0f}% "
            f"| {r.get('warmup_seconds', float('nan')):.0f} "
            f"| {'' if alt is None else f'{alt:.0f}'} |"
        )
    lines += [
        "",
        "Compiled: `meta_train(compile=True)` (`torch.compile` of the training "
        "forward); the warm-up column includes the one-off compilation, done "
        "here with an empty kernel cache (later runs on the same machine reuse "
        "the cached kernels and start in seconds). The last column times an "
        "eager network in alternation with the compiled one, step for step, so "
        "the speed-up is read under the same machine load." + _kernels_text(p),
    ]
    lines += _cpp_wrapper_lines(p.get("cpp_wrapper_training"))
    lines += _parallel_lines(p.get("parallel_training"), p)
    lines += _parallel_lines(p.get("parallel_training_cpp_wrapper"), p)
    lines += [
        "",
        "| streaming, 400-feature dicts | predict_one + learn_one median (us) "
        "| p99 (us) |",
        "|---|---|---|",
    ]
    for k, v in p["streaming"].items():
        if isinstance(v, dict):
            lines.append(f"| {k} | {v['median_us']:.0f} | {v['p99_us']:.0f} |")
    rounds = {
        k: v["round_medians_us"]
        for k, v in p["streaming"].items()
        if isinstance(v, dict) and "round_medians_us" in v
    }
    if rounds:
        lines += [
            "",
            "MANN rows: the best of "
            f"{len(next(iter(rounds.values())))} rounds of "
            f"{next(iter(p['streaming'].values()))['samples']} samples, run minutes "
            "apart between the parts of this benchmark (the host is shared; a slow "
            "phase slows every row). Medians of the rounds (us): "
            + "; ".join(
                f"{k.split(', ')[-1].rstrip(')')}: "
                + " / ".join(f"{m:.0f}" for m in ms)
                for k, ms in rounds.items()
            )
            + ". The baselines are timed once.",
        ]
    lines += [
        "",
        "Optimisations, before and after, measured in this run:",
        "",
        "| measurement | value |",
        "|---|---|",
    ]
    for k, v in p["optimisations"].items():
        if k == "measured_apart":
            continue
        val = (
            f"{v['episodes_per_s']:.0f} episodes/s"
            if "episodes_per_s" in v
            else f"median {v['median_us']:.0f} us, p99 {v['p99_us']:.0f} us"
        )
        lines.append(f"| {k} | {val} |")
    note = _optimisations_note(p["optimisations"]).strip()
    lines += ["", note] if note else []
    lines += [
        "",
        f"Batch `predict`: {p['streaming']['batch_predict_rows_per_s']:.0f} rows/s"
        + (
            f"; with `n_jobs=2` (chunks of rows on two threads): "
            f"{p['streaming']['batch_predict_rows_per_s_n_jobs_2']:.0f} rows/s."
            if "batch_predict_rows_per_s_n_jobs_2" in p["streaming"]
            else "."
        )
        + (
            " Before/after: with NumPy's elementwise passes instead of the "
            "compiled memory read and LSTM cells (default `n_jobs`, alternated "
            f"with the rows above): "
            f"{p['streaming']['batch_predict_rows_per_s_numpy_passes']:.0f} rows/s."
            if "batch_predict_rows_per_s_numpy_passes" in p["streaming"]
            else ""
        )
        + _batch_rounds_text(p["streaming"]),
        "",
        "Weight traffic of one streamed sample (the floor of predict_one + "
        f"learn_one): {wt['weight_bytes'] / 1e6:.2f} MB of controller and head "
        f"weights; {wt['each_alone_in_cache_us']:.0f} us when each matrix stays "
        f"in cache, {wt['in_sequence_us']:.0f} us read in sequence as a step does "
        f"({wt['in_sequence_gb_per_s']:.0f} GB/s).",
        "",
        f"Peak RSS of a meta-training process: {p['train_peak_rss_mib']:.0f} MiB "
        f"(compiled: {p['train_peak_rss_mib_compiled']:.0f} MiB)."
        + _workers_memory_text(p.get("train_peak_memory_workers")),
        "",
        "| stream samples | fast-state bytes | process RSS (MiB) |",
        "|---|---|---|",
    ]
    for r in p["state_growth"]:
        lines.append(f"| {r['samples']} | {r['state_bytes']} | {r['rss_mib']:.0f} |")
    lines += [
        "",
        produced_by(p),
        "",
        "![speed](speed.png)",
    ]
    (RESULTS / "speed.md").write_text("\n".join(lines) + "\n")


def plot(p: dict) -> None:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    bs = [r["batch_size"] for r in p["training"]]
    pos = np.arange(len(bs))
    ax1.bar(pos - 0.2, [r["episodes_per_s"] for r in p["training"]], 0.4, label="eager")
    comp = {
        r["batch_size"]: r["episodes_per_s"] for r in p.get("training_compiled", [])
    }
    ax1.bar(pos + 0.2, [comp.get(b, 0) for b in bs], 0.4, label="compiled")
    ax1.set_xticks(pos, [str(b) for b in bs])
    ax1.axhline(300, ls="--", color="grey", label="target 300 episodes/s")
    ax1.axhline(15, ls=":", color="red", label="published: ~15 episodes/s (GTX 960M)")
    ax1.set_xlabel("batch size")
    ax1.set_ylabel("meta-training episodes/s")
    ax1.legend(fontsize=7)
    names = [k for k, v in p["streaming"].items() if isinstance(v, dict)]
    ax2.barh(names, [p["streaming"][k]["median_us"] for k in names])
    ax2.axvline(100, ls="--", color="grey", label="target 100 us")
    ax2.set_xscale("log")
    ax2.set_xlabel("predict_one + learn_one, median (us)")
    ax2.tick_params(axis="y", labelsize=7)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "speed.png", dpi=120)
    plt.close(fig)


def _fresh_kernel_cache() -> None:
    """An empty inductor cache for what follows: warm-ups then show a first
    compilation, not kernels cached on disk by an earlier run (seconds)."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="sk_mann_inductor_")


def _merge_apart(key: str, row: dict) -> None:
    """Put ``row``, measured apart from a full run, into ``speed.json``."""
    path = RESULTS / "speed.json"
    payload = json.loads(path.read_text())
    meta = metadata()
    keys = ("command", "date", "git_commit", "machine")
    row["measured_apart"] = {k: meta[k] for k in keys}
    payload[key] = row
    write_json("speed", payload)
    write_markdown(payload)
    plot(payload)


def _keep_apart_rows(payload: dict, previous: dict) -> dict:
    """Rows of ``previous`` measured apart (``_merge_apart``) that ``payload``
    has not measured again, kept with their own command, date and commit.

    Only rows measured on the same CPU model as ``payload``: sessions run on
    different hosts, and a table must not mix them. A row that did not record
    its machine (before session 16) counts as measured on ``previous``'s.
    """
    cpu = payload.get("machine", {}).get("cpu_model")
    for key, row in previous.items():
        if key in payload or not isinstance(row, dict) or "measured_apart" not in row:
            continue
        machine = row["measured_apart"].get("machine") or previous.get("machine", {})
        if machine.get("cpu_model") == cpu:
            payload[key] = row
    return payload


def remeasure_parallel(args: argparse.Namespace) -> None:
    """``--parallel-only``: the workers row again, into ``speed.json``.

    With ``--cpp-wrapper``, both settings compile with inductor's C++ wrapper
    (a row of its own, ``parallel_training_cpp_wrapper``).
    """
    options = {"cpp_wrapper": True} if args.cpp_wrapper else None
    # first epochs (compiling) left out
    row = parallel_training(16, args.workers, compile_options=options)
    key = "parallel_training" + ("_cpp_wrapper" if options else "")
    _merge_apart(key, row)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument(
        "--compiled-batch-sizes",
        type=int,
        nargs="*",
        default=[16, 64],
        help="batch sizes also measured with torch.compile (each compiles once)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=2,
        help="meta_train(workers=...) measured against one process (1: skip)",
    )
    ap.add_argument(
        "--stream", type=int, default=2000, help="samples of the latency stream"
    )
    ap.add_argument(
        "--stream-samples",
        type=int,
        default=1_000_000,
        help="samples of the state-growth stream",
    )
    ap.add_argument(
        "--stream-rounds",
        type=int,
        default=6,
        help="rounds of the MANN's latency stream, spread over the run",
    )
    ap.add_argument(
        "--parallel-only",
        action="store_true",
        help="re-measure only the workers row and put it into the existing "
        "results (it records its own command, date and commit)",
    )
    ap.add_argument(
        "--cpp-wrapper-only",
        action="store_true",
        help="measure only the C++-wrapper table (in an empty kernel cache) and "
        "put it into the existing results (it records its own command, date and "
        "commit)",
    )
    ap.add_argument(
        "--optimisations-only",
        action="store_true",
        help="re-measure only the optimisations table and put it into the "
        "existing results (it records its own command, date and commit)",
    )
    ap.add_argument(
        "--cpp-wrapper",
        action="store_true",
        help="with --parallel-only: both settings compiled with inductor's C++ "
        "wrapper (a row of its own)",
    )
    args = ap.parse_args()
    if args.cpp_wrapper and not args.parallel_only:
        ap.error("--cpp-wrapper goes with --parallel-only")
    torch.set_num_threads(args.threads)
    if args.parallel_only:
        remeasure_parallel(args)
        return
    if args.optimisations_only:
        _merge_apart("optimisations", optimisations(args.iters))
        return
    if args.cpp_wrapper_only:
        _fresh_kernel_cache()
        _merge_apart("cpp_wrapper_training", cpp_wrapper_training(16, 5 * args.iters))
        return
    rounds = StreamingRounds(args.stream, args.stream_rounds)
    rounds.round()
    payload = {"threads": args.threads, "matmul_peak_gflops": matmul_peak()}
    payload["eager_memory_kernels"] = _memory_op.AVAILABLE and _memory_op.ENABLED
    print(f"matmul peak: {payload['matmul_peak_gflops']:.0f} GFLOP/s")
    payload["flops_per_episode"] = flops_per_episode()
    payload["training"] = train_throughput(args.batch_sizes, args.iters)
    rounds.round()
    _fresh_kernel_cache()
    payload["training_compiled"] = []
    for bs in args.compiled_batch_sizes:
        payload["training_compiled"] += train_throughput([bs], args.iters, compile=True)
        rounds.round()
    payload["cpp_wrapper_training"] = cpp_wrapper_training(16, 5 * args.iters)
    rounds.round()
    if args.workers > 1:
        payload["parallel_training"] = parallel_training(16, args.workers)
        rounds.round()
    payload["optimisations"] = optimisations(args.iters)
    rounds.round()
    payload["train_peak_rss_mib"] = training_peak_rss(args.threads)
    payload["train_peak_rss_mib_compiled"] = training_peak_rss(args.threads, True)
    if args.workers > 1:
        payload["train_peak_memory_workers"] = training_peak_memory_workers(
            args.threads, args.workers
        )
    rounds.round()
    payload["streaming"] = rounds.result()
    payload["weight_traffic"] = weight_traffic()
    payload["state_growth"] = state_growth(args.stream_samples)
    payload["cuda"] = torch.cuda.is_available()
    payload.update(metadata())
    previous = RESULTS / "speed.json"
    if previous.exists():
        payload = _keep_apart_rows(payload, json.loads(previous.read_text()))
    write_json("speed", payload)
    write_markdown(payload)
    plot(payload)


if __name__ == "__main__":
    main()
