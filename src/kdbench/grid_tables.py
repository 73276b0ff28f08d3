"""A grid's tables and the top-level selection. Each table names its axes (pairs × methods × seeds,
evaluated on sets); the grid's runs are the union of every table's cells. The top-level axes
`pairs`, `methods`, `seeds`, `sets` then select a sub-grid (a cell is kept when it is in every given
axis); without `tables`, the top-level axes define one table, `main`. `extra_methods` adds labels
(a new plugin, say) to every table that takes them."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdbench.errors import KDBenchError
from kdbench.spec import SETS

AXES = ("pairs", "methods", "seeds", "sets")
TABLE_SEEDS = [1]  # a table's seeds when neither it nor the top level lists any; its sets: all of SETS
# A table becomes a target rule of its own name, so it may not take the name of a workflow rule. The
# names come from the workflow's own files (Snakefile, workflows/rules/*.smk, the plugin rules in
# methods/*.smk), so a new plugin rule needs no edit here; tests/workflow/test_grid.py checks the set
# against the rules Snakemake loads.
_RULE_LINE = re.compile(r"^(?:local)?rule\s+(\w+)\s*:", re.MULTILINE)


@functools.lru_cache(maxsize=None)
def rule_names(root: Path, methods_dir: str = "methods") -> frozenset[str]:
    """The rule names declared in the workflow's files under `root` (the config's workdir, its
    `methods_dir` holding the plugin rules)."""
    files = [root / "Snakefile", *sorted((root / "workflows/rules").glob("*.smk")),
             *sorted((root / methods_dir).glob("*.smk"))]
    return frozenset(m.group(1) for f in files if f.is_file() for m in _RULE_LINE.finditer(f.read_text()))


def coerce_cli(config: dict) -> dict:
    """`snakemake --config seeds=[1,2]` arrives as strings; a single value arrives unlisted."""
    for key in (*AXES, "extra_methods"):
        if isinstance(config.get(key), (str, int)):
            config[key] = [config[key]]
    if isinstance(config.get("seeds"), list):
        config["seeds"] = [int(s) if isinstance(s, str) and s.isdigit() else s for s in config["seeds"]]
    return config


class Tables:
    """Builds the tables of a validated grid config (its tables' defaults filled; `table_defaults`:
    those of a table, for the one the top-level axes define). `check_label(label)` and
    `check_pair(name)` raise for an unknown label or pair; `workdir` holds the workflow's rule files."""

    def __init__(self, config: dict, where: str, workdir: Path, table_defaults: dict,
                 check_label: Callable[[str], Any], check_pair: Callable[[str], Any]):
        self.config, self.where, self.workdir, self.table_defaults = config, where, workdir, table_defaults
        self.check_label, self.check_pair = check_label, check_pair

    def build(self) -> dict[str, dict]:
        """Each table with its cells after the top-level selection; a table left empty is dropped.
        Labels are checked in every table and selection, so a typo fails even where nothing runs."""
        cfg, where = self.config, self.where
        if cfg.get("tables") is None:  # the axes are the grid: one table, nothing to select
            missing = [axis for axis in AXES if axis not in cfg]
            if missing:
                raise KDBenchError(f"{where}: key '{missing[0]}' is required when the config has no 'tables' "
                                   f"(give the axes {', '.join(AXES)}, or declare tables).")
            declared = [{**self.table_defaults, "name": "main", **{axis: cfg[axis] for axis in AXES}}]
            selection = {}
        else:
            declared, selection = cfg["tables"], {axis: cfg[axis] for axis in AXES if axis in cfg}
        full = [self._table(i, spec) for i, spec in enumerate(declared)]
        for axis, chosen in selection.items():
            self._check_selection(axis, chosen, full)
        tables = {}
        for table in full:
            table |= {axis: [v for v in table[axis] if v in selection.get(axis, table[axis])] for axis in AXES}
            if all(table[axis] for axis in AXES):
                tables[table["name"]] = table
        if not tables:
            chosen = ", ".join(f"{axis}={values}" for axis, values in selection.items())
            raise KDBenchError(f"{where}: the selection {chosen} leaves no cell in any table "
                               f"({', '.join(t['name'] for t in full)}); a selected value must appear in a "
                               "table (to add a method to every table, list it in extra_methods).")
        return tables

    def _table(self, i: int, spec: dict) -> dict:
        """One declared table, its axes filled from the top level and its labels checked; `all` keeps
        its full layout (the selection narrows the axes, the table still draws every row and column)."""
        cfg, at = self.config, f"{self.where}: key 'tables.{i}' ({spec['name']})"
        if spec["name"] in [t["name"] for t in (cfg.get("tables") or [])[:i]]:
            raise KDBenchError(f"{at}: table name '{spec['name']}' is used twice.")
        if spec["name"] in (rules := rule_names(self.workdir, cfg["methods_dir"])):
            raise KDBenchError(f"{at}: '{spec['name']}' is the name of a workflow rule; a table becomes a target "
                               f"rule of its own name, so choose another (not {', '.join(sorted(rules))}).")
        fallback = {"pairs": None, "methods": [], "seeds": TABLE_SEEDS, "sets": list(SETS)}
        table = {"name": spec["name"], "title": spec.get("title", spec["name"]), "reference": spec.get("reference"),
                 **{axis: spec.get(axis, cfg.get(axis, fallback[axis])) for axis in AXES}}
        if table["pairs"] is None:
            raise KDBenchError(f"{at}: key 'pairs' is required (in the table or at the top level).")
        if spec["extra_methods"]:
            table["methods"] = table["methods"] + [m for m in cfg["extra_methods"] if m not in table["methods"]]
        for axis in AXES:
            for value in table[axis]:
                if table[axis].count(value) > 1:
                    raise KDBenchError(f"{at}: key '{axis}': '{value}' is listed twice.")
        for label in table["methods"]:
            self.check_label(label)
        table["all"] = {axis: list(table[axis]) for axis in AXES}
        return table

    def _check_selection(self, axis: str, chosen: list, tables: list[dict]) -> None:
        """A top-level axis given beside tables: each value valid, listed once, and in some table."""
        for value in chosen:
            if axis == "methods":
                self.check_label(value)
            elif axis == "pairs":
                self.check_pair(value)
            if chosen.count(value) > 1:
                raise KDBenchError(f"{self.where}: key '{axis}': '{value}' is listed twice.")
            if not any(value in t["all"][axis] for t in tables):
                raise KDBenchError(f"{self.where}: key '{axis}': '{value}' is in no table "
                                   f"({', '.join(t['name'] for t in tables)}), so it selects nothing; the top-level "
                                   "axes select from the tables (to add a method to every table, list it in "
                                   "extra_methods).")
