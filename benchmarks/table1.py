"""Table 1 of Santoro et al. (2016): 5-way one-hot episodes on held-out Omniglot.

Stages (each resumable; checkpoints in ``benchmarks/runs/``)::

    python benchmarks/table1.py train --model mann --max-minutes 50
    python benchmarks/table1.py train --model lstm --max-minutes 10
    python benchmarks/table1.py evaluate
    python benchmarks/table1.py add --weights FILE.pt --label LABEL [--export NAME]

``evaluate`` runs the trained MANN and LSTM and the kNN baselines on the same
held-out episodes (characters 1201-1623, never seen in meta-training) and
writes ``benchmarks/results/table1.{json,md,png}`` plus the training curves
(``table1_training.png``); ``--export`` also writes the MANN weights to
``sk_mann/pretrained/``. ``add`` scores a weights file written by
``sk-mann train`` on the same held-out episodes and adds its row to the
existing results (the other rows are kept as they are); ``--export NAME``
ships it as ``sk_mann/pretrained/NAME.pt``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from _common import REPO, RESULTS, RUNS, default_data_home, metadata, write_json

from sk_mann._demo import load_model
from sk_mann.baselines import RiverKNN, SklearnKNN, evaluate_online
from sk_mann.datasets import fetch_omniglot
from sk_mann.episodes import EpisodeSampler
from sk_mann.metrics import evaluate_network
from sk_mann.model import PAPER_MANN_KWARGS, build_network
from sk_mann.pretrained import save_weights
from sk_mann.training import meta_train

N_WAY, N_PER_CLASS, IMAGE = 5, 10, 20
INSTANCES = tuple(range(1, 11))
TABLE_INSTANCES = (1, 2, 3, 4, 5, 10)
EVAL_SEED = 2016

#: Networks meta-trained here. Labels say which rows are baselines.
MODELS = {
    "mann": {
        "label": "MANN (LSTM controller, LRUA)",
        "network": "mann",
        "kwargs": dict(PAPER_MANN_KWARGS),
        "train": {
            "batch_size": 16,
            "optimizer": "adam",
            "lr": 1e-3,
            "clip_value": 10.0,
        },
    },
    "mann_add": {
        "label": "[ablation] MANN, separate add vector",
        "network": "mann",
        "kwargs": {**PAPER_MANN_KWARGS, "write_content": "add"},
        "train": {
            "batch_size": 16,
            "optimizer": "adam",
            "lr": 1e-3,
            "clip_value": 10.0,
        },
    },
    "lstm": {
        "label": "[baseline] LSTM",
        "network": "lstm",
        "kwargs": {"hidden_size": 200},
        "train": {
            "batch_size": 16,
            "optimizer": "adam",
            "lr": 1e-3,
            "clip_value": 10.0,
        },
    },
}

PAPER = {
    "Human (paper)": [34.5, 57.3, 70.1, 71.8, 81.4, 92.4],
    "Feed-forward (paper)": [24.4, 19.6, 21.1, 19.9, 22.8, 19.5],
    "LSTM (paper)": [24.4, 49.5, 55.3, 61.0, 63.6, 62.5],
    "MANN (paper)": [36.4, 82.8, 91.0, 92.6, 94.9, 98.1],
}


def samplers(
    data_home: str, train_per_class: int = N_PER_CLASS, jitter: bool = True
) -> tuple[EpisodeSampler, EpisodeSampler]:
    """Training sampler (1200 characters, rotations, jitter) and held-out sampler.

    ``train_per_class`` sets the training episodes' instances per class (their
    length is ``N_WAY`` times it); held-out episodes always have the paper's.
    ``jitter=False`` leaves out the small random shifts and rotations of the
    training images (the 90-degree class rotations stay).
    """
    X_tr, y_tr = fetch_omniglot(data_home=data_home, subset="train", return_X_y=True)
    X_te, y_te = fetch_omniglot(data_home=data_home, subset="test", return_X_y=True)
    train = EpisodeSampler(
        X_tr,
        y_tr,
        n_way=N_WAY,
        n_per_class=train_per_class,
        image_shape=(IMAGE, IMAGE),
        rotate_classes=True,
        augment=jitter,
    )
    test = EpisodeSampler(X_te, y_te, n_way=N_WAY, n_per_class=N_PER_CLASS)
    return train, test


def make_network(
    name: str, overrides: dict | None = None, seed: int = 0
) -> torch.nn.Module:
    """Network ``name`` of :data:`MODELS` (seeded), ``overrides`` on its kwargs."""
    spec = MODELS[name]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_network(
            spec["network"],
            IMAGE * IMAGE,
            N_WAY,
            N_WAY,
            **{**spec["kwargs"], **(overrides or {})},
        )


def _segments_path(name: str) -> Path:
    return RUNS / f"table1_{name}" / "segments.json"


def train(args: argparse.Namespace) -> None:
    train_s, test_s = samplers(args.data_home)
    module = make_network(args.model)
    settings = dict(MODELS[args.model]["train"])
    if args.lr is not None:
        settings["lr"] = args.lr
    ckpt = RUNS / f"table1_{args.model}"
    start = (
        len(json.loads((ckpt / "history.json").read_text()))
        if (ckpt / "history.json").exists()
        else 0
    )
    net = meta_train(
        module,
        train_s,
        n_episodes=args.episodes,
        batches_per_epoch=100,
        eval_sampler=test_s,
        eval_episodes=500,
        eval_every=5,
        seed=0,
        checkpoint_dir=ckpt,
        max_time=args.max_minutes * 60,
        progress_bar=False,
        **settings,
    )
    # Provenance: which epochs ran with which settings (resumed runs add segments).
    path = _segments_path(args.model)
    segments = json.loads(path.read_text()) if path.exists() else []
    segments.append(
        {
            "first_epoch": start + 1,
            "last_epoch": len(net.history),
            "lr": settings["lr"],
            "threads": args.threads,
        }
    )
    path.write_text(json.dumps(segments, indent=2))
    print(f"done: {len(net.history)} epochs")


def load_trained(name: str) -> tuple[torch.nn.Module, list[dict]]:
    ckpt = RUNS / f"table1_{name}"
    module = make_network(name)
    module.load_state_dict(torch.load(ckpt / "params.pt", weights_only=True))
    history = json.loads((ckpt / "history.json").read_text())
    return module, history


def evaluate(args: argparse.Namespace) -> None:
    _, test_s = samplers(args.data_home)
    results, timings, histories = {}, {}, {}
    batch = 16 * MODELS["mann"]["train"]["batch_size"]
    for name in MODELS:
        if not (RUNS / f"table1_{name}" / "params.pt").exists():
            print(f"{name}: no checkpoint in {RUNS}, skipped")
            continue
        module, history = load_trained(name)
        histories[name] = history
        t0 = time.perf_counter()
        res = evaluate_network(
            module,
            test_s,
            n_episodes=args.episodes,
            seed=EVAL_SEED,
            batch_size=batch,
            instances=INSTANCES,
        )
        timings[name] = time.perf_counter() - t0
        res["episodes_trained"] = (
            len(history) * 100 * MODELS[name]["train"]["batch_size"]
        )
        res["train_wall_seconds"] = float(sum(h["dur"] for h in history))
        seg = _segments_path(name)
        res["training_segments"] = json.loads(seg.read_text()) if seg.exists() else None
        results[MODELS[name]["label"]] = res
        print(name, np.round(100 * np.array(res["accuracy"]), 1))
    for label, learner, n in [
        ("[baseline] kNN raw pixels (scikit-learn, k=1)", SklearnKNN(1), args.episodes),
        ("[baseline] kNN raw pixels (River, k=1)", RiverKNN(1), args.river_episodes),
    ]:
        t0 = time.perf_counter()
        res = evaluate_online(
            learner,
            test_s,
            n_episodes=n,
            seed=EVAL_SEED,
            batch_size=batch,
            instances=INSTANCES,
        )
        timings[label] = time.perf_counter() - t0
        results[label] = res
        print(label, np.round(100 * np.array(res["accuracy"]), 1))
    previous = RESULTS / "table1.json"
    if previous.exists():  # rows added by `add` stay (same episodes, same seed)
        for label, res in json.loads(previous.read_text())["results"].items():
            if res.get("added_by") and label not in results:
                results = _with_row(results, label, res)
    payload = {
        "benchmark": "table1",
        "protocol": {
            "classes_per_episode": N_WAY,
            "samples_per_class": N_PER_CLASS,
            "labels": "onehot",
            "image_size": IMAGE,
            "split": "paper (train 1-1200, test 1201-1623)",
            "train_augmentation": (
                "90-degree rotations as new classes; shift +-10/105 of the side "
                "and rotation +-11.25 deg"
            ),
            "eval_episodes": args.episodes,
            "eval_seed": EVAL_SEED,
        },
        "models": {k: {**v, "kwargs": v["kwargs"]} for k, v in MODELS.items()},
        "results": results,
        "paper": PAPER,
        "eval_seconds": timings,
        **metadata(),
    }
    write_json("table1", payload)
    write_markdown(payload)
    plot_results(payload)
    plot_training(histories)
    if args.export:
        export_weights(payload)


def _training_record(weights: Path, manifest: dict | None) -> dict:
    """The manifest ``sk-mann train`` wrote beside ``weights`` (required)."""
    if manifest is None:
        raise SystemExit(
            f"{weights.with_suffix('.json')} not found: `add` needs the manifest "
            "`sk-mann train` writes beside its weights (it says how the model was "
            "trained)."
        )
    if not manifest.get("training", {}).get("complete", True):
        raise SystemExit(
            f"{weights} is from a stopped `sk-mann train` run "
            f"({manifest['training']['episodes']:,} of "
            f"{manifest['training']['episodes_requested']:,} episodes); "
            "re-run its command to finish it first."
        )
    return manifest


def _with_row(results: dict, label: str, res: dict) -> dict:
    """``results`` with row ``label`` set: a new row goes before the baselines."""
    if label in results:
        return {**results, label: res}
    rows = list(results.items())
    at = next(
        (i for i, (k, _) in enumerate(rows) if k.startswith("[baseline]")), len(rows)
    )
    return dict(rows[:at] + [(label, res)] + rows[at:])


def add_weights(args: argparse.Namespace) -> None:
    """Score ``args.weights`` on Table 1's held-out episodes; add its row."""
    weights = Path(args.weights)
    model = load_model(weights)  # the network, its config and its manifest
    trained = _training_record(weights, model.manifest)
    config, module = model.config, model.module
    if (config["labels"], config["n_way"], config["n_inputs"]) != (
        "onehot",
        N_WAY,
        IMAGE * IMAGE,
    ):
        raise SystemExit(
            f"{weights} is not a 5-way one-hot 20x20 model (config {config}); "
            "Table 1 scores only those."
        )
    payload = json.loads((RESULTS / "table1.json").read_text())
    _, test_s = samplers(args.data_home)
    t0 = time.perf_counter()
    res = evaluate_network(
        module,
        test_s,
        n_episodes=payload["protocol"]["eval_episodes"],
        seed=EVAL_SEED,
        batch_size=16 * MODELS["mann"]["train"]["batch_size"],
        instances=INSTANCES,
    )
    info = trained["training"]
    res["episodes_trained"] = info["episodes"]
    res["train_wall_seconds"] = info["wall_seconds"]
    res["training"] = info
    res["kwargs"] = config["kwargs"]
    res["trained_by"] = trained["produced_by"]
    res["added_by"] = {k: v for k, v in metadata().items() if k != "versions"}
    payload["results"] = _with_row(payload["results"], args.label, res)
    payload["eval_seconds"][args.label] = time.perf_counter() - t0
    print(args.label, np.round(100 * np.array(res["accuracy"]), 1))
    write_json("table1", payload)
    write_markdown(payload)
    plot_results(payload)
    if args.export:
        _ship(module, config, payload, args.label, args.export)


