"""Issue 5's speed targets, judged from the committed benchmark output.

    python benchmarks/targets.py

Reads ``benchmarks/results/speed.json`` (``speed.py``) and
``benchmarks/results/time_to_accuracy.json`` (``time_to_accuracy.py report``)
and writes ``benchmarks/results/targets.{json,md}``: each target, the figures
that decide it, and the verdict. Nothing here is typed by hand: rerun it after
either benchmark (``update_readme.py`` then copies the table into the README).

Sessions run on different hosts, so the time trials are judged on the CPU of
the speed run (``config["cpu"]``, recorded since session 16); runs on other or
unrecorded CPUs are counted apart.
"""

from __future__ import annotations

import json
from collections import defaultdict

from _common import RESULTS, machine_line, metadata, produced_by, write_json
from time_to_accuracy import TARGET_MINUTES as MINUTES
from time_to_accuracy import TARGET_SECOND as SECOND_INSTANCE
from time_to_accuracy import run_met as _run_met

TRAIN_EPISODES_PER_S = 300.0
STREAM_US = 100.0
PREDICT_ROWS_PER_S = 100_000.0
PEAK_MIB = 1024.0
PAPER_BATCH = 16


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def _training_rows(speed: dict) -> list[dict]:
    """The speed run's training rows, eager and compiled."""
    return speed.get("training", []) + speed.get("training_compiled", [])


def training(speed: dict) -> dict:
    """>= 300 episodes/s at the paper's batch 16, eager or compiled."""
    rows = [r for r in _training_rows(speed) if r["batch_size"] == PAPER_BATCH]
    parts = [
        f"{'compiled' if r['compiled'] else 'eager'} {r['episodes_per_s']:.0f}"
        for r in rows
    ]
    best = max((r["episodes_per_s"] for r in rows), default=0.0)
    return {
        "target": f">= {TRAIN_EPISODES_PER_S:.0f} meta-training episodes/s at "
        f"batch {PAPER_BATCH}",
        "measured": ", ".join(parts) + " episodes/s" if parts else "not measured",
        "met": best >= TRAIN_EPISODES_PER_S,
    }


def larger_batches(speed: dict, tta: dict, cpu: str | None) -> dict:
    """The same target at a larger batch, if accuracy holds: met where a batch
    runs at >= 300 episodes/s and a time trial at that batch, on this CPU,
    met the accuracy target."""
    rows = [r for r in _training_rows(speed) if r["batch_size"] > PAPER_BATCH]
    parts = [
        f"{r['batch_size']} {'compiled' if r['compiled'] else 'eager'} "
        f"{r['episodes_per_s']:.0f}"
        for r in sorted(rows, key=lambda r: (r["batch_size"], r["compiled"]))
    ]
    fast = sorted(
        {r["batch_size"] for r in rows if r["episodes_per_s"] >= TRAIN_EPISODES_PER_S}
    )
    trials = {
        b: [
            r
            for r in tta.get("runs", {}).values()
            if r["config"]["batch_size"] == b and r["config"].get("cpu") == cpu
        ]
        for b in fast
    }
    accuracy = [
        f"batch {b}: "
        + (
            f"{sum(map(_run_met, runs))} of {len(runs)} time trials on this CPU "
            "met the accuracy target"
            if runs
            else "no time trial on this CPU"
        )
        for b, runs in trials.items()
    ]
    measured = "batch " + "; ".join(parts) + " episodes/s" if parts else "not measured"
    judged = [r for runs in trials.values() for r in runs]
    met = sum(map(_run_met, judged))
    return {
        "target": f">= {TRAIN_EPISODES_PER_S:.0f} episodes/s at a larger batch, "
        "if accuracy holds",
        "measured": measured + ("; " + "; ".join(accuracy) if accuracy else ""),
        # Not judged while no batch fast enough has a time trial here.
        "met": met > 0 if judged else None,
        "runs_met": [met, len(judged)],
    }


def _family(config: dict) -> str:
    """A time trial's network: the model and its overrides."""
    net = config.get("network") or {}
    pairs = ", ".join(f"{k}={str(v).lower()}" for k, v in sorted(net.items()))
    return config["model"] + (f" ({pairs})" if pairs else "")


def _summary(runs: list, where: str) -> str:
    """ "this CPU: 1 of 2 runs met (best 83.5%)" for a family's runs."""
    if not runs:
        return f"{where}: no run"
    best = max(100 * r["accuracy"][1] for r in runs)
    met = sum(map(_run_met, runs))
    return f"{where}: {met} of {len(runs)} runs met (best {best:.1f}%)"


def time_trials(tta: dict, cpu: str | None) -> list[dict]:
    """One row per network: the time trials on ``cpu``, and those elsewhere."""
    here, elsewhere = defaultdict(list), defaultdict(list)
    for run in tta.get("runs", {}).values():
        config = run["config"]
        if config.get("max_minutes", MINUTES) != MINUTES:
            continue  # a shorter budget: not a trial of this target
        same = cpu is not None and config.get("cpu") == cpu
        (here if same else elsewhere)[_family(config)].append(run)
    rows = []
    for family in sorted(set(here) | set(elsewhere)):
        runs = here[family]
        met = sum(map(_run_met, runs))
        rows.append(
            {
                "target": f"2nd instance >= {SECOND_INSTANCE}% in <= {MINUTES:.0f} "
                f"min, {family}",
                "measured": _summary(runs, "this CPU")
                + "; "
                + _summary(elsewhere[family], "other or unrecorded CPUs"),
                "met": met > 0 if runs else None,
                "runs_met": [met, len(runs)],
            }
        )
    return rows


