"""The ``sk-mann`` command line: demo, train, evaluate, benchmark.

Run ``sk-mann --help`` or ``sk-mann <command> --help``. Every command returns
an exit code: 0 on success, 2 on a usage error (bad options, missing data,
unreadable model file), reported as one line ``sk-mann: error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__
from ._demo import UserError
from .model import PAPER_MANN_KWARGS

__all__ = ["build_parser", "main"]

PROG = "sk-mann"
IMAGE = 20
#: Seed of the held-out episodes of ``evaluate`` and of ``train``'s final check
#: (the one of ``benchmarks/table1.py``), so their numbers are comparable.
EVAL_SEED = 2016
#: The paper's network (Santoro et al. 2016), used by ``train``.
PAPER_KWARGS = dict(PAPER_MANN_KWARGS)
_DATA_HELP = (
    "data directory whose omniglot/ sub-folder holds images_background.zip and "
    "images_evaluation.zip (default: $SK_MANN_DATA, else ~/sk_mann_data)"
)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the layout of descriptions and epilogs; show meaningful defaults."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            text
            and action.option_strings
            and default is not None
            and default is not False
            and default != argparse.SUPPRESS
            and "%(default)" not in text
        ):
            text += " (default: %(default)s)"
        return text


def _number(kind: type, minimum: float, *, strict: bool, word: str):
    """argparse type: a ``kind`` number at least (``strict``: above) ``minimum``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {word}: {text!r}") from None
        if value < minimum or (strict and value == minimum):
            bound = f"above {minimum}" if strict else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


_positive_int = _number(int, 1, strict=False, word="integer")
_nonneg_int = _number(int, 0, strict=False, word="integer")
_positive_float = _number(float, 0.0, strict=True, word="number")


# ---------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------

_MAIN_DESCRIPTION = """\
One-shot learning with Memory-Augmented Neural Networks (Santoro et al. 2016).

A MANN is meta-trained on many small classification episodes; it then learns a
new class from a single example by writing it into its external memory, with
no gradient step. These commands show it, train it and measure it with the
paper's protocol: per-instance accuracy on classes never seen in training.
"""

_MAIN_EPILOG = """\
Run `sk-mann COMMAND --help` for the options of a command.

examples:
  sk-mann demo                         # see one-shot learning, offline
  sk-mann train --data-home ~/data --out mann.pt --checkpoint-dir runs/mann
  sk-mann evaluate mann.pt --data-home ~/data
"""

_DEMO_DESCRIPTION = """\
Show one-shot learning end to end: load a meta-trained MANN and run the paper's
protocol on classes it never saw, side by side with nearest-neighbour
baselines on the same episodes.

Each episode takes 5 classes and 10 samples of each, shuffled, with labels
assigned at random. At every step the model predicts the label of the sample
and is then told the right one; its memory is wiped between episodes. The
table gives the accuracy at the 1st, 2nd, ... 10th appearance of a class in
an episode: the 1st can only be a guess, the 2nd measures learning from one
example.

Data (--dataset auto): the 423 held-out Omniglot characters of the paper's
split when images_evaluation.zip is in <data home>/omniglot/, else
scikit-learn's bundled 8x8 digits, resized to 20x20 (no download needed; a
domain shift for a model meta-trained on Omniglot).
"""

_DEMO_EPILOG = """\
examples:
  sk-mann demo                                # shipped model, digits or Omniglot
  sk-mann demo --dataset digits --episodes 50 --plot demo.png
  sk-mann demo --data-home ~/data --json demo.json
  sk-mann demo --model mann.pt                # weights written by `sk-mann train`
"""

_TRAIN_DESCRIPTION = """\
Meta-train a MANN on Omniglot characters 1-1200 (the paper's split); the
rotations by 90, 180 and 270 degrees are extra classes and every sample gets a
small random shift and rotation. The held-out characters 1201-1623 are used to
log accuracy during training and for the final check.

Writes the weights file OUT (load it with `sk-mann demo --model OUT`, `sk-mann
evaluate OUT` or MANNOneShotClassifier(pretrained=OUT)) and a JSON manifest
beside it (OUT with .json in place of .pt): options, episodes trained, date,
held-out accuracy. With --checkpoint-dir, every epoch is saved there and
re-running the same command resumes where it stopped (also after
--max-minutes ran out).
"""

