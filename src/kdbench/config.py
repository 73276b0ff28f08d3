"""Config validation and run resolution: everything that can be wrong with a grid fails here,
before any job starts, with a message naming the file and the key.

A grid config (config/*.yaml) declares tables; each table names its axes (pairs × methods × seeds,
evaluated on sets), and the grid's runs are the union of every table's cells. The top-level axes
`pairs`, `methods`, `seeds`, `sets` then select a sub-grid (a cell is kept when it is in every
given axis); without `tables`, the top-level axes define one table, `main`. `extra_methods` adds
labels (a new plugin, say) to every table that takes them. A method
label is `base[+policy]`: `base` is a divergence plugin key or a `method_defs` label (or `sft`),
`policy` a token-policy plugin key or a `policy_defs` label. `resolve_run` turns one grid cell into
the fully resolved single-run config that `kdbench train` reads (results/runs/.../run.yaml).
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from kdbench import eval_protocol, registry, releases
from kdbench.spec import Evaluation, Method, Training, default_kd_ratio, required, with_spec
from kdbench.teacher_states import spec as stream_spec
from kdbench.teacher_states import states_path
from kdbench.errors import KDBenchError

ALL_SETS = ("dolly", "selfinst", "vicuna", "sni", "unni")
# The Snakefile's own config files (its `configfile:` directives, in this order): Snakemake loads them
# first and merges every --configfile over them, so a grid config is always read on top of the
# default grid and the shared labelled variants. `kdbench check`/`resolve`/`run` read them the same way.
BASE_CONFIGS = ("config/tiny.yaml", "config/variants.yaml")
RESERVED = {"teacher"}  # the teacher's own row, evaluated from its SFT run or its pretrained weights
SFT = {"divergence": None, "hp": {}, "kd_ratio": 0.0}


# libyaml's safe loader where PyYAML was built with it: ~10x faster on the pair and schema files every
# `snakemake` invocation reads; the same documents, the same errors with their line.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise KDBenchError(f"{path}: file not found.")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=SAFE_LOADER)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        raise KDBenchError(f"{path}: not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise KDBenchError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from exc


def schema_path(workdir: Path, name: str) -> Path:
    return Path(workdir) / "workflows" / "schemas" / f"{name}.schema.yaml"


def load_schema(workdir: Path, name: str) -> dict:
    """A schema file with the typed settings of kdbench.spec merged in: the pair schema's training
    section (`$defs.training`, required keys at `training`), the grid schema's `evaluation`."""
    schema = load_yaml(schema_path(workdir, name))
    if name == "pair":
        with_spec(schema, ("$defs", "training"), Training)
        schema["properties"]["training"]["required"] = required(Training)
    elif name == "config":
        with_spec(schema, ("properties", "evaluation"), Evaluation)
    return schema


def check_schema(data: Any, schema: dict, where: str) -> None:
    """Validate `data` against a JSON schema; report the first error by its key path."""
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.path) or "(top level)"
        message = err.message
        if err.validator == "additionalProperties":
            allowed = sorted(err.schema.get("properties", {}))
            message += f" (allowed here: {', '.join(allowed)})" if allowed else ""
        elif err.validator == "pattern":  # names become path parts and shell words: say what is allowed
            message += ("; a name may use letters, digits, '_', '.' and '-' and must start with a letter or "
                        "digit (a method label is base or base+policy)")
        raise KDBenchError(f"{where}: key '{key}': {message}")


