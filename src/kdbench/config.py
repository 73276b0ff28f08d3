"""A grid config, validated whole before any job: `Grid` and the way the workflow reads config files.

A grid config (config/*.yaml) declares tables (kdbench.grid_tables); it refers to pair files
(kdbench.pairs), method labels (kdbench.labels) and data (kdbench.datafiles), and each cell resolves
to one run.yaml (kdbench.runs). `Grid` puts these together for the workflow and `kdbench check`;
each of them fails with a message naming the file and the key. Nothing here imports torch or
transformers: what needs them runs before the first job in kdbench.preflight.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

from kdbench import eval_protocol, pairs, registry, runs, validate
from kdbench.datafiles import Data
from kdbench.errors import KDBenchError
from kdbench.grid_tables import AXES, Tables, coerce_cli
from kdbench.jsonl import count_records
from kdbench.labels import Labels
from kdbench.schemas import check_schema, fill_defaults, load_schema, load_yaml
# Re-exported: where scripts and tests found them before the modules above took them over.
from kdbench.grid_tables import rule_names  # noqa: F401
from kdbench.paths import portable  # noqa: F401
from kdbench.schemas import schema_path  # noqa: F401
from kdbench.spec import accumulation_steps  # noqa: F401

# The Snakefile's config files: the embedded default grid, read only when no --configfile is given,
# and the labelled variants every grid shares; Snakemake merges each --configfile (and --config)
# over them. `kdbench check`/`resolve`/`run` read a config the same way (`workflow_grid`).
DEFAULT_CONFIG = "config/tiny.yaml"
SHARED_CONFIGS = ("config/variants.yaml",)


class Grid:
    """A validated grid config plus everything it refers to (pairs, plugins), checked up front."""

    def __init__(self, config: dict, where: str, workdir: Path | None = None, require_data: bool = True):
        self.where, self.workdir = where, Path(workdir or Path.cwd())
        config = coerce_cli(copy.deepcopy(config))
        schema = load_schema(self.workdir, "config")
        check_schema(config, schema, where)
        self.config = fill_defaults(config, schema)
        eval_protocol.check(self.config["evaluation"], where)  # what an engine cannot decode fails here
        self.labels = Labels(self.config["method_defs"], self.config["policy_defs"],
                             registry.discover(self.workdir / self.config["methods_dir"]), where)
        validate.check_grid(self.config, where, self.workdir, self.plugins)  # kdbench.validate: cross-key checks
        table_defaults = fill_defaults({}, schema["properties"]["tables"]["items"], root=schema)
        self.tables = Tables(self.config, where, self.workdir, table_defaults, self.method, self._check_pair).build()
        self.axes = {axis: _unique(v for t in self.tables.values() for v in t[axis]) for axis in AXES}
        self.data = Data(self.config, where, self.workdir, self.axes["sets"], require_data)
        validate.check_overrides(self.config["pair_overrides"], self.axes["pairs"], where)
        self.pairs = {name: pairs.load_pair(self._check_pair(name), self.workdir, self.config["pair_overrides"].get(name))
                      for name in self.axes["pairs"]}
        n_train = validate.train_size(self.config, self.data_files, self.workdir)  # known before any job, or None
        for name, pair in self.pairs.items():
            validate.check_pair(pair, str(self.pair_file(name)), self.workdir, self.config, n_train)
        for pair, label, _ in self.runs():
            pairs.check_method(str(self.pair_file(pair)), self.pairs[pair], label, self.method(label),
                               self.labels.crosstok_methods())
        runs.check_teacher_cache(self)  # `teacher_cache: true` where no run could read the states

    @property
    def results(self) -> str:
        return self.config["results"]

    @property
    def plugins(self) -> dict[str, registry.Method]:
        return self.labels.plugins

    @property
    def data_files(self) -> dict[str, str]:
        return self.data.files

    @property
    def absent_data(self) -> list[str]:
        return self.data.absent

    @property
    def prepared(self) -> list[str]:
        return self.data.prepared

    def prepare_job(self, name: str) -> tuple[dict[str, str], str]:
        return self.data.prepare_job(name)

    def missing_releases(self, prepared: list[str] | None = None) -> list[str]:
        return self.data.missing_releases(prepared)

    def pair_file(self, name: str) -> Path:
        return pairs.pair_file(self.workdir, name)

    def _check_pair(self, name: str) -> Path:
        path = self.pair_file(name)
        if not path.is_file():
            raise KDBenchError(f"{self.where}: key 'pairs': unknown pair '{name}' (no file {path}). "
                               f"Known pairs: {', '.join(pairs.known_pairs(self.workdir))}.")
        return path

    def check_claims(self, path: Path) -> None:
        """The run labels of a claims file (the workflow's claims rule reads it) are labels of this grid."""
        policies = {k for k, plugin in self.plugins.items() if plugin.kind == "token_policy"}
        validate.check_claims(path, self.method, {"sft", *self.config["method_defs"], *self.plugins},
                              {*policies, *self.config["policy_defs"]})

    def method(self, label: str) -> dict:
        """The resolved method of a label (kdbench.labels)."""
        return self.labels.method(label)

    # --- the run table -------------------------------------------------------------------------

    def runs(self, table: str | None = None, pair: str | None = None) -> list[tuple[str, str, int]]:
        """Every (pair, method label, seed) run of the grid (or of one table, one pair), teacher rows
        excluded, in table order without repeats."""
        return _unique((p, m, s) for t in self._chosen(table) for p in t["pairs"] if pair in (None, p)
                       for m in t["methods"] for s in t["seeds"])

    def evals(self, table: str | None = None, pair: str | None = None) -> list[tuple[str, str, int, str]]:
        """Every (pair, label, seed, set) evaluation the grid (or one table, one pair) needs, the
        teacher's row included."""
        return _unique((p, m, s, x) for t in self._chosen(table) for p in t["pairs"] if pair in (None, p)
                       for m, s in [("teacher", self.teacher_seed(p)), *((m, s) for m in t["methods"] for s in t["seeds"])]
                       for x in t["sets"])

    def _chosen(self, table: str | None) -> list[dict]:
        return list(self.tables.values()) if table is None else [self.tables[table]]

    def resolve_run(self, pair: str, label: str, seed: int) -> dict:
        """The fully resolved single-run config (kdbench.runs.resolve)."""
        return runs.resolve(self, pair, label, seed)

    def training(self, pair: str, teacher_sft: bool = False) -> dict:
        return pairs.training(self.pairs[pair], teacher_sft)

    def teacher_states(self, pair: str, label: str, seed: int) -> str | None:
        return runs.teacher_states(self, pair, label, seed)

    def teacher_states_spec(self, pair: str, seed: int, key: str) -> dict:
        return runs.teacher_states_spec(self, pair, seed, key)

    def reference(self, pair: str, table: str) -> dict | None:
        return runs.reference(self, pair, table)

    def teacher_path(self, pair: str) -> str:
        return runs.teacher_path(self, pair)

    def teacher_seed(self, pair: str) -> int:
        return self.pairs[pair]["teacher"]["seed"]

    def cross_tokenizer(self, pair: str) -> bool:
        """Teacher and student of `pair` read different tokenizers (kdbench.pairs.cross_tokenizer)."""
        return pairs.cross_tokenizer(self.pairs[pair])

    def tokenizer_dir(self, pair: str, role: str) -> str:
        return pairs.tokenizer_dir(self.results, pair, self.pairs[pair], role)

    def has_teacher_sft(self, pair: str) -> bool:
        return "sft" in self.pairs[pair]["teacher"]

    def job_resources(self, pair: str, job: str) -> dict[str, int]:
        """What one job of `pair` asks a cluster for (runtime minutes, mem_mb, cpus): the pair file's
        `resources.<job>` (job: init, train, evaluate, lm_eval, generate), its defaults filled."""
        return self.pairs[pair]["resources"][job]

    def evaluation_runtime(self, pair: str, data: list[str]) -> int:
        """Minutes for one evaluation job of `pair` over the sets in `data` (their JSONL files): the
        pair's `resources.evaluate.runtime` per set (loading, start-up) plus `runtime_per_1k` per
        1,000 sampled responses (examples × decoding seeds), so a UnNI job asks for more than a Vicuna one."""
        job = self.job_resources(pair, "evaluate")
        responses = sum(count_records(path) for path in data) * len(self.config["evaluation"]["decoding_seeds"])
        return job["runtime"] * len(data) + math.ceil(job["runtime_per_1k"] * responses / 1000)


def _unique(items) -> list:
    """The items without repeats, first occurrence kept (order matters: it is the table's row order)."""
    return list(dict.fromkeys(items))


def read_config(path: Path) -> dict:
    """One grid config file as a mapping (an empty file is {}), or an error naming the file (and line)."""
    config = load_yaml(path)
    if config is not None and not isinstance(config, dict):
        raise KDBenchError(f"{path}: a grid config is a mapping of keys (results, tables, data, ...), "
                           f"not a {type(config).__name__}.")
    return config or {}


def load_grid(*paths: Path, workdir: Path | None = None, require_data: bool = True) -> Grid:
    """A grid from config files merged in order (later keys win; mappings merge), as Snakemake does."""
    workdir = Path(workdir or Path.cwd())
    merged: dict = {}
    for path in paths:
        _merge(merged, read_config(path))
    return Grid(merged, ", ".join(str(p) for p in paths), workdir, require_data)


def base_configs(configfiles: tuple | list = ()) -> tuple[str, ...]:
    """The Snakefile's own config files read under `configfiles`: config/tiny.yaml only when there are none."""
    return (*(() if configfiles else (DEFAULT_CONFIG,)), *SHARED_CONFIGS)


def workflow_grid(*configfiles: Path, workdir: Path | None = None, require_data: bool = True) -> Grid:
    """The grid `snakemake [--configfile <configfiles>]` builds: the Snakefile's `base_configs`
    first (those present), then `configfiles`."""
    workdir = Path(workdir or Path.cwd())
    here = workdir.resolve() == Path.cwd().resolve()  # then name them as the user sees them
    base = [Path(name) if here else workdir / name for name in base_configs(configfiles) if (workdir / name).is_file()]
    return load_grid(*base, *configfiles, workdir=workdir, require_data=require_data)


def _merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value