_TRAIN_EPILOG = """\
examples:
  sk-mann train --data-home ~/data --out mann.pt --checkpoint-dir runs/mann
  sk-mann train --data-home ~/data --out mann.pt --checkpoint-dir runs/mann \\
      --max-minutes 60            # re-run later to continue
  sk-mann train --data-home ~/data --out small.pt --episodes 20000 \\
      --controller-size 100 --n-slots 64
  sk-mann train --data-home ~/data --out fast.pt --episodes 200000 \\
      --write-content add --key-strength --lr-schedule cosine --compile
      # the recipe of the time-to-accuracy benchmark's best runs

The paper trained on 100,000 episodes (batches of 16); on CPU expect hours.
"""

_EVALUATE_DESCRIPTION = """\
Per-instance accuracy of a weights file (or a shipped model's name) on the
held-out Omniglot characters (ids 1201-1623 of the paper's split), next to the
nearest-neighbour baselines (scikit-learn and River, k=1, storing every sample
of the episode) on the same episodes. Needs the Omniglot zips locally.
"""

_EVALUATE_EPILOG = """\
examples:
  sk-mann evaluate omniglot_5way --data-home ~/data
  sk-mann evaluate mann.pt --episodes 200 --no-baselines
  sk-mann evaluate mann.pt --json eval.json --plot eval.png
"""

_BENCHMARK_DESCRIPTION = """\
Run one of the benchmark scripts of the sk_mann source repository
(benchmarks/<NAME>.py) with the current Python, forwarding ARGS to it. Only
available from a source checkout: installed packages do not ship them.
Without NAME, list the benchmarks found.
"""

