"""Reading config files: YAML with file-and-line errors, the JSON schemas of workflows/schemas/
(completed from kdbench.spec), validation that names the bad key, and the schema's defaults filled
in, so every later reader finds each key present and no code restates a default."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from kdbench.errors import KDBenchError
from kdbench.spec import SETS, Evaluation, Training, required, with_spec
from kdbench.validate import UniqueKeyLoader

# libyaml's safe loader where PyYAML was built with it: ~10x faster on the pair and schema files every
# `snakemake` invocation reads; the same documents, the same errors with their line.
SAFE_LOADER = UniqueKeyLoader  # ... refusing a key given twice in a mapping (kdbench.validate)


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
    section (`$defs.training`, required keys at `training`), the grid schema's `evaluation` and the
    evaluation set names (kdbench.spec.SETS)."""
    schema = load_yaml(schema_path(workdir, name))
    if name == "pair":
        with_spec(schema, ("$defs", "training"), Training)
        schema["properties"]["training"]["required"] = required(Training)
    elif name == "config":
        with_spec(schema, ("properties", "evaluation"), Evaluation)
        schema["$defs"]["sets"]["items"]["enum"] = list(SETS)
        schema["properties"]["data"]["properties"]["sets"]["propertyNames"] = {"enum": list(SETS)}
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


def fill_defaults(data: dict, schema: dict, root: dict | None = None, skip: frozenset[str] = frozenset()) -> dict:
    """`data` (valid against `schema`) with every absent key that has a schema default set to it, in
    nested objects too (through `$ref` and `allOf`); a `$ref` in `skip` is left as given (a training
    section: kdbench.spec.Training.resolve fills it, after teacher.sft is laid over training)."""
    root = schema if root is None else root
    for key, sub in _resolve(schema, root).get("properties", {}).items():
        if _ref(sub) in skip:
            continue
        sub = _resolve(sub, root)
        if key not in data and "default" in sub:
            data[key] = copy.deepcopy(sub["default"])
        if isinstance(data.get(key), dict) and "properties" in sub:
            fill_defaults(data[key], sub, root, skip)
        elif isinstance(data.get(key), list) and "properties" in sub.get("items", {}):  # a list of objects
            for item in (item for item in data[key] if isinstance(item, dict)):
                fill_defaults(item, sub["items"], root, skip)
    return data


def _ref(schema: dict) -> str | None:
    return schema.get("$ref") or next((part["$ref"] for part in schema.get("allOf", []) if "$ref" in part), None)


def _resolve(schema: dict, root: dict) -> dict:
    """`schema` with a local `$ref` (or an `allOf` of one) merged in (its own keys win)."""
    ref = _ref(schema)
    if not ref:
        return schema
    target = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**_resolve(target, root), **{k: v for k, v in schema.items() if k not in ("$ref", "allOf")}}
