"""Helpers shared by the benchmark scripts: run metadata and result files."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = Path(__file__).resolve().parent / "runs"  # checkpoints, git-ignored
REPO = Path(__file__).resolve().parents[1]


def default_data_home() -> str:
    """``SK_MANN_DATA`` or the repository's ``../shared/data``."""
    return os.environ.get("SK_MANN_DATA", str(REPO.parent / "shared" / "data"))


def metadata() -> dict:
    """Command, machine, library versions, date and git commit of this run."""
    import numpy
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "command": " ".join(["python"] + sys.argv),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit or None,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": numpy.__version__,
        },
    }


def write_json(name: str, payload: dict) -> Path:
    """Write ``benchmarks/results/<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def produced_by(payload: dict) -> str:
    """The provenance line closing every results page."""
    return (
        f"Produced by `{payload['command']}` on {payload['date']} "
        f"(commit {payload['git_commit']})."
    )
