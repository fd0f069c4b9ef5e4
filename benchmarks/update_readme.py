"""Copy the benchmark tables from ``benchmarks/results/*.md`` into README.md.

    python benchmarks/update_readme.py

Replaces the text between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``
with the tables of ``benchmarks/results/NAME.md`` (title and image lines
dropped, image paths made relative to the repository root), so that every
number in the README comes from a benchmark's output.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def section(name: str) -> str:
    path = RESULTS / f"{name}.md"
    if not path.exists():
        return f"_Not produced yet: run `python benchmarks/{name}.py`._"
    lines = path.read_text().splitlines()
    body = [ln for ln in lines if not ln.startswith("# ") and not ln.startswith("![")]
    return "\n".join(body).strip()


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name in re.findall(r"<!-- results:(\w+) -->", text):
        pattern = re.compile(
            rf"(<!-- results:{name} -->)(.*?)(<!-- /results:{name} -->)", re.S
        )
        text = pattern.sub(lambda m, n=name: f"{m[1]}\n{section(n)}\n{m[3]}", text)
    readme.write_text(text)


if __name__ == "__main__":
    main()
