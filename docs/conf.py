"""Sphinx configuration of the sk_mann documentation.

Build (from the repository root; must finish without warnings)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Environment variables:

``SK_MANN_PLOT_GALLERY``
    ``0`` renders the example gallery without executing the examples (fast);
    default ``1``: every example runs.
``SK_MANN_GALLERY_PATTERN``
    Regular expression of the example paths to execute (sphinx-gallery's
    ``filename_pattern``); default ``/plot_``, i.e. all of them.
``SK_MANN_DATA``
    Where the Omniglot zips are (see :func:`sk_mann.fetch_omniglot`); the River
    example falls back to scikit-learn's digits without them.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import sk_mann

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(DOCS))

from _md2rst import md_to_rst  # noqa: E402

# -- Project -----------------------------------------------------------------
project = "sk_mann"
author = "sk_mann developers"
copyright = "sk_mann developers"
release = sk_mann.__version__
version = ".".join(release.split(".")[:2])

# -- General -----------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]
templates_path = ["_templates"]
# _generated_results holds rst fragments that pages include (see generate_pages).
exclude_patterns = ["_build", "_generated_results"]
root_doc = "index"
default_role = "literal"
# intersphinx is deliberately not used: the build must work offline.

# -- autodoc / autosummary / numpydoc ----------------------------------------
autosummary_generate = True
autosummary_ignore_module_all = False  # module pages list what __all__ exports
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- sphinx-gallery ----------------------------------------------------------
_plot_gallery = os.environ.get("SK_MANN_PLOT_GALLERY", "1").lower() not in (
    "0",
    "false",
    "no",
)
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": os.environ.get("SK_MANN_GALLERY_PATTERN", r"/plot_"),
    "plot_gallery": _plot_gallery,
    "abort_on_example_error": True,
    "doc_module": ("sk_mann",),
    "backreferences_dir": "gen_modules/backreferences",
    "reference_url": {"sk_mann": None},
    "download_all_examples": False,
    "min_reported_time": 1,
    "matplotlib_animations": False,
}

# -- HTML --------------------------------------------------------------------
html_theme = "alabaster"
html_theme_options = {
    "description": "One-shot learning with Memory-Augmented Neural Networks",
    "fixed_sidebar": True,
    "show_relbars": True,
}
html_static_path: list[str] = []
html_title = f"sk_mann {release}"

# -- Generated pages: benchmark results and changelog -------------------------
RESULTS = REPO / "benchmarks" / "results"
GENERATED = DOCS / "_generated_results"

#: Benchmark result pages: markdown file, images it shows, command that makes it.
BENCHMARK_RESULTS = {
    "table1": {
        "images": ("table1.png", "table1_training.png"),
        "command": (
            "python benchmarks/table1.py train --model mann && "
            "python benchmarks/table1.py train --model mann_add && "
            "python benchmarks/table1.py train --model lstm && "
            "python benchmarks/table1.py evaluate"
        ),
    },
    "speed": {
        "images": ("speed.png",),
        "command": "python benchmarks/speed.py",
    },
    "priming": {
        "images": (),
        "command": "cd benchmarks && python priming.py",
    },
    "targets": {
        "images": (),
        "command": "python benchmarks/targets.py",
    },
    "time_to_accuracy": {
        "images": ("time_to_accuracy.png",),
        "command": (
            "python benchmarks/time_to_accuracy.py train --compile ... && "
            "python benchmarks/time_to_accuracy.py report"
        ),
    },
}


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text``, unless the file already holds it (keeps Sphinx's cache)."""
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _copy_if_changed(src: Path, dst: Path) -> None:
    if not dst.exists() or dst.read_bytes() != src.read_bytes():
        shutil.copyfile(src, dst)


def _benchmark_page(name: str, spec: dict) -> str:
    """rst of one results file, or a note that it is not produced yet."""
    md = RESULTS / f"{name}.md"
    if not md.exists():
        return (
            ".. note::\n\n"
            f"   ``benchmarks/results/{name}.md`` is not yet produced; run\n"
            f"   ``{spec['command']}`` from the repository root, then rebuild\n"
            "   the documentation.\n"
        )
    shown: list[str] = []

    def image(src: str) -> str | None:
        path = RESULTS / src
        if "/" in src or not path.exists():
            return None
        _copy_if_changed(path, GENERATED / src)
        shown.append(src)
        return f"/_generated_results/{src}"

    rst = md_to_rst(md.read_text(encoding="utf-8"), underlines="~^\"'+", image=image)
    for src in spec["images"]:  # figures the markdown does not show itself
        if src not in shown and (RESULTS / src).exists():
            _copy_if_changed(RESULTS / src, GENERATED / src)
            rst += f"\n.. image:: /_generated_results/{src}\n   :alt: {src}\n"
    return rst


def generate_pages(app) -> None:
    """Render ``benchmarks/results/*.md`` and ``CHANGELOG.md`` as rst includes."""
    GENERATED.mkdir(exist_ok=True)
    for name, spec in BENCHMARK_RESULTS.items():
        _write_if_changed(GENERATED / f"{name}.rst.inc", _benchmark_page(name, spec))
    changelog = REPO / "CHANGELOG.md"
    text = (
        md_to_rst(changelog.read_text(encoding="utf-8"), underlines="=-~^")
        if changelog.exists()
        else "Changelog\n=========\n\nNo ``CHANGELOG.md`` found.\n"
    )
    _write_if_changed(GENERATED / "changelog.rst.inc", text)


_SKLEARN_REQUEST_METHOD = re.compile(r"^set_\w+_request$")


def skip_members(app, what, name, obj, skip, options):
    """Hide members that are documented elsewhere.

    - the "Alias for field number N" members of NamedTuples: their fields are
      described in the class's Attributes section;
    - the ``set_{method}_request`` methods that scikit-learn's metadata routing
      adds to every estimator: their docstrings link into scikit-learn's own
      documentation (see scikit-learn's metadata routing user guide).
    """
    doc = getattr(obj, "__doc__", None) or ""
    if doc.startswith("Alias for field number"):
        return True
    if what == "class" and _SKLEARN_REQUEST_METHOD.match(name):
        return True
    return None


def setup(app):
    app.connect("builder-inited", generate_pages)
    app.connect("autodoc-skip-member", skip_members)
