"""Helpers shared by the benchmark scripts: run metadata and result files."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = Path(__file__).resolve().parent / "runs"  # checkpoints, git-ignored
REPO = Path(__file__).resolve().parents[1]


def default_data_home() -> str:
    """``SK_MANN_DATA`` or the repository's ``../shared/data``."""
    return os.environ.get("SK_MANN_DATA", str(REPO.parent / "shared" / "data"))


def cpu_model() -> str | None:
    """The CPU's model name (Linux), e.g. ``"AMD EPYC"``; None elsewhere.

    Sessions may run on different host CPUs: with the caches below, it tells
    whether two runs' absolute figures can be compared.
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_caches() -> dict[str, str]:
    """Cache sizes of CPU 0 as Linux reports them, e.g. ``{"L2": "512K"}``."""
    out = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        name = f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")
        out[name] = size
    return out


def machine_line(payload: dict) -> str:
    """``CPU: <model> (<cache sizes>), <n> CPUs`` from a run's metadata."""
    m = payload.get("machine", {})
    caches = ", ".join(f"{k} {v}" for k, v in m.get("caches", {}).items())
    model = m.get("cpu_model") or m.get("processor", "unknown CPU")
    return (
        f"CPU: {model}"
        + (f" ({caches})" if caches else "")
        + (f", {m['cpu_count']} CPUs" if m.get("cpu_count") else "")
    )


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
        "command": shlex.join(["python"] + sys.argv),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit or None,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(),
            "caches": cpu_caches(),
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
