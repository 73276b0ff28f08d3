"""Paths as the workflow records them."""

from __future__ import annotations

import os
from pathlib import Path


def portable(path: str | Path) -> str:
    """`path` relative to the working directory (the checkout, where every job runs) when it lies
    inside it, else as given: what enters a run's config, its inputs and Snakemake's rerun triggers
    then survives copying or renaming the checkout with its results."""
    absolute = os.path.abspath(path)
    inside = os.path.commonpath([absolute, os.getcwd()]) == os.getcwd()
    return os.path.relpath(absolute) if inside else str(path)