_BENCHMARK_EPILOG = """\
examples:
  sk-mann benchmark                          # list them
  sk-mann benchmark table1 --help            # the script's own help
  sk-mann benchmark table1 evaluate --episodes 200
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``sk-mann`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=_MAIN_DESCRIPTION,
        epilog=_MAIN_EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    threads = {"type": _positive_int, "metavar": "T"}
    threads_help = "torch threads (default: torch's choice)"

    # demo ------------------------------------------------------------------
    p = sub.add_parser(
        "demo",
        help="one-shot learning end to end, offline (MANN vs kNN)",
        description=_DEMO_DESCRIPTION,
        epilog=_DEMO_EPILOG,
        formatter_class=_Formatter,
    )
    p.add_argument(
        "--model",
        default="omniglot_5way_add_ks",
        metavar="NAME_OR_PATH",
        help="shipped model name or weights file (default: the best shipped "
        "model on held-out Omniglot, see benchmarks/results/table1.md)",
    )
    p.add_argument(
        "--dataset",
        choices=["auto", "digits", "omniglot"],
        default="auto",
        help="auto: held-out Omniglot characters if present, else digits",
    )
    p.add_argument(
        "--episodes", type=_positive_int, default=200, metavar="N", help="episodes"
    )
    p.add_argument(
        "--river-episodes",
        type=_nonneg_int,
        default=None,
        metavar="N",
        help="run River's kNN on the first N episodes only (default: all)",
    )
    p.add_argument("--data-home", metavar="DIR", default=None, help=_DATA_HELP)
    p.add_argument(
        "--plot", metavar="PATH", default="sk_mann_demo.png", help="plot to write"
    )
    p.add_argument("--no-plot", action="store_true", help="do not write a plot")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of the episodes"
    )
    p.add_argument("--threads", help=threads_help, **threads)
    p.set_defaults(func=_cmd_demo)

    # train -----------------------------------------------------------------
    p = sub.add_parser(
        "train",
        help="meta-train a MANN on Omniglot and write a weights file",
        description=_TRAIN_DESCRIPTION,
        epilog=_TRAIN_EPILOG,
        formatter_class=_Formatter,
    )
    g = p.add_argument_group("data and output")
    g.add_argument("--data-home", metavar="DIR", default=None, help=_DATA_HELP)
    g.add_argument(
        "--download",
        action="store_true",
        help="download the Omniglot zips into the data home if they are missing",
    )
    g.add_argument("--out", metavar="PATH", required=True, help="weights file to write")
    g.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="save every epoch here; re-running the command resumes from it",
    )
    g = p.add_argument_group("training")
    g.add_argument(
        "--episodes",
        type=_positive_int,
        default=100_000,
        metavar="N",
        help="training episodes, rounded up to whole epochs",
    )
    g.add_argument(
        "--batch-size",
        type=_positive_int,
        default=16,
        metavar="N",
        help="episodes per optimiser step",
    )
    g.add_argument(
        "--batches-per-epoch",
        type=_positive_int,
        default=100,
        metavar="N",
        help="optimiser steps per epoch (the unit of checkpoints and logs)",
    )
    g.add_argument(
        "--lr", type=_positive_float, default=1e-3, metavar="X", help="learning rate"
    )
    g.add_argument(
        "--lr-schedule",
        choices=["constant", "cosine"],
        default="constant",
        help="cosine: from --lr down to 5%% of it over --episodes",
    )
    g.add_argument(
        "--optimizer",
        choices=["adam", "rmsprop"],
        default="adam",
        help="rmsprop: decay 0.95, momentum 0.9",
    )
    g.add_argument(
        "--max-minutes",
        type=_positive_float,
        metavar="M",
        help="stop after the first epoch that ends past M minutes",
    )
    g.add_argument(
        "--eval-episodes",
        type=_positive_int,
        default=200,
        metavar="N",
        help="held-out episodes of each accuracy check",
    )
    g.add_argument(
        "--eval-every",
        type=_positive_int,
        default=5,
        metavar="E",
        help="epochs between held-out accuracy checks",
    )
    g.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of weights and episodes"
    )
    g.add_argument("--threads", help=threads_help, **threads)
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the training pass: 1.2-1.9x faster on a CPU after a "
        "one-off compilation of a few minutes (needs a C++ compiler)",
    )
    g.add_argument(
        "--cpp-wrapper",
        action="store_true",
        help="with --compile: the compiled step calls its kernels from generated "
        "C++, not Python (inductor's cpp_wrapper): 5-8%% more episodes/s, for a "
        "first compilation 2-2.5x as long",
    )
    g.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="W",
        help="processes sharing each batch, one thread each (data parallel; "
        "Linux/macOS CPU; --batch-size must be a multiple): one per core was "
        "1.08x one process on all cores on one 2-core host, no faster on "
        "another; benchmarks/speed.py measures it",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("episodes and network")
    g.add_argument(
        "--n-way",
        type=_positive_int,
        default=5,
        metavar="N",
        help="classes per episode",
    )
    g.add_argument(
        "--n-per-class",
        type=_positive_int,
        default=10,
        metavar="N",
        help="samples of each class per episode",
    )
    g.add_argument(
        "--labels",
        choices=["onehot", "string"],
        default="onehot",
        help="one-hot labels, or the paper's 5-character string labels",
    )
    g.add_argument(
        "--controller",
        choices=["lstm", "ff"],
        default="lstm",
        help="LSTM or feed-forward controller",
    )
    g.add_argument(
        "--controller-size",
        type=_positive_int,
        default=200,
        metavar="N",
        help="controller units",
    )
    g.add_argument(
        "--n-slots", type=_positive_int, default=128, metavar="N", help="memory slots"
    )
    g.add_argument(
        "--slot-size",
        type=_positive_int,
        default=40,
        metavar="N",
        help="width of a memory slot",
    )
    g.add_argument(
        "--n-reads", type=_positive_int, default=4, metavar="N", help="read heads"
    )
    g.add_argument(
        "--write-content",
        choices=["key", "add"],
        default="key",
        help="what a head writes: its key (the paper) or a separate add vector "
        "(learns one-shot recall in fewer episodes)",
    )
    g.add_argument(
        "--key-strength",
        action="store_true",
        help="each head also emits a key strength that sharpens its read (as "
        "the Neural Turing Machine's; not in the paper)",
    )
    p.set_defaults(func=_cmd_train)

    # evaluate --------------------------------------------------------------
    p = sub.add_parser(
        "evaluate",
        help="per-instance accuracy on held-out Omniglot vs kNN baselines",
        description=_EVALUATE_DESCRIPTION,
        epilog=_EVALUATE_EPILOG,
        formatter_class=_Formatter,
    )
    p.add_argument("model", metavar="MODEL", help="weights file or shipped model name")
    p.add_argument("--data-home", metavar="DIR", default=None, help=_DATA_HELP)
    p.add_argument(
        "--split",
        choices=["paper", "background"],
        default="paper",
        help="held-out characters: paper (ids 1201-1623) or background "
        "(images_evaluation.zip)",
    )
    p.add_argument(
        "--episodes", type=_positive_int, default=1000, metavar="N", help="episodes"
    )
    p.add_argument(
        "--river-episodes",
        type=_nonneg_int,
        default=None,
        metavar="N",
        help="run River's kNN on the first N episodes only (default: all)",
    )
    p.add_argument(
        "--n-way",
        type=_positive_int,
        metavar="N",
        help="classes per episode (default: the model's)",
    )
    p.add_argument(
        "--n-per-class",
        type=_positive_int,
        default=10,
        metavar="N",
        help="samples of each class per episode",
    )
    p.add_argument("--no-baselines", action="store_true", help="skip the kNN baselines")
    p.add_argument(
        "--seed", type=int, default=EVAL_SEED, metavar="S", help="seed of the episodes"
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--plot", metavar="PATH", help="also write a plot")
    p.add_argument("--threads", help=threads_help, **threads)
    p.set_defaults(func=_cmd_evaluate)

    # benchmark -------------------------------------------------------------
    p = sub.add_parser(
        "benchmark",
        help="run a benchmark script of the source repository",
        description=_BENCHMARK_DESCRIPTION,
        epilog=_BENCHMARK_EPILOG,
        formatter_class=_Formatter,
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="e.g. table1 or speed")
    p.add_argument(
        "args", nargs=argparse.REMAINDER, metavar="ARGS", help="passed to the script"
    )
    p.set_defaults(func=_cmd_benchmark)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``sk-mann`` on ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        message = " ".join(str(exc).split())  # always one line
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _out(text: str = "") -> None:
    print(text, flush=True)


def _para(label: str, text: str, width: int = 88) -> None:
    """Print ``text`` wrapped, after a left column holding ``label``."""
    import textwrap

    indent = " " * 10 if label else ""
    _out(
        textwrap.fill(
            text,
            width=width,
            initial_indent=f"{label:<10}" if label else "",
            subsequent_indent=indent,
            break_on_hyphens=False,
            break_long_words=False,
        )
    )


def _finite_or_none(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """NaN (instance never reached) -> None, for strict JSON."""
    import math

    clean = {}
    for label, res in results.items():
        clean[label] = {
            k: [None if isinstance(v, float) and math.isnan(v) else v for v in val]
            if isinstance(val, list)
            else val
            for k, val in res.items()
        }
    return clean


def _versions() -> dict[str, str]:
    import numpy
    import sklearn
    import torch

    return {
        "sk_mann": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
    }


def _ordinal(k: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(k, f"{k}th")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _check_writable_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path).expanduser()
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(
            f"cannot write {what} {str(path)!r}: "
            f"directory {str(parent)!r} does not exist."
        )
    if path.is_dir():
        raise UserError(f"cannot write {what} {str(path)!r}: it is a directory.")
    return path


def _summary_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """A plain reading of the 1st and 2nd instance columns."""
    from ._demo import NETWORK_LABEL, SKLEARN_LABEL

    lines = []
    net = results.get(NETWORK_LABEL)
    knn = results.get(SKLEARN_LABEL)
    if net is None:
        return lines
    a1, a2 = 100 * net["accuracy"][0], 100 * net["accuracy"][1]
    lines.append(
        f"{NETWORK_LABEL}: {a1:.1f}% on the 1st instance (a guess), {a2:.1f}% on the "
        "2nd (after one labelled example of the class)."
    )
    if knn is not None:
        k2 = 100 * knn["accuracy"][1]
        diff = a2 - k2
        ci = 100 * (net["ci95"][1] + knn["ci95"][1])
        if abs(diff) <= ci:
            verdict = "no clear difference at this number of episodes"
        elif diff > 0:
            verdict = f"{NETWORK_LABEL} ahead by {diff:.1f} points"
        else:
            verdict = f"kNN ahead by {-diff:.1f} points"
        lines.append(f"1-NN on raw pixels at the 2nd instance: {k2:.1f}% ({verdict}).")
        lines.append(
            "(kNN only predicts labels it has stored, so on a 1st instance it is "
            "right only by the blind guess at the start of an episode.)"
        )
    return lines


# ---------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import _demo
    from .datasets import get_data_home

    start = time.perf_counter()
    _set_threads(args.threads)
    plot_path = None if args.no_plot else _check_writable_file(args.plot, "the plot")
    json_path = None if args.json is None else _check_writable_file(args.json, "JSON")

    _out("sk-mann demo: one-shot learning with a Memory-Augmented Neural Network")
    _out("(Santoro et al. 2016), side by side with nearest-neighbour baselines.")
    _out()
    model = _demo.load_model(args.model)
    _para("Model:", model.describe())

    folder = get_data_home(args.data_home) / "omniglot"
    dataset = args.dataset
    if dataset == "auto":
        if _demo.omniglot_zip_present(args.data_home):
            dataset = "omniglot"
            reason = f"Omniglot found in {folder}: using its held-out characters."
        else:
            dataset = "digits"
            reason = (
                f"Omniglot not found in {folder}: using scikit-learn's digits "
                "(to use Omniglot, put images_evaluation.zip there, or point "
                "--data-home or SK_MANN_DATA to a folder whose omniglot/ holds it)."
            )
    else:
        reason = f"--dataset {dataset}."
    if dataset == "omniglot":
        try:
            X, y = _demo.load_omniglot_test(args.data_home)
        except UserError as exc:
            raise UserError(
                f"{exc} Or run the demo on scikit-learn's bundled digits: "
                "--dataset digits."
            ) from exc
        data_desc = (
            "Omniglot held-out characters (ids 1201-1623 of the paper's split, "
            f"never used in meta-training): {len(set(y.tolist()))} classes, "
            f"{len(y)} images."
        )
    else:
        X, y = _demo.load_digits_data()
        data_desc = (
            f"scikit-learn's handwritten digits: {len(set(y.tolist()))} classes, "
            f"{len(y)} images, 8x8 resized to 20x20."
        )
    _demo.check_input_size(model, X.shape[1], f"the {dataset} data")
    n_way = _demo.episode_n_way(model, len(set(y.tolist())), None)
    _para("Data:", f"{data_desc} {reason}")
    _para(
        "Episodes:",
        f"{args.episodes} episodes of {n_way} classes x 10 samples in random order; "
        "labels assigned at random in each episode; predict, then learn the true "
        "label; memory wiped between episodes. Every model sees the same episodes.",
    )
    if dataset == "digits":
        _para(
            "Note:",
            "the model was meta-trained on Omniglot characters: handwritten digits "
            "are a different domain for it. The numbers below are what it does on "
            "them, as measured.",
        )
    _out()

    results = _demo.compare_on_episodes(
        model,
        X,
        y,
        n_way=n_way,
        episodes=args.episodes,
        river_episodes=args.river_episodes,
        seed=args.seed,
        log=_out,
    )
    _out()
    _out("Accuracy (%) at each instance of a class, with 95% confidence half-widths:")
    _out()
    _print_results(results, args.episodes)
    _out()
    chance = 1.0 / model.scheme.n_codes
    if plot_path is not None:
        title = (
            f"{n_way} new classes per episode ({dataset}), "
            f"model {Path(model.source).name}"
        )
        _demo.plot_curves(results, plot_path, title=title, chance=chance)
        _out(f"Plot written to {plot_path}")
    elapsed = time.perf_counter() - start
    if json_path is not None:
        payload = {
            "command": "demo",
            "dataset": {"name": dataset, "reason": reason, "description": data_desc},
            "model": {
                "source": model.source,
                "path": str(model.path),
                "shipped": model.shipped,
                "config": model.config,
                "manifest": model.manifest,
            },
            "protocol": {
                "n_way": n_way,
                "n_per_class": 10,
                "labels": model.config.get("labels"),
                "episodes": args.episodes,
                "seed": args.seed,
                "chance_first_instance": chance,
            },
            "results": _finite_or_none(results),
            "plot": None if plot_path is None else str(plot_path),
            "elapsed_seconds": round(elapsed, 2),
            "date": _now(),
            "versions": _versions(),
        }
        _demo.write_json(json_path, payload)
        _out(f"Results written to {json_path}")
    _out(f"Done in {elapsed:.1f} s.")
    return 0


# ---------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------

_RESUME_KEYS = (
    "labels",
    "n_way",
    "n_per_class",
    "batch_size",
    "batches_per_epoch",
    "lr",
    "lr_schedule",
    "optimizer",
    "seed",
    "kwargs",
)
#: Settings that records of older versions lack, as those versions had them.
_RESUME_DEFAULTS = {"lr_schedule": "constant", "key_strength": False}


def _manifest_path(out: Path) -> Path:
    from ._demo import _manifest_path as impl

    return impl(out)


def _check_resume(ckpt: Path, options: dict) -> None:
    """Refuse to resume a checkpoint made with other settings."""
    import json

    try:
        ckpt.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --checkpoint-dir {str(ckpt)!r}: {exc}") from exc
    record = ckpt / "sk_mann_train.json"
    if record.is_file():
        try:
            old = json.loads(record.read_text())
        except ValueError:
            old = None
        if old is not None:

            def flat(opts: dict) -> dict:
                out = dict(_RESUME_DEFAULTS)
                out.update({k: opts[k] for k in _RESUME_KEYS if k in opts})
                out.update(opts.get("kwargs") or {})
                out.pop("kwargs", None)
                return out

            before, now = flat(old), flat(options)
            diffs = [
                f"{k}: checkpoint={before.get(k)!r}, now={v!r}"
                for k, v in now.items()
                if before.get(k) != v
            ]
            if diffs:
                raise UserError(
                    f"--checkpoint-dir {str(ckpt)!r} holds a run with other settings "
                    f"({'; '.join(diffs)}). Use the same options to resume, or another "
                    "directory to start afresh."
                )
            return
    record.write_text(json.dumps(options, indent=2) + "\n")


def _cmd_train(args: argparse.Namespace) -> int:
    import json

    import torch

    from . import _demo, _parallel
    from .episodes import EpisodeSampler
    from .labels import make_label_scheme
    from .metrics import evaluate_network
    from .model import build_network
    from .pretrained import save_weights
    from .training import meta_train

    start = time.perf_counter()
    _set_threads(args.threads)
    out = _check_writable_file(args.out, "the weights file")
    if out.suffix != ".pt":
        _out(f"Note: weights files are usually named *.pt; writing {out} anyway.")
    if args.labels == "onehot" and args.n_way < 2:
        raise UserError("--n-way must be at least 2.")
    if args.cpp_wrapper and not args.compile:
        raise UserError(
            "--cpp-wrapper is a setting of --compile: add --compile, or drop "
            "--cpp-wrapper."
        )
    if args.batch_size % args.workers:
        raise UserError(
            f"--batch-size {args.batch_size} is not a multiple of --workers "
            f"{args.workers}: each worker trains on an equal share of every batch."
        )
    if args.workers > 1 and not _parallel.fork_available():
        raise UserError(
            f"--workers {args.workers}: worker processes are started by fork, which "
            "this platform lacks (Windows); train with --workers 1."
        )
    try:
        scheme = make_label_scheme(args.labels, args.n_way)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if args.n_way > scheme.n_codes:
        raise UserError(
            f"--n-way {args.n_way}: {args.labels} labels have only {scheme.n_codes}."
        )

    X_tr, y_tr = _demo.load_omniglot_train(args.data_home, download=args.download)
    X_te, y_te = _demo.load_omniglot_test(args.data_home)
    kwargs = dict(PAPER_KWARGS)
    kwargs.update(
        controller=args.controller,
        controller_size=args.controller_size,
        n_slots=args.n_slots,
        slot_size=args.slot_size,
        n_reads=args.n_reads,
        write_content=args.write_content,
        key_strength=args.key_strength,
    )
    if args.n_reads > args.n_slots:
        raise UserError(
            f"--n-reads {args.n_reads} must not exceed --n-slots {args.n_slots}."
        )
    try:
        train_s = EpisodeSampler(
            X_tr,
            y_tr,
            n_way=args.n_way,
            n_per_class=args.n_per_class,
            scheme=scheme,
            image_shape=(IMAGE, IMAGE),
            rotate_classes=True,
            augment=True,
        )
        test_s = EpisodeSampler(
            X_te, y_te, n_way=args.n_way, n_per_class=args.n_per_class, scheme=scheme
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    config = {
        "network": "mann",
        "n_inputs": IMAGE * IMAGE,
        "labels": args.labels,
        "n_way": args.n_way,
        "kwargs": kwargs,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        module = build_network(
            "mann", IMAGE * IMAGE, scheme.width, scheme.width, **kwargs
        )

    options = {
        "labels": args.labels,
        "n_way": args.n_way,
        "n_per_class": args.n_per_class,
        "batch_size": args.batch_size,
        "batches_per_epoch": args.batches_per_epoch,
        "lr": args.lr,
        "lr_schedule": args.lr_schedule,
        "optimizer": args.optimizer,
        "seed": args.seed,
        "kwargs": kwargs,
    }
    if args.checkpoint_dir is not None:
        _check_resume(Path(args.checkpoint_dir).expanduser(), options)
    per_epoch = args.batch_size * args.batches_per_epoch
    n_epochs = max(1, -(-args.episodes // per_epoch))
    _out(
        f"Meta-training a MANN ({args.controller} controller {args.controller_size}, "
        f"memory {args.n_slots}x{args.slot_size}, {args.n_reads} reads) on "
        f"{len(set(y_tr.tolist()))} Omniglot characters x 4 rotations;"
    )
    _out(
        f"{n_epochs} epochs of {per_epoch} episodes ({args.n_way} classes x "
        f"{args.n_per_class} samples, {args.labels} labels), held-out accuracy every "
        f"{args.eval_every} epochs on {len(set(y_te.tolist()))} other characters."
    )
    if args.checkpoint_dir is None:
        _out("No --checkpoint-dir: an interrupted run cannot be resumed.")
    try:
        net = meta_train(
            module,
            train_s,
            n_episodes=args.episodes,
            batch_size=args.batch_size,
            batches_per_epoch=args.batches_per_epoch,
            optimizer=args.optimizer,
            lr=args.lr,
            lr_schedule=args.lr_schedule,
            eval_sampler=test_s,
            eval_episodes=args.eval_episodes,
            eval_every=args.eval_every,
            seed=args.seed,
            checkpoint_dir=args.checkpoint_dir,
            max_time=None if args.max_minutes is None else 60.0 * args.max_minutes,
            progress_bar=not args.no_progress,
            compile=args.compile,
            compile_options={"cpp_wrapper": True} if args.cpp_wrapper else None,
            workers=args.workers,
        )
    except RuntimeError as exc:
        if args.checkpoint_dir is None or "state_dict" not in str(exc):
            raise  # not the checkpoint's fault: keep the whole story
        # A checkpoint of another architecture.
        raise UserError(
            f"could not resume from --checkpoint-dir {args.checkpoint_dir!r}: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    epochs_done = len(net.history)
    episodes_done = epochs_done * per_epoch
    complete = epochs_done >= n_epochs
    module = net.module_
    res = evaluate_network(
        module,
        test_s,
        n_episodes=args.eval_episodes,
        seed=EVAL_SEED,
        instances=tuple(range(1, 11)),
    )
    try:
        save_weights(out, module, config)
    except OSError as exc:
        raise UserError(f"cannot write the weights file {str(out)!r}: {exc}") from exc
    manifest = {
        "name": out.stem,
        "network": "mann",
        "n_inputs": IMAGE * IMAGE,
        "labels": args.labels,
        "n_way": args.n_way,
        "kwargs": kwargs,
        "training": {
            "episodes": episodes_done,
            "episodes_requested": args.episodes,
            "complete": complete,
            "batch_size": args.batch_size,
            "batches_per_epoch": args.batches_per_epoch,
            "optimizer": args.optimizer,
            "lr": args.lr,
            "lr_schedule": args.lr_schedule,
            "clip_value": 10.0,
            "seed": args.seed,
            "n_per_class": args.n_per_class,
            "wall_seconds": round(
                float(sum(h.get("dur", 0.0) for h in net.history)), 1
            ),
            "data": "Omniglot characters 1-1200 (paper split), 20x20, max-normalised",
            "augmentation": "90-degree rotations as new classes; shift +-10/105 of the "
            "side and rotation +-11.25 deg",
        },
        "heldout_accuracy": {
            str(k): acc for k, acc in zip(res["instances"], res["accuracy"])
        },
        "heldout_ci95": {str(k): ci for k, ci in zip(res["instances"], res["ci95"])},
        "heldout_episodes": res["n_episodes"],
        "heldout_seed": EVAL_SEED,
        "input": "20x20 Omniglot-style image, strokes=1, background=0, "
        "max-normalised, flattened",
        "options": {k: v for k, v in vars(args).items() if k != "func"},
        "produced_by": " ".join([PROG, *sys.argv[1:]]) if sys.argv else PROG,
        "date": _now(),
        "versions": _versions(),
    }
    manifest_file = _manifest_path(out)
    try:
        manifest_file.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write {str(manifest_file)!r}: {exc}") from exc
    acc = res["accuracy"]
    _out(
        f"Held-out accuracy, final check ({res['n_episodes']} episodes, seed "
        f"{EVAL_SEED} as in `sk-mann evaluate`): "
        + ", ".join(f"{_ordinal(k)} {100 * acc[k - 1]:.1f}%" for k in (1, 2, 3, 5, 10))
    )
    state = "complete" if complete else "stopped early"
    _out(f"Trained {episodes_done:,} of {n_epochs * per_epoch:,} episodes ({state}).")
    if not complete and args.checkpoint_dir is not None:
        _out("Re-run the same command to continue from the checkpoint.")
    _out(f"Weights written to {out}, manifest to {manifest_file}")
    _out(f"Done in {time.perf_counter() - start:.1f} s.")
    return 0


# ---------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------


def _print_results(results: dict, episodes: int) -> None:
    """The per-instance table, its summary lines, and River's episode count."""
    from . import _demo

    _out(_demo.format_table(results))
    _out()
    for line in _summary_lines(results):
        _para("", line)
    river = results.get(_demo.RIVER_LABEL)
    if river is not None and river["n_episodes"] < episodes:
        _para(
            "",
            f"River's kNN ran on the first {river['n_episodes']} of the episodes "
            "(--river-episodes).",
        )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import _demo

    start = time.perf_counter()
    _set_threads(args.threads)
    json_path = None if args.json is None else _check_writable_file(args.json, "JSON")
    plot_path = (
        None if args.plot is None else _check_writable_file(args.plot, "the plot")
    )
    model = _demo.load_model(args.model)
    X, y = _demo.load_omniglot_test(args.data_home, split=args.split)
    _demo.check_input_size(model, X.shape[1], "Omniglot at 20x20")
    n_classes = len(set(y.tolist()))
    n_way = _demo.episode_n_way(model, n_classes, args.n_way)
    _para("Model:", model.describe())
    _para(
        "Data:",
        f"held-out Omniglot characters ({args.split} split): {n_classes} classes; "
        f"{args.episodes} episodes of {n_way} classes x {args.n_per_class} samples, "
        f"seed {args.seed}; every model sees the same episodes.",
    )
    _out()
    results = _demo.compare_on_episodes(
        model,
        X,
        y,
        n_way=n_way,
        n_per_class=args.n_per_class,
        episodes=args.episodes,
        river_episodes=args.river_episodes,
        baselines=not args.no_baselines,
        seed=args.seed,
        log=_out,
    )
    _out()
    _print_results(results, args.episodes)
    if plot_path is not None:
        title = (
            f"Held-out Omniglot, {n_way} classes per episode, {Path(model.source).name}"
        )
        _demo.plot_curves(
            results, plot_path, title=title, chance=1.0 / model.scheme.n_codes
        )
        _out(f"Plot written to {plot_path}")
    elapsed = time.perf_counter() - start
    if json_path is not None:
        payload = {
            "command": "evaluate",
            "model": {
                "source": model.source,
                "path": str(model.path),
                "config": model.config,
                "manifest": model.manifest,
            },
            "protocol": {
                "dataset": f"omniglot, {args.split} split, test characters",
                "n_way": n_way,
                "n_per_class": args.n_per_class,
                "episodes": args.episodes,
                "seed": args.seed,
            },
            "results": _finite_or_none(results),
            "elapsed_seconds": round(elapsed, 2),
            "date": _now(),
            "versions": _versions(),
        }
        _demo.write_json(json_path, payload)
        _out(f"Results written to {json_path}")
    _out(f"Done in {elapsed:.1f} s.")
    return 0