def _fill_defaults(data: dict, schema: dict) -> dict:
    for key, sub in schema.get("properties", {}).items():
        if key not in data and "default" in sub:
            data[key] = copy.deepcopy(sub["default"])
        if isinstance(data.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(data[key], sub)
    return data


AXES = ("pairs", "methods", "seeds", "sets")
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


def _coerce_cli(config: dict) -> dict:
    """`snakemake --config seeds=[1,2]` arrives as strings; a single value arrives unlisted."""
    for key in (*AXES, "extra_methods"):
        if isinstance(config.get(key), (str, int)):
            config[key] = [config[key]]
    if isinstance(config.get("seeds"), list):
        config["seeds"] = [int(s) if isinstance(s, str) and s.isdigit() else s for s in config["seeds"]]
    return config


class Grid:
    """A validated grid config plus everything it refers to (pairs, plugins), checked up front."""

    def __init__(self, config: dict, where: str, workdir: Path | None = None, require_data: bool = True):
        self.where, self.workdir = where, Path(workdir or Path.cwd())
        self.require_data = require_data  # False: absent data files are listed in `absent_data`, not an error
        self.absent_data: list[str] = []
        config = _coerce_cli(copy.deepcopy(config))
        schema = load_schema(self.workdir, "config")
        check_schema(config, schema, where)
        self.config = _fill_defaults(config, schema)
        eval_protocol.check(self.config["evaluation"], where)  # what an engine cannot decode fails here
        self.plugins = registry.discover(self.workdir / self.config["methods_dir"])
        self.methods: dict[str, dict] = {}
        self.tables = self._tables()
        self.axes = {axis: _unique(v for t in self.tables.values() for v in t[axis]) for axis in AXES}
        self.data_files = self._check_data()
        self.pairs = {name: self._load_pair(name) for name in self.axes["pairs"]}  # labels: checked in _table

    def _tables(self) -> dict[str, dict]:
        """Each table with its cells after the top-level selection; a table left empty is dropped.
        Labels are checked in every table and selection, so a typo fails even where nothing runs."""
        cfg, where = self.config, self.where
        if cfg.get("tables") is None:  # the axes are the grid: one table, nothing to select
            missing = [axis for axis in AXES if axis not in cfg]
            if missing:
                raise KDBenchError(f"{where}: key '{missing[0]}' is required when the config has no 'tables' "
                                   f"(give the axes {', '.join(AXES)}, or declare tables).")
            declared, selection = [{"name": "main", **{axis: cfg[axis] for axis in AXES}}], {}
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
        earlier = [t["name"] for t in (cfg.get("tables") or [])[:i]]
        if spec["name"] in earlier:
            raise KDBenchError(f"{at}: table name '{spec['name']}' is used twice.")
        if spec["name"] in (rules := rule_names(self.workdir, cfg["methods_dir"])):
            raise KDBenchError(f"{at}: '{spec['name']}' is the name of a workflow rule; a table becomes a target "
                               f"rule of its own name, so choose another (not {', '.join(sorted(rules))}).")
        table = {"name": spec["name"], "title": spec.get("title", spec["name"]), "reference": spec.get("reference"),
                 "pairs": spec.get("pairs", cfg.get("pairs")), "methods": spec.get("methods", cfg.get("methods", [])),
                 "seeds": spec.get("seeds", cfg.get("seeds", [1])), "sets": spec.get("sets", cfg.get("sets", list(ALL_SETS)))}
        if table["pairs"] is None:
            raise KDBenchError(f"{at}: key 'pairs' is required (in the table or at the top level).")
        if spec.get("extra_methods", True):
            table["methods"] = table["methods"] + [m for m in cfg["extra_methods"] if m not in table["methods"]]
        for axis in AXES:
            for value in table[axis]:
                if table[axis].count(value) > 1:
                    raise KDBenchError(f"{at}: key '{axis}': '{value}' is listed twice.")
        for label in table["methods"]:
            self.method(label)
        table["all"] = {axis: list(table[axis]) for axis in AXES}
        return table

    def _check_selection(self, axis: str, chosen: list, tables: list[dict]) -> None:
        """A top-level axis given beside tables: each value valid, listed once, and in some table."""
        for value in chosen:
            if axis == "methods":
                self.method(value)
            elif axis == "pairs" and not self.pair_file(value).is_file():
                self._load_pair(value)  # raises: unknown pair, with the known ones
            if chosen.count(value) > 1:
                raise KDBenchError(f"{self.where}: key '{axis}': '{value}' is listed twice.")
            if not any(value in t["all"][axis] for t in tables):
                raise KDBenchError(f"{self.where}: key '{axis}': '{value}' is in no table "
                                   f"({', '.join(t['name'] for t in tables)}), so it selects nothing; the top-level "
                                   "axes select from the tables (to add a method to every table, list it in "
                                   "extra_methods).")

    def _check_data(self) -> dict[str, str]:
        """Where train/valid and each eval set live; with `source: files`, each file is read and
        checked now (file and line of the first bad record), before any job starts; with `source:
        releases`, the workflow prepares them (rule prepare_data) from the releases named in
        `data.releases` (only the names are checked here: the DAG never needs the files)."""
        data, res = self.config["data"], self.config["results"]
        if data["source"] == "generated":
            return {"train": f"{res}/data/train.jsonl", "valid": f"{res}/data/valid.jsonl",
                    **{name: f"{res}/data/eval/{name}.jsonl" for name in self.axes["sets"]}}
        if data["source"] == "releases":
            return self._check_releases(data, res)
        from kdbench.jsonl import read_jsonl

        files = {"train": data.get("train"), "valid": data.get("valid"), **data.get("sets", {})}
        for name in ("train", "valid", *self.axes["sets"]):
            if not files.get(name):
                key = f"data.sets.{name}" if name not in ("train", "valid") else f"data.{name}"
                raise KDBenchError(f"{self.where}: key '{key}' is required with data.source 'files'.")
            if not (self.workdir / files[name]).is_file():
                if not self.require_data:
                    self.absent_data.append(files[name])
                    continue
                raise KDBenchError(f"{self.where}: key 'data' ({name}): {files[name]}: file not found; make it with "
                                   "`kdbench prepare-eval` (data/README.md gives the command for each file) or "
                                   "correct the path.")
            try:
                read_jsonl(self.workdir / files[name])
            except KDBenchError as exc:
                raise KDBenchError(f"{self.where}: key 'data' ({name}): {exc}") from exc
        return files

    def _check_releases(self, data: dict, res: str) -> dict[str, str]:
        """`data.releases.<format>` must name every release the grid's files are made from, and no other."""
        fmt = data["format"]
        table, given = releases.RELEASES[fmt], (data.get("releases") or {}).get(fmt) or {}
        where = f"{self.where}: key 'data.releases.{fmt}"
        unknown = sorted(set(given) - set(table))
        if unknown:
            raise KDBenchError(f"{where}': unknown release '{unknown[0]}'; the {fmt} releases are "
                               f"{', '.join(table)} (data/README.md).")
        self.prepared = ["train", "valid", *self.axes["sets"]]
        self.release_keys = releases.needed(fmt, self.prepared)
        for key in self.release_keys:
            if not given.get(key):
                raise KDBenchError(f"{where}.{key}': required: the path of {table[key].expected} "
                                   f"(from {table[key].where}), relative to the repository.")
        self.release_paths = {key: given[key] for key in self.release_keys}
        return {name: f"{res}/data/real/{name}.jsonl" for name in self.prepared}

    def prepare_job(self, name: str) -> tuple[dict[str, str], str]:
        """The releases present on disk that prepared file `name` reads (absent ones are reported by
        `missing_releases`, not by the DAG) and its `kdbench prepare-eval` arguments."""
        inputs, args = releases.prepare_job(self.config["data"]["format"], name, self.release_paths)
        return {key: path for key, path in inputs.items() if (self.workdir / path).exists()}, args

    def missing_releases(self, prepared: list[str] | None = None) -> list[str]:
        """One line per release that the grid (or the prepared files `prepared`) needs and that is not
        on disk; empty unless `source: releases`."""
        if self.config["data"]["source"] != "releases":
            return []
        fmt = self.config["data"]["format"]
        keys = self.release_keys if prepared is None else releases.needed(fmt, prepared)
        return releases.missing(fmt, self.release_paths, keys, self.workdir)

    @property
    def results(self) -> str:
        return self.config["results"]

    def pair_file(self, name: str) -> Path:
        return self.workdir / "config" / "pairs" / f"{name}.yaml"

    def _load_pair(self, name: str) -> dict:
        path = self.pair_file(name)
        if not path.is_file():
            known = sorted(p.stem for p in path.parent.glob("*.yaml"))
            raise KDBenchError(f"{self.where}: key 'pairs': unknown pair '{name}' (no file {path}). "
                               f"Known pairs: {', '.join(known)}.")
        from kdbench.models import check_model_config, check_pair_vocab, gguf_path  # torch: not needed to read a config file

        pair = load_yaml(path)
        check_schema(pair, load_schema(self.workdir, "pair"), str(path))
        for role in ("teacher", "student"):
            spec = pair[role]
            need = {"random": "config", "pretrained": "path", "gguf": "gguf"}.get(spec["init"])
            if need and need not in spec:
                raise KDBenchError(f"{path}: key '{role}.{need}' is required when {role}.init is {spec['init']}.")
            if spec["init"] == "random" and "layers" in spec:
                raise KDBenchError(f"{path}: key '{role}.layers': layers prunes a loaded model; a random-init "
                                   f"model is sized by {role}.config (num_hidden_layers / n_layer).")
            if spec["init"] == "gguf":  # the package must be installed (its metadata only is read)
                gguf_path(spec, f"{path}: key '{role}.gguf'")
            if spec["init"] == "pretrained" and _local_path(spec["path"]) and not Path(spec["path"]).is_dir():
                raise KDBenchError(f"{path}: key '{role}.path': no local model directory {spec['path']} "
                                   "(a hub id is written 'org/name'); give a directory written by save_pretrained.")
            if spec["init"] == "pretrained" and "config" in spec:
                raise KDBenchError(f"{path}: key '{role}.config': a pretrained model is built as its checkpoint's "
                                   "config.json says, so these settings would be ignored; remove them (config "
                                   "is for init: random).")
            if spec["init"] == "random":  # a misspelt key would silently build the family's default
                check_model_config(pair["family"], spec["config"], str(path), f"{role}.config",
                                   vocab_size=self.config["tokenizer"]["vocab_size"])
        if "reference" in pair and "random" in (pair["teacher"]["init"], pair["student"]["init"]):
            raise KDBenchError(f"{path}: key 'reference': published numbers belong beside the paper's own pretrained "
                               "teacher and student; beside a random-init model the difference would mean nothing, "
                               "so remove reference from this pair.")
        check_pair_vocab(pair, str(path))  # local directories only; hub ids are checked at job start
        _check_batch_sizes(pair, str(path))
        if pair["teacher"].get("offload", "none") != "none" and not pair["teacher"].get("zero3"):
            raise KDBenchError(f"{path}: key 'teacher.offload': offloading the teacher to the CPU moves its ZeRO-3 "
                               "partitions, so it needs teacher.zero3: true; set that, or remove offload.")
        ds = self.workdir / pair["training"]["deepspeed"]
        if not ds.is_file():
            raise KDBenchError(f"{path}: key 'training.deepspeed': file {ds} not found.")
        return pair

    def shape(self, pair: str, role: str) -> dict | None:
        """The shape init-model will build for a pair's teacher or student (built on the meta device;
        None for a hub id): `kdbench check` prints it. A random-init model's vocabulary is
        tokenizer.vocab_size, the most the generated tokenizer can have."""
        from kdbench.models import planned_shape

        spec = self.pairs[pair]
        return planned_shape(spec["family"], spec[role], self.config["tokenizer"]["vocab_size"],
                             str(self.pair_file(pair)), role)

    def method(self, label: str) -> dict:
        """The resolved method of a label (cached); labels outside the grid (e.g. `init_from`) too."""
        if label not in self.methods:
            self.methods[label] = self._parse_label(label)
        return self.methods[label]

    def _parse_label(self, label: str) -> dict:
        """`base[+policy]` → the resolved method: divergence and policies with bound hyper-parameters.

        `base` is `sft`, a `method_defs` label, a divergence plugin, or a token-policy plugin (which
        then runs over its declared `base_divergence`, e.g. `egad` = fkl under the EGAD policy)."""
        where = f"{self.where}: key 'methods', label '{label}'"
        if label in RESERVED:
            raise KDBenchError(f"{where}: '{label}' is reserved for the teacher's row, which every table has.")
        base, _, suffix = label.partition("+")
        defs = {"sft": SFT, **self.config["method_defs"]}
        plugin = self.plugins.get(base)
        if base in defs:
            spec = defs[base]
        elif plugin is not None and plugin.kind == "divergence":
            spec = {"divergence": base}
        elif plugin is not None:
            spec = {"divergence": getattr(plugin.obj, "base_divergence", "fkl"), "policy": base}
        else:
            known = sorted({"sft", *defs, *self.plugins})
            raise KDBenchError(f"{where}: unknown method '{base}'. Known: {', '.join(known)} "
                               f"(plugins in methods/ and labels in method_defs).")
        if suffix and spec.get("policy_divergence"):  # under a token policy this method distils with another loss
            spec = {**spec, "divergence": spec["policy_divergence"], "hp": {}}
        method = Method(label=label, kd_ratio=spec.get("kd_ratio", default_kd_ratio(spec["divergence"])),
                        **{k: spec[k] for k in ("source", "source_hp", "init_from", "train_data") if k in spec}).as_dict()
        if method["init_from"] is not None:
            self.method(method["init_from"])  # must itself be a valid label
        if method["source"] != "off_policy" and not spec["divergence"]:
            raise KDBenchError(f"{where}: data source '{method['source']}' needs a distillation loss.")
        _check_source_hp(method["source"], method["source_hp"], where)
        if spec["divergence"]:
            div = registry.lookup(self.plugins, spec["divergence"], "divergence", where)
            method["divergence"] = _plugin_entry(div, div.bind(spec.get("hp"), where))
        for policy_label in [p for p in (spec.get("policy"), suffix) if p]:
            if not spec["divergence"]:
                raise KDBenchError(f"{where}: a token policy needs a distillation loss; '{base}' has none.")
            method["policies"].append(self._policy_entry(policy_label, where,
                                                         spec.get("policy_hp", {}) if policy_label == suffix else {}))
        if method["policies"] and method["kd_ratio"] == 0:
            raise KDBenchError(f"{where}: kd_ratio is 0, so its token policy would have nothing to act on.")
        return method

    def _policy_entry(self, policy_label: str, where: str, policy_hp: dict) -> dict:
        """The policy of a label, its hyper-parameters under the method's `policy_hp` for its plugin."""
        pdef = self.config["policy_defs"].get(policy_label, {"policy": policy_label})
        plugin = registry.lookup(self.plugins, pdef["policy"], "token_policy", where)
        hp = plugin.bind({**pdef.get("hp", {}), **policy_hp.get(plugin.key, {})}, where)
        try:  # the policy's own range checks, now rather than when its job starts
            plugin.instantiate(hp, total_steps=1, student_dim=1, teacher_dim=1)
        except (ValueError, TypeError) as exc:
            raise KDBenchError(f"{where}: {exc}") from exc
        return _plugin_entry(plugin, hp)

    # --- the run table -------------------------------------------------------------------------

    def runs(self, table: str | None = None, pair: str | None = None) -> list[tuple[str, str, int]]:
        """Every (pair, method label, seed) run of the grid (or of one table, one pair), teacher rows
        excluded, in table order without repeats."""
        return _unique((p, m, s) for t in self._chosen(table) for p in t["pairs"] if pair in (None, p)
                       for m in t["methods"] for s in t["seeds"])

    def teacher_states(self, pair: str, label: str, seed: int) -> str | None:
        """With `teacher_cache`: the teacher-states file a run reads (kdbench.teacher_states), or None
        (no `teacher_cache`, or a run they cannot serve). It depends on the run alone, not on which
        other runs the selection holds, so growing a partial grid retrains nothing."""
        if not self.config["teacher_cache"]:
            return None
        path = states_path(self.resolve_run(pair, label, seed))
        return str(path) if path else None

    def teacher_states_spec(self, pair: str, seed: int, key: str) -> dict:
        """The spec the states file `key` is computed from: that of any run of the grid that reads
        it (they share one spec: it holds no method setting)."""
        for p, label, s in self.runs(pair=pair):
            path = self.teacher_states(p, label, s) if s == seed else None
            if path and Path(path).stem == key:
                return stream_spec(self.resolve_run(p, label, s))
        raise KDBenchError(f"no run of the grid on pair {pair}, seed {seed} reads the teacher states {key}.")

    def evals(self, table: str | None = None, pair: str | None = None) -> list[tuple[str, str, int, str]]:
        """Every (pair, label, seed, set) evaluation the grid (or one table, one pair) needs, the
        teacher's row included."""
        return _unique((p, m, s, x) for t in self._chosen(table) for p in t["pairs"] if pair in (None, p)
                       for m, s in [("teacher", self.teacher_seed(p)), *((m, s) for m in t["methods"] for s in t["seeds"])]
                       for x in t["sets"])

    def _chosen(self, table: str | None) -> list[dict]:
        return list(self.tables.values()) if table is None else [self.tables[table]]

    def reference(self, pair: str, table: str) -> dict | None:
        """The published table and model family shown beside this pair's rows of `table`, or None.
        Only the paper's pair on the paper's data gets published numbers: the pair names them
        (`reference:`, refused for random-init models) and the grid trains and evaluates on given
        files or the public releases the workflow prepares (`data.source: files` or `releases`, the
        sets of `kdbench prepare-eval`); on generated data a Δ
        against the paper would mean nothing. The table's own `reference` picks which paper table."""
        ref = self.pairs[pair].get("reference")
        if not ref or self.config["data"]["source"] not in ("files", "releases"):
            return None
        return {"table": self.tables[table]["reference"] or ref["table"], "family": ref["family"]}

    def teacher_seed(self, pair: str) -> int:
        return self.pairs[pair]["teacher"].get("seed", 0)

    def has_teacher_sft(self, pair: str) -> bool:
        return "sft" in self.pairs[pair]["teacher"]

    def resolve_run(self, pair: str, label: str, seed: int) -> dict:
        """The fully resolved single-run config (what results/runs/{pair}/{label}/seed{seed}/run.yaml holds)."""
        res, spec = self.results, self.pairs[pair]
        training = self.training(pair, teacher_sft=label == "teacher")
        if label == "teacher":
            method = Method(label="teacher", kd_ratio=0.0).as_dict()
            start, teacher = f"{res}/models/{pair}/teacher-init", None
        else:
            method = self.method(label)
            start = f"{res}/runs/{pair}/{method['init_from']}/seed{seed}/model" if method["init_from"] \
                else f"{res}/models/{pair}/student-init"
            teacher = self.teacher_path(pair) if method["kd_ratio"] > 0 else None
        role = "teacher" if label == "teacher" else "student"  # the model this run trains
        # With global_batch_size: the accumulation for training.gpus (the job derives it again for its own ranks).
        training["gradient_accumulation_steps"] = accumulation_steps(training, training["gpus"], f"config/pairs/{pair}.yaml")
        # A loaded model brings its own tokenizer (init-model saves it beside the weights).
        tokenizer = f"{res}/tokenizer" if spec[role]["init"] == "random" else f"{res}/models/{pair}/{role}-init"
        ds_file = self.workdir / training["deepspeed"]
        return {
            "run": {"pair": pair, "method": label, "seed": seed, "dir": f"{res}/runs/{pair}/{label}/seed{seed}"},
            "student": start,
            "teacher": teacher,
            "teacher_dtype": spec["teacher"].get("dtype", "fp32"),
            **({"teacher_zero3": {"offload": spec["teacher"].get("offload", "none")}}  # a ZeRO-3 inference engine
               if spec["teacher"].get("zero3") and teacher else {}),
            "lora": spec[role].get("lora"),
            "pair_file": f"config/pairs/{pair}.yaml",  # named in error messages
            "tokenizer": tokenizer,
            "prompt_format": self.config["evaluation"]["prompt_format"],  # training prompts as evaluation's
            "data": {"train": method["train_data"].format(results=res, pair=pair) if method["train_data"]
                     else self.data_files["train"], "valid": self.data_files["valid"]},
            "method": method,
            "training": training,
            "deepspeed": load_yaml(ds_file) if ds_file.suffix in {".yaml", ".yml"} else _load_json(ds_file),
        }

    def training(self, pair: str, teacher_sft: bool = False) -> dict:
        """The pair's training settings over kdbench.spec.Training's defaults (with `teacher_sft`:
        the teacher's SFT stage, `teacher.sft` over those)."""
        spec = self.pairs[pair]
        return Training.resolve({**spec["training"], **(spec["teacher"]["sft"] if teacher_sft else {})})

    @functools.cached_property
    def _job_defaults(self) -> dict[str, int]:
        job = load_yaml(schema_path(self.workdir, "pair"))["$defs"]["job"]["properties"]
        return {key: spec["default"] for key, spec in job.items()}

    def job_resources(self, pair: str, job: str) -> dict[str, int]:
        """What one job of `pair` asks a cluster for (runtime minutes, mem_mb, cpus): the pair file's
        `resources.<job>` (job: init, train, evaluate, lm_eval, generate) over the schema's defaults."""
        return {**self._job_defaults, **self.pairs[pair].get("resources", {}).get(job, {})}

    def teacher_path(self, pair: str) -> str:
        spec = self.pairs[pair]["teacher"]
        if "sft" in spec:
            return f"{self.results}/runs/{pair}/teacher/seed{self.teacher_seed(pair)}/model"
        return f"{self.results}/models/{pair}/teacher-init"


def _check_source_hp(source: str, hp: dict, where: str) -> None:
    """Bind a data source's hyper-parameters to its constructor, as for plugins."""
    import inspect

    from kdbench.sources import SOURCES

    if source not in SOURCES:
        raise KDBenchError(f"{where}: unknown data source '{source}'. Known: {', '.join(SOURCES)}.")
    params = [n for n in inspect.signature(SOURCES[source].__init__).parameters
              if n not in {"self", "stream", "sampler", "total_steps", "batch_size"}]
    unknown = sorted(set(hp) - set(params))
    if unknown:
        raise KDBenchError(f"{where}: unknown source_hp {', '.join(unknown)} for data source '{source}'. "
                           f"It accepts: {', '.join(params) or 'none'}.")


def _unique(items: Any) -> list:
    """The items without repeats, first occurrence kept (order matters: it is the table's row order)."""
    return list(dict.fromkeys(items))


def accumulation_steps(training: dict, world: int, where: str, key: str = "training") -> int:
    """Gradient accumulation steps so that micro_batch_size × accumulation × world is
    `training.global_batch_size`; without a global batch size, the configured accumulation. `world`
    is training.gpus at config time and the job's own rank count at its start; `where` (the pair
    file) and `key` name the section in the error. `training` is resolved (kdbench.spec.Training)."""
    total = training.get("global_batch_size")
    if total is None:
        return training["gradient_accumulation_steps"]
    micro = training["micro_batch_size"]
    if total % (micro * world):
        raise KDBenchError(
            f"{where}: key '{key}.global_batch_size': {total} is not a multiple of micro_batch_size {micro} × "
            f"{world} GPU(s) = {micro * world}, so no whole number of accumulation steps gives it. Change "
            f"global_batch_size to a multiple of {micro * world}, or micro_batch_size or the GPU count "
            "(training.gpus) so that micro_batch_size × GPUs divides it.")
    return total // (micro * world)


def _check_batch_sizes(pair: dict, where: str) -> None:
    """training and teacher.sft: a global batch size must divide into whole accumulation steps for
    training.gpus, and a section that has one (given or inherited) must not also fix the accumulation."""
    sections = [("training", pair["training"], pair["training"])]
    if "sft" in pair["teacher"]:
        sections.append(("teacher.sft", pair["teacher"]["sft"], {**pair["training"], **pair["teacher"]["sft"]}))
    for key, own, merged in sections:
        if "global_batch_size" in merged and "gradient_accumulation_steps" in own:
            source = key if "global_batch_size" in own else "training"
            raise KDBenchError(f"{where}: key '{key}.gradient_accumulation_steps': {source}.global_batch_size is "
                               f"given{'' if source == key else ' and applies to the teacher SFT run too'}, and it "
                               "sets the accumulation from the job's GPU count; give only one of the two"
                               f"{'' if source == key else ' (teacher.sft.global_batch_size for the SFT run)'}.")
        resolved = Training.resolve(merged)
        accumulation_steps(resolved, resolved["gpus"], where, key)


def _local_path(name: str) -> bool:
    """A model `path` that can only be a local directory: a hub id is `name` or `org/name`, never
    absolute, never starting with `.`, never with two slashes."""
    return name.startswith(("/", ".")) or name.count("/") > 1


def _plugin_entry(plugin: registry.Method, hp: dict) -> dict:
    return {"key": plugin.key, "path": portable(plugin.path), "version": plugin.version, "hp": hp}


def portable(path: str | Path) -> str:
    """`path` relative to the working directory (the checkout, where every job runs) when it lies
    inside it, else as given: what enters a run's config, its inputs and Snakemake's rerun triggers
    then survives copying or renaming the checkout with its results."""
    import os

    absolute = os.path.abspath(path)
    inside = os.path.commonpath([absolute, os.getcwd()]) == os.getcwd()
    return os.path.relpath(absolute) if inside else str(path)


def _load_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise KDBenchError(f"{path}: not valid JSON: {exc}") from exc


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


def workflow_grid(*configfiles: Path, workdir: Path | None = None, require_data: bool = True) -> Grid:
    """The grid `snakemake --configfile <configfiles>` builds: the Snakefile's BASE_CONFIGS first
    (those present, as Snakemake skips an absent one when --configfile is given), then `configfiles`."""
    workdir = Path(workdir or Path.cwd())
    here = workdir.resolve() == Path.cwd().resolve()  # then name them as the user sees them
    base = [Path(name) if here else workdir / name for name in BASE_CONFIGS if (workdir / name).is_file()]
    return load_grid(*base, *configfiles, workdir=workdir, require_data=require_data)


def _merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
