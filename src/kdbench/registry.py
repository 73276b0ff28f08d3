"""The plugin registry: methods are files in `methods/`, discovered by path.

A method is `methods/<key>.py`; its key is the file stem. The file marks exactly one object with a
decorator from this module:

- `@divergence`: a function `(student_logp (N,V), teacher_logp (N,V), **hp) -> (N,)` of per-token
  values on fp32 log-probabilities that the harness has already tempered and aligned;
- `@token_policy`: a class whose instances choose per-token weights and temperatures (AdaKD, EGAD)
  and may hold state for resume; it implements kdbench.policies.TokenPolicy, checked on load.

Discovery imports each file under its own module name, so a plugin imports only `torch` and
`kdbench`, never another plugin. Hyper-parameters from config are bound to the signature here, so a
typo fails before any job runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdbench.errors import KDBenchError

KINDS = ("divergence", "token_policy")
_MARK = "__kdbench_kind__"


def divergence(fn: Callable) -> Callable:
    """Mark a per-token divergence function as this file's method."""
    setattr(fn, _MARK, "divergence")
    return fn


def token_policy(cls: type) -> type:
    """Mark a token-policy class as this file's method."""
    setattr(cls, _MARK, "token_policy")
    return cls


@dataclass(frozen=True)
class Method:
    key: str
    kind: str
    obj: Any
    path: Path
    version: str  # sha256 of the file, first 12 hex digits: the method's provenance

    @property
    def defaults(self) -> dict[str, Any]:
        """Hyper-parameters and their default values, read from the signature."""
        return {
            name: p.default
            for name, p in _hp_parameters(self).items()
            if p.default is not inspect.Parameter.empty
        }

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.obj) or ""

    def bind(self, hp: dict[str, Any] | None, where: str) -> dict[str, Any]:
        """Check `hp` against the signature; return every hyper-parameter with defaults filled in."""
        hp = dict(hp or {})
        params = _hp_parameters(self)
        unknown = sorted(set(hp) - set(params))
        if unknown:
            raise KDBenchError(
                f"{where}: unknown hyper-parameter(s) {', '.join(unknown)} for {self.kind} '{self.key}' "
                f"({self.path}). It accepts: {', '.join(params) or 'none'}."
            )
        missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in hp]
        if missing:
            raise KDBenchError(
                f"{where}: {self.kind} '{self.key}' needs hyper-parameter(s) {', '.join(missing)}."
            )
        return {**self.defaults, **hp}

    def instantiate(self, hp: dict[str, Any], **harness: Any) -> Any:
        """A token policy built with its hyper-parameters and the harness arguments it declares."""
        accepted = inspect.signature(self.obj.__init__).parameters
        return self.obj(**{k: v for k, v in harness.items() if k in accepted}, **hp)


# Arguments the harness supplies itself (a policy declares the ones it needs); the other keyword
# arguments are hyper-parameters.
HARNESS_ARGS = {"total_steps", "student_dim", "teacher_dim", "seed"}  # seed: the run's
_NOT_HPARAMS = {"student_logp", "teacher_logp", "self", *HARNESS_ARGS}


def _hp_parameters(method: Method) -> dict[str, inspect.Parameter]:
    target = method.obj.__init__ if inspect.isclass(method.obj) else method.obj
    return {
        name: p
        for name, p in inspect.signature(target).parameters.items()
        if name not in _NOT_HPARAMS and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def load_method_file(path: Path) -> Method:
    """Import one plugin file by path and return the single method it marks."""
    path = Path(path).resolve()
    key = path.stem
    spec = importlib.util.spec_from_file_location(f"kdbench_methods.{key}", path)
    if spec is None or spec.loader is None:
        raise KDBenchError(f"cannot import method file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # so tests and pickling can reach the plugin's helpers
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a broken plugin must name itself, not crash the workflow anonymously
        raise KDBenchError(f"method file {path} failed to import: {type(exc).__name__}: {exc}") from exc
    marked = [obj for obj in vars(module).values() if getattr(obj, _MARK, None) in KINDS
              and getattr(obj, "__module__", None) == module.__name__]
    if len(marked) != 1:
        raise KDBenchError(
            f"method file {path} must mark exactly one function or class with "
            f"@kdbench.registry.divergence or @kdbench.registry.token_policy; found {len(marked)}."
        )
    if getattr(marked[0], _MARK) == "token_policy":
        _check_token_policy(marked[0], path)
    version = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return Method(key=key, kind=getattr(marked[0], _MARK), obj=marked[0], path=path, version=version)


def _check_token_policy(cls: type, path: Path) -> None:
    """A token policy must have every member of kdbench.policies.TokenPolicy: say which it lacks."""
    from kdbench.policies import missing_members  # imported here: kdbench.policies imports torch

    missing = missing_members(cls)
    if missing:
        raise KDBenchError(
            f"method file {path}: token policy {cls.__name__} lacks {', '.join(missing)} "
            f"(the kdbench.policies.TokenPolicy protocol; methods/_template_policy.py implements all of it)."
        )


def discover(methods_dir: Path) -> dict[str, Method]:
    """All methods in `methods_dir` (files starting with `_` are templates/helpers, not methods)."""
    methods_dir = Path(methods_dir)
    if not methods_dir.is_dir():
        raise KDBenchError(f"methods directory {methods_dir} does not exist (config key 'methods_dir').")
    return {
        m.key: m
        for m in (load_method_file(p) for p in sorted(methods_dir.glob("*.py")) if not p.name.startswith("_"))
    }


def lookup(methods: dict[str, Method], key: str, kind: str, where: str) -> Method:
    """The method `key` of `kind`, or an error listing the known ones of that kind."""
    known = sorted(k for k, m in methods.items() if m.kind == kind)
    if key not in methods or methods[key].kind != kind:
        raise KDBenchError(
            f"{where}: unknown {kind.replace('_', ' ')} '{key}'. Known: {', '.join(known) or 'none'} "
            f"(each is a file in methods/)."
        )
    return methods[key]