# ---------------------------------------------------------------------------
# benchmark
# ---------------------------------------------------------------------------


def _benchmarks_dir() -> Path | None:
    """``benchmarks/`` of the source checkout this package runs from, if any."""
    candidate = Path(__file__).resolve().parent.parent / "benchmarks"
    return candidate if candidate.is_dir() else None


def _cmd_benchmark(args: argparse.Namespace) -> int:
    folder = _benchmarks_dir()
    if folder is None:
        raise UserError(
            "the benchmark scripts live in the sk_mann source repository "
            "(benchmarks/), which this installation does not include: clone the "
            "repository, install it with `pip install -e .` and run "
            "`sk-mann benchmark` from there."
        )
    available = sorted(
        p.stem for p in folder.glob("*.py") if not p.name.startswith("_")
    )
    if args.name is None:
        _out(f"Benchmarks in {folder}:")
        for name in available:
            _out(f"  {name}")
        _out(
            "Run one with `sk-mann benchmark NAME [ARGS...]`; "
            "`sk-mann benchmark NAME --help` shows its options."
        )
        return 0
    name = args.name[:-3] if args.name.endswith(".py") else args.name
    if name not in available:
        raise UserError(
            f"no benchmark named {args.name!r} in {folder}; available: "
            f"{', '.join(available) or 'none'}."
        )
    cmd = [sys.executable, str(folder / f"{name}.py"), *args.args]
    _out(
        f"Running: {' '.join(cmd)}",
    )
    return subprocess.call(cmd, cwd=str(folder.parent))
