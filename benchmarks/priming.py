"""How should ``fit`` prime the memory? Order and number of samples, measured.

    python benchmarks/priming.py [--model omniglot_5way] [--trials 200]

For 5 held-out Omniglot characters at a time, the pretrained MANN is given k
samples of each class (k = 1, 2, 3, 5, 7, 10) through ``partial_fit`` in one of three
orders, then ``predict`` is scored on the other samples of those classes:

- ``shuffled``: a random order, like a meta-training episode (``fit``'s default);
- ``round-robin``: class 1, 2, ..., 5, class 1, 2, ... (interleaved);
- ``grouped``: all samples of class 1, then all of class 2, ...

Writes ``benchmarks/results/priming.{json,md}``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import RESULTS, default_data_home, metadata, write_json

from sk_mann import MANNOneShotClassifier, fetch_omniglot

ORDERS = ("shuffled", "round-robin", "grouped")
KS = (1, 2, 3, 5, 7, 10)


def order_indices(k: int, n_way: int, how: str, rng: np.random.Generator):
    """Positions (class, sample) in the order the memory sees them."""
    pairs = [(c, s) for c in range(n_way) for s in range(k)]  # grouped
    if how == "round-robin":
        pairs = [(c, s) for s in range(k) for c in range(n_way)]
    elif how == "shuffled":
        pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="omniglot_5way")
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--data-home", default=default_data_home())
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    X, y = fetch_omniglot(data_home=args.data_home, subset="test", return_X_y=True)
    classes = np.unique(y)
    by_class = {c: np.flatnonzero(y == c) for c in classes}
    base = MANNOneShotClassifier(pretrained=args.model, seed=0)
    base.partial_fit(X[:1], y[:1])  # load the weights once
    rng = np.random.default_rng(0)
    acc = {(how, k): [] for how in ORDERS for k in KS}
    for _ in range(args.trials):
        chosen = rng.choice(classes, size=5, replace=False)
        samples = {c: rng.permutation(by_class[c]) for c in chosen}
        seed = int(rng.integers(2**31))
        for k in KS:
            query = np.concatenate([samples[c][k:] for c in chosen])
            for how in ORDERS:
                model = base.reset_memory()
                pairs = order_indices(k, 5, how, np.random.default_rng(seed))
                idx = [samples[chosen[c]][s] for c, s in pairs]
                model.partial_fit(X[idx], y[idx])
                hits = model.predict(X[query]) == y[query]
                acc[(how, k)].append(float(np.mean(hits)))
    rows = []
    for how in ORDERS:
        for k in KS:
            a = np.array(acc[(how, k)])
            rows.append(
                {
                    "order": how,
                    "samples_per_class": k,
                    "accuracy": float(a.mean()),
                    "ci95": float(1.96 * a.std(ddof=1) / np.sqrt(a.size)),
                }
            )
    payload = {"trials": args.trials, "model": args.model, "rows": rows, **metadata()}
    write_json("priming", payload)
    lines = [
        "# Priming the memory: order and samples per class",
        "",
        f"Accuracy (%) of `predict` on the other samples of 5 held-out Omniglot "
        f"characters after writing k samples of each to memory; {args.trials} "
        f"trials, model `{args.model}`.",
        "",
        "| order | " + " | ".join(f"k={k}" for k in KS) + " |",
        "|---|" + "---|" * len(KS),
    ]
    for how in ORDERS:
        cells = [
            f"{100 * r['accuracy']:.1f} +-{100 * r['ci95']:.1f}"
            for r in rows
            if r["order"] == how
        ]
        lines.append(f"| {how} | " + " | ".join(cells) + " |")
    lines += ["", f"Produced by `{payload['command']}` on {payload['date']}."]
    (RESULTS / "priming.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