def _best_rounds(streaming: dict, prefix: str) -> dict:
    """``{n_jobs label: median_us}`` of the MANN's streaming rows."""
    return {
        key[len(prefix) :].rstrip(")"): row["median_us"]
        for key, row in streaming.items()
        if key.startswith(prefix)
    }


def streaming_latency(speed: dict) -> dict:
    medians = _best_rounds(speed.get("streaming", {}), "MANN (sk_mann, ")
    parts = [f"{k} {v:.0f} us" for k, v in medians.items()]
    ok = [k for k, v in medians.items() if v <= STREAM_US]
    return {
        "target": f"predict_one + learn_one <= {STREAM_US:.0f} us median",
        "measured": ", ".join(parts) + " (best round)" if parts else "not measured",
        "met": bool(ok),
        "met_with": ok,
    }


def batch_predict(speed: dict) -> dict:
    s = speed.get("streaming", {})
    rates = {
        "default n_jobs": s.get("batch_predict_rows_per_s"),
        "n_jobs=2": s.get("batch_predict_rows_per_s_n_jobs_2"),
    }
    rates = {k: v for k, v in rates.items() if v is not None}
    ok = [k for k, v in rates.items() if v >= PREDICT_ROWS_PER_S]
    return {
        "target": f"batch predict >= {PREDICT_ROWS_PER_S:,.0f} rows/s",
        "measured": ", ".join(f"{k} {v:,.0f}" for k, v in rates.items())
        + " rows/s (best round)"
        if rates
        else "not measured",
        "met": bool(ok),
        "met_with": ok,
    }


def peak_memory(speed: dict) -> dict:
    figures = {
        "eager": speed.get("train_peak_rss_mib"),
        "compiled": speed.get("train_peak_rss_mib_compiled"),
        "2 workers together": (speed.get("train_peak_memory_workers") or {}).get(
            "peak_pss_sum_mib"
        ),
    }
    figures = {k: v for k, v in figures.items() if v is not None}
    return {
        "target": "peak memory of a meta-training run <= 1 GiB",
        "measured": ", ".join(f"{k} {v:.0f} MiB" for k, v in figures.items())
        if figures
        else "not measured",
        "met": bool(figures) and max(figures.values()) <= PEAK_MIB,
    }


def fast_state(speed: dict) -> dict:
    marks = speed.get("state_growth", [])
    sizes = {m["samples"]: m["state_bytes"] for m in marks}
    long_enough = max(sizes, default=0) >= 1_000_000
    return {
        "target": "fast state O(slots x width) over 1M samples",
        "measured": ", ".join(f"{n:,} samples: {b:,} B" for n, b in sizes.items())
        if sizes
        else "not measured",
        "met": long_enough and len(set(sizes.values())) == 1,
    }


def cuda(speed: dict) -> dict:
    measured = bool(speed.get("cuda"))
    return {
        "target": "CUDA path measured where a GPU is available",
        "measured": "measured" if measured else "no GPU on this host: not measured",
        "met": measured if measured else None,
    }


def verdicts(speed: dict, tta: dict) -> list[dict]:
    """Every target's row, in the issue's order."""
    cpu = speed.get("machine", {}).get("cpu_model")
    return [
        training(speed),
        larger_batches(speed, tta, cpu),
        *time_trials(tta, cpu),
        streaming_latency(speed),
        batch_predict(speed),
        peak_memory(speed),
        fast_state(speed),
        cuda(speed),
    ]


def _verdict_text(row: dict) -> str:
    if row["met"] is None:
        return "not judged"
    text = _met(row["met"])
    runs_met = row.get("runs_met")
    if row["met"] and runs_met and runs_met[1] > 1:  # not every run: say so
        text += f" by {runs_met[0]} of {runs_met[1]} runs"
    with_ = row.get("met_with")
    if row["met"] and with_ and len(with_) == 1:
        text += f" (with {with_[0]})"
    return text


def write_markdown(payload: dict) -> None:
    lines = [
        "# Issue 5's targets against the benchmark output",
        "",
        f"Speed run: {machine_line(payload['speed'])}; "
        f"`{payload['speed']['command']}` on {payload['speed']['date']} "
        f"(commit {payload['speed']['git_commit']}). Time trials: "
        f"`{payload['time_to_accuracy']['command']}` on "
        f"{payload['time_to_accuracy']['date']}, judged on the speed run's CPU.",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    for row in payload["verdicts"]:
        lines.append(f"| {row['target']} | {row['measured']} | {_verdict_text(row)} |")
    lines += [
        "",
        "A time trial (time-to-accuracy table) meets its target when its 2nd-"
        "instance accuracy on Table 1's 1000 held-out episodes is at least "
        f"{SECOND_INSTANCE}% and its whole run took at most {MINUTES:.0f} "
        "minutes of wall time. Not judged: no run of that kind on this CPU (for "
        "a larger batch: no time trial at a batch that runs fast enough), or no "
        "GPU to measure.",
        "",
        produced_by(payload),
    ]
    (RESULTS / "targets.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    speed = json.loads((RESULTS / "speed.json").read_text())
    tta = json.loads((RESULTS / "time_to_accuracy.json").read_text())
    keys = ("command", "date", "git_commit", "machine")
    payload = {
        "verdicts": verdicts(speed, tta),
        "speed": {k: speed.get(k) for k in keys},
        "time_to_accuracy": {k: tta.get(k) for k in keys},
        **metadata(),
    }
    write_json("targets", payload)
    write_markdown(payload)


if __name__ == "__main__":
    main()