def _row(values: list[float]) -> str:
    return " | ".join(f"{v:.1f}" for v in values)


def write_markdown(payload: dict) -> None:
    idx = [INSTANCES.index(k) for k in TABLE_INSTANCES]
    lines = [
        "# Table 1: 5-way one-hot episodes, held-out Omniglot characters",
        "",
        "Per-instance accuracy (%) on "
        f"{payload['protocol']['eval_episodes']} episodes of held-out characters "
        "(95% CI half-width in parentheses for the 2nd instance).",
        "",
        "| model | episodes trained | 1st | 2nd | 3rd | 4th | 5th | 10th | 2nd CI |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, res in payload["results"].items():
        acc = [100 * res["accuracy"][i] for i in idx]
        ci = 100 * res["ci95"][1]
        trained = res.get("episodes_trained", "-")
        lines.append(f"| {label} | {trained} | {_row(acc)} | +-{ci:.1f} |")
    for label, acc in payload["paper"].items():
        lines.append(f"| {label} | – | {_row(acc)} | |")
    lines += ["", "Training schedules (epochs of 1600 episodes, Adam):", ""]
    for label, res in payload["results"].items():
        if res.get("training_segments"):
            parts = [
                f"epochs {g['first_epoch']}-{g['last_epoch']} at lr {g['lr']:g}"
                for g in res["training_segments"]
            ]
            lines.append(f"- {label}: " + ", ".join(parts))
        elif res.get("training"):
            t = res["training"]
            lines.append(
                f"- {label}: {t['episodes']:,} episodes, lr {t['lr']:g} "
                f"({t.get('lr_schedule', 'constant')} schedule), batch "
                f"{t['batch_size']}, trained by `{res['trained_by']}`"
            )
    lines += [
        "",
        f"Produced by `{payload['command']}` on {payload['date']} "
        f"({payload['machine']['cpu_count']} CPUs, "
        f"torch {payload['versions']['torch']}, "
        f"commit {payload['git_commit']}).",
    ]
    for label, res in payload["results"].items():
        if res.get("added_by"):
            added = res["added_by"]
            lines += [
                "",
                f"Row {label!r} added by `{added['command']}` on {added['date']} "
                f"(commit {added['git_commit']}).",
            ]
    lines += [
        "",
        "![accuracy per instance](table1.png)",
        "",
        "![training curves](table1_training.png)",
    ]
    (RESULTS / "table1.md").write_text("\n".join(lines) + "\n")


def plot_results(payload: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, res in payload["results"].items():
        acc = 100 * np.array(res["accuracy"])
        ci = 100 * np.array(res["ci95"])
        ax.errorbar(INSTANCES, acc, yerr=ci, marker="o", capsize=3, label=label)
    for label, acc in payload["paper"].items():
        if label.startswith(("MANN", "LSTM")):
            ax.plot(TABLE_INSTANCES, acc, ls="--", color="grey", alpha=0.8, marker="x")
            ax.annotate(label, (TABLE_INSTANCES[-1], acc[-1]), fontsize=7, color="grey")
    ax.set_xlabel("instance of the class in the episode")
    ax.set_ylabel("accuracy on held-out characters (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks(INSTANCES)
    ax.set_title("5-way Omniglot, one-hot labels (dashed: paper)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(RESULTS / "table1.png", dpi=120)
    plt.close(fig)


def plot_training(histories: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, hist in histories.items():
        eps = np.arange(1, len(hist) + 1) * 100 * MODELS[name]["train"]["batch_size"]
        ax1.plot(eps, [h["train_loss"] for h in hist], label=MODELS[name]["label"])
        pts = [
            (e, h["heldout_acc_2"]) for e, h in zip(eps, hist) if "heldout_acc_2" in h
        ]
        if pts:
            ax2.plot(*zip(*pts), marker=".", label=MODELS[name]["label"])
    ax1.axhline(np.log(5), ls=":", color="grey", label="ln 5 (chance)")
    ax1.set_xlabel("training episodes")
    ax1.set_ylabel("training loss (per step)")
    ax1.legend(fontsize=7)
    ax2.axhline(82.8, ls="--", color="grey", label="paper MANN, 2nd instance")
    from matplotlib.ticker import FuncFormatter

    thousands = FuncFormatter(lambda v, _: f"{v / 1000:.0f}k")
    ax1.xaxis.set_major_formatter(thousands)
    ax2.xaxis.set_major_formatter(thousands)
    ax2.set_xlabel("training episodes")
    ax2.set_ylabel("held-out accuracy, 2nd instance (%)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "table1_training.png", dpi=120)
    plt.close(fig)
    for name, hist in histories.items():
        write_json(f"table1_training_{name}", {"history": hist})


#: Trained models shipped with the package, and their names there.
EXPORTS = {"mann": "omniglot_5way", "mann_add": "omniglot_5way_add"}


def export_weights(payload: dict) -> None:
    """Write each trained model of ``EXPORTS`` to ``sk_mann/pretrained/``."""
    for name, shipped in EXPORTS.items():
        if MODELS[name]["label"] in payload["results"]:
            _export(payload, name, shipped)


def _export(payload: dict, name: str, shipped: str) -> None:
    module, _ = load_trained(name)
    res = payload["results"][MODELS[name]["label"]]
    segments = _segments_path(name)
    training = {
        **MODELS[name]["train"],
        "episodes": res["episodes_trained"],
        "wall_seconds": res["train_wall_seconds"],
        "segments": json.loads(segments.read_text()) if segments.exists() else None,
        "data": "Omniglot characters 1-1200 (paper split), 20x20, max-normalised",
        "augmentation": payload["protocol"]["train_augmentation"],
    }
    config = {
        "network": "mann",
        "n_inputs": IMAGE * IMAGE,
        "labels": "onehot",
        "n_way": N_WAY,
        "kwargs": MODELS[name]["kwargs"],
    }
    _write_shipped(module, config, training, res, shipped, payload["command"], payload)


def _ship(
    module: torch.nn.Module, config: dict, payload: dict, label: str, shipped: str
) -> None:
    """Ship a row added by ``add`` (its training record from ``sk-mann train``)."""
    res = payload["results"][label]
    added = res["added_by"]
    _write_shipped(
        module,
        config,
        res["training"],
        res,
        shipped,
        f"{res['trained_by']}; then {added['command']}",
        added,
    )


def _usage(shipped: str, kwargs: dict) -> str:
    """How to load ``shipped``: the arguments that differ from the defaults."""
    extra = ""
    if kwargs.get("write_content") == "add":
        extra += ", write_content='add'"
    if kwargs.get("key_strength"):
        extra += ", key_strength=True"
    return f"MANNOneShotClassifier(pretrained={shipped!r}{extra})"


def _write_shipped(
    module: torch.nn.Module,
    config: dict,
    training: dict,
    res: dict,
    shipped: str,
    command: str,
    when: dict,
) -> None:
    out = REPO / "sk_mann" / "pretrained"
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out / f"{shipped}.pt", module, config)
    manifest = {
        "name": shipped,
        **config,
        "training": training,
        "heldout_accuracy": dict(zip(map(str, INSTANCES), res["accuracy"])),
        "heldout_episodes": res["n_episodes"],
        "input": (
            "20x20 Omniglot-style image, strokes=1, background=0, "
            "max-normalised, flattened"
        ),
        "usage": _usage(shipped, config["kwargs"]),
        "produced_by": command,
        "date": when["date"],
        "git_commit": when["git_commit"],
    }
    (out / f"{shipped}.json").write_text(json.dumps(manifest, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("stage", choices=["train", "evaluate", "add"])
    p.add_argument("--model", choices=list(MODELS), default="mann")
    p.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="train: total episodes (default 1,600,000); "
        "evaluate: held-out episodes (default 1000)",
    )
    p.add_argument("--river-episodes", type=int, default=1000)
    p.add_argument("--max-minutes", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="train: learning rate for this (possibly resumed) segment",
    )
    p.add_argument("--data-home", default=default_data_home())
    p.add_argument(
        "--export",
        nargs="?",
        const=True,
        default=False,
        metavar="NAME",
        help="evaluate: write the MANN weights to sk_mann/pretrained; "
        "add: ship the weights there as NAME",
    )
    p.add_argument("--weights", help="add: weights file written by `sk-mann train`")
    p.add_argument("--label", help="add: the row's label in the table")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.episodes is None:
        args.episodes = 1_600_000 if args.stage == "train" else 1000
    if args.stage == "add":
        if not args.weights or not args.label:
            p.error("add needs --weights and --label")
        if args.export is True:
            p.error("add: --export needs the NAME to ship the weights as")
        add_weights(args)
    else:
        train(args) if args.stage == "train" else evaluate(args)


if __name__ == "__main__":
    main()
