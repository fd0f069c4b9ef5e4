"""The benchmark scripts' verdicts: a target is reported met only when it is."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def tta(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import time_to_accuracy

    monkeypatch.setattr(time_to_accuracy, "RESULTS", tmp_path)
    yield time_to_accuracy
    sys.modules.pop("time_to_accuracy", None)


def _run(second: float, minutes: float, note: str | None = None) -> dict:
    return {
        "config": {
            "model": "mann_add",
            "batch_size": 16,
            "lr": 1e-3,
            "schedule": "cosine",
            "compile": True,
            "planned_episodes": 1000,
            "max_minutes": 15.0,
            "threads": 2,
            "note": note,
        },
        "episodes_trained": 1000,
        "train_minutes": minutes,
        "episodes_per_second": 300.0,
        "accuracy": [0.3, second] + [0.9] * 8,
        "curve": [],
    }


@pytest.mark.parametrize(
    "second, minutes, verdict",
    [(0.83, 14.0, "yes"), (0.827, 14.0, "no"), (0.90, 15.5, "no")],
)
def test_time_to_accuracy_verdict(tta, tmp_path, second, minutes, verdict):
    payload = {
        "eval_episodes": 1000,
        "runs": {"r": _run(second, minutes, note="a note")},
        "paper": [36.4, 82.8, 91.0, 92.6, 94.9, 98.1],
        "command": "python time_to_accuracy.py report",
        "date": "today",
        "git_commit": "abc",
    }
    tta.write_markdown(payload)
    text = (tmp_path / "time_to_accuracy.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| mann_add"))
    assert row.rstrip(" |").endswith(verdict)
    assert "--compile`" in text and "a note" in text
