"""Data set loaders for sk_mann."""

from __future__ import annotations

from ._omniglot import fetch_omniglot, get_data_home

__all__ = ["fetch_omniglot", "get_data_home"]
