"""The plugin registry: methods are files in `methods/`, discovered by path.

A method is `methods/<key>.py`; its key is the file stem. The file marks exactly one object with a
decorator from this module:

- `@divergence`: a function `(student_logp (N,V), teacher_logp (N,V), *, **hp) -> (N,)` of per-token
  values on fp32 log-probabilities that the harness has already tempered and aligned;
- `@token_policy`: a class whose instances choose per-token weights and temperatures (AdaKD, EGAD)
  and may hold state for resume; it implements kdbench.policies.TokenPolicy, checked on load;
- `@crosstok(alignment=..., space=...)`: a cross-tokenizer method (teacher and student with different
  tokenizers, docs/METHODS.md §6), a function `(student_logp (N,V_s), teacher_logp (N,V_t), *,
  <artifact arrays it names>, kd_ratio=<its CE mix>, **hp) -> (N,)` on the aligned rows.

Hyper-parameters are the keyword-only parameters (after `*`) of the function or of the class's
`__init__`, each with a literal default or none (then the config must give it). Discovery reads
each file's syntax tree and never runs it: the workflow's DAG checks labels and hyper-parameters
without importing torch. A plugin is imported (under its own module name, so it imports only `torch`
and `kdbench`, never another plugin) when its object is first asked for (`Method.obj`): by the
training job, and by the pre-flight check (kdbench.preflight), which also runs a policy's own range
checks before any job.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench.errors import KDBenchError

KINDS = ("divergence", "token_policy", "crosstok")
_MARK = "__kdbench_kind__"
# What the harness calls on a token policy (kdbench.policies.TokenPolicy documents each).
MEMBERS = ("token_stats", "plan", "feature_loss", "observe", "state_dict", "load_state_dict", "log_scalars")
# Arguments the harness supplies itself (a policy declares the ones it needs); the other keyword-only
# parameters are hyper-parameters.
HARNESS_ARGS = ("total_steps", "student_dim", "teacher_dim", "seed")  # seed: the run's
DIVERGENCE_INPUTS = ("student_logp", "teacher_logp")
REQUIRED = object()  # a hyper-parameter without a default
# A cross-tokenizer method: how the harness pairs student and teacher rows (docs/METHODS.md §6;
# "pairs": one-to-one exact groups, "position": the i-th response token of each side, ULD's code,
# "chunks": every exact group, its rows merged per side, X-Token; "groups": the same, merged as GOLD;
# "mined": FuseLLM's edit-distance alignment, one-to-one matches of the same string; "attention": the
# whole response of each side, which the method aligns itself, DSKD's cross-model attention;
# kdbench.crosstok.data), the one distribution space a token policy may act in (None: no policy composes), the arrays of the
# pair's vocab_map it may take (keyword-only, by name), and `kd_ratio`, the default weight of its
# distillation term against the student's cross-entropy (a keyword default, not a hyper-parameter).
ALIGNMENTS = ("pairs", "position", "chunks", "groups", "mined", "attention")
SPACES = (None, "common", "teacher")
ARTIFACT_ARRAYS = ("common_student", "common_teacher", "projection_indices", "projection_weights", "relaxed_student",
                   "relaxed_teacher", "mined_teacher", "mined_student")
CROSSTOK_KD_RATIO = "kd_ratio"
# What the harness hands an `alignment="attention"` method per example, by keyword (kdbench.losses.cross_objective):
# each side's final hidden states of its response rows, the input embeddings of the tokens at those
# rows and of the tokens they predict (detached), the student's predicted ids, each side's output-head
# weight (V, d), detached, and `modules`, the trainable module its `@crosstok(modules=...)` builder made
# (None without one). Such a method takes them all.
SEQUENCE_INPUTS = ("student_hidden", "teacher_hidden", "student_input_embeds", "student_target_embeds",
                   "teacher_input_embeds", "teacher_target_embeds", "student_targets", "student_head", "teacher_head",
                   "modules")
# Hyper-parameters of a cross-tokenizer method that the harness reads and does not pass to the
# function (method_defs may set them; run.yaml records them):
# - `modules_lr`, with `@crosstok(modules=...)`: the learning rate of its modules, an optimizer group
#   of their own on the run's schedule (None: the run's rate);
# - `dynamic_loss_scaling` (bool): each micro-batch's KD mean rescaled by sg(CE mean / KD mean), so
#   the distillation term's value equals the cross-entropy's and only its direction is the method's
#   (NeMo-RL's cross-tokenizer loss; kdbench.losses.cross_objective).
MODULES_LR = "modules_lr"
KD_TO_CE = "dynamic_loss_scaling"
HARNESS_HP = (MODULES_LR, KD_TO_CE)
# The arrays the harness reads to put a unit's two distributions into a space (a plugin with that space takes them).
SPACE_ARRAYS = {"common": ("common_student", "common_teacher"), "teacher": ("projection_indices", "projection_weights")}


def divergence(fn: Callable) -> Callable:
    """Mark a per-token divergence function as this file's method."""
    setattr(fn, _MARK, "divergence")
    return fn


def token_policy(cls: type) -> type:
    """Mark a token-policy class as this file's method."""
    setattr(cls, _MARK, "token_policy")
    return cls


def crosstok(*, alignment: str, space: str | None = None, modules: str | None = None) -> Callable[[Callable], Callable]:
    """Mark a cross-tokenizer method: its rows are aligned as `alignment` says, and a token policy
    composes with it in `space` (see ALIGNMENTS, SPACES; read from the file's syntax tree).
    `modules` names a top-level function of the same file, `(student_dim, teacher_dim) -> torch.nn.Module`,
    whose module the harness builds from the two models' hidden sizes, trains and saves with the
    student (`kdbench_policy_modules.safetensors`, as EGAD's projection) and passes as `modules=`."""
    def mark(fn: Callable) -> Callable:
        setattr(fn, _MARK, "crosstok")
        fn.crosstok = {"alignment": alignment, "space": space, "modules": modules}
        return fn
    return mark


@dataclass(frozen=True)
class Method:
    """One plugin as its file declares it (read without running the file)."""

    key: str
    kind: str
    name: str  # the marked function or class
    path: Path
    version: str  # sha256 of the file, first 12 hex digits: the method's provenance
    params: dict[str, Any] = field(repr=False)  # hyper-parameter → literal default (or REQUIRED), in order
    doc: str = ""
    base_divergence: str | None = None  # a token policy's divergence when its label names no base
    # crosstok only: alignment, space, needs (the artifact arrays it takes), kd_ratio (its default),
    # modules (the name of its trainable modules' builder, or None)
    crosstok: dict | None = None
    harness: tuple[str, ...] = ()  # a token policy's harness arguments (student_dim/teacher_dim: a feature loss)

    @property
    def defaults(self) -> dict[str, Any]:
        """Hyper-parameters and their default values, read from the signature."""
        return {name: value for name, value in self.params.items() if value is not REQUIRED}

    def bind(self, hp: dict[str, Any] | None, where: str) -> dict[str, Any]:
        """Check `hp` against the signature; return every hyper-parameter with defaults filled in."""
        hp = dict(hp or {})
        unknown = sorted(set(hp) - set(self.params))
        if unknown:
            raise KDBenchError(
                f"{where}: unknown hyper-parameter(s) {', '.join(unknown)} for {self.kind} '{self.key}' "
                f"({self.path}). It accepts: {', '.join(self.params) or 'none'}."
            )
        missing = [n for n, v in self.params.items() if v is REQUIRED and n not in hp]
        if missing:
            raise KDBenchError(f"{where}: {self.kind} '{self.key}' ({self.path}) needs hyper-parameter(s) "
                               f"{', '.join(missing)}: they have no default.")
        return {**self.defaults, **hp}

    @functools.cached_property
    def obj(self) -> Any:
        """The marked function or class, imported (torch and all) on first use."""
        return _import(self)

    def instantiate(self, hp: dict[str, Any], **harness: Any) -> Any:
        """A token policy built with its hyper-parameters and the harness arguments it declares."""
        import inspect

        accepted = inspect.signature(self.obj.__init__).parameters
        return self.obj(**{k: v for k, v in harness.items() if k in accepted}, **hp)


def read_method_file(path: Path) -> Method:
    """The single method a plugin file marks, read from its syntax tree (the file is not run)."""
    path = Path(path).resolve()
    source = path.read_bytes()
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise KDBenchError(f"method file {path}: not valid Python, line {exc.lineno}: {exc.msg}") from None
    marked = [(node, kind) for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))
              for kind in [_decorator_kind(node)] if kind]
    if len(marked) != 1:
        raise KDBenchError(
            f"method file {path} must mark exactly one function or class with "
            f"@kdbench.registry.divergence, @kdbench.registry.token_policy or @kdbench.registry.crosstok(...); "
            f"found {len(marked)}."
        )
    node, kind = marked[0]
    where = f"method file {path}: {kind.replace('_', ' ')} {node.name}"
    options = None
    if kind in ("divergence", "crosstok"):
        params, base = _hyper_parameters(node, where, inputs=DIVERGENCE_INPUTS), None
        if kind == "crosstok":
            options = _crosstok_options(node, params, where, tree)
    else:
        _check_members(node, f"method file {path}")
        params, base = _hyper_parameters(_init(node), where, inputs=("self",)), _class_literal(node, "base_divergence")
    init = _init(node) if kind == "token_policy" else None
    harness = tuple(a.arg for a in init.args.kwonlyargs if a.arg in HARNESS_ARGS) if init else ()
    return Method(key=path.stem, kind=kind, name=node.name, path=path, version=hashlib.sha256(source).hexdigest()[:12],
                  params=params, doc=ast.get_docstring(node) or "", base_divergence=base, crosstok=options,
                  harness=harness)


def _crosstok_options(node: ast.FunctionDef, params: dict[str, Any], where: str, tree: ast.Module) -> dict:
    """The decorator's alignment, space and modules, the artifact arrays the signature names, and its
    kd_ratio default; those keyword-only parameters (and an "attention" method's SEQUENCE_INPUTS) are
    taken out of `params` (they are not hyper-parameters)."""
    call = next(d for d in node.decorator_list if _decorator_name(d) == "crosstok")
    given = {k.arg: ast.literal_eval(k.value) for k in call.keywords} if isinstance(call, ast.Call) else {}
    if given.get("alignment") not in ALIGNMENTS or given.get("space") not in SPACES:
        raise KDBenchError(f"{where}: @crosstok(alignment=..., space=...) takes alignment one of "
                           f"{', '.join(ALIGNMENTS)} and space one of {', '.join(map(str, SPACES))}; got {given}.")
    needs = [name for name in ARTIFACT_ARRAYS if name in params]
    sequence = [name for name in SEQUENCE_INPUTS if name in params] if given["alignment"] == "attention" else []
    for name in (*needs, *sequence):
        del params[name]
    missing = [name for name in SPACE_ARRAYS.get(given.get("space"), ()) if name not in needs]
    if missing:
        raise KDBenchError(f"{where}: space={given['space']!r} puts a unit's distributions into that space with "
                           f"the vocab_map's {', '.join(missing)}; take them as keyword-only parameters.")
    _check_modules(given, sequence, tree, where, lr=MODULES_LR in params)
    kd_ratio = params.pop(CROSSTOK_KD_RATIO, REQUIRED)
    if isinstance(kd_ratio, bool) or not isinstance(kd_ratio, (int, float)) or not 0 < kd_ratio <= 1:
        raise KDBenchError(f"{where}: a cross-tokenizer method declares `kd_ratio=<its default weight of the "
                           "distillation term against the cross-entropy, in (0, 1]>` as a keyword-only parameter.")
    return {"alignment": given["alignment"], "space": given.get("space"), "needs": needs, "kd_ratio": float(kd_ratio),
            "modules": given.get("modules")}


def _check_modules(given: dict, sequence: list[str], tree: ast.Module, where: str, lr: bool) -> None:
    """An "attention" method takes every SEQUENCE_INPUTS name (`modules` is None without a builder);
    `modules=` needs alignment "attention", no space and a top-level function of that name in the file;
    `modules_lr` (`lr`) needs `modules=`."""
    missing = [n for n in SEQUENCE_INPUTS if n not in sequence] if given["alignment"] == "attention" else []
    if missing:
        raise KDBenchError(f"{where}: alignment=\"attention\" hands the method {', '.join(SEQUENCE_INPUTS)}; take "
                           f"{', '.join(missing)} as keyword-only parameters too.")
    name = given.get("modules")
    builders = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    if name is not None and (given["alignment"] != "attention" or given.get("space") is not None or name not in builders):
        raise KDBenchError(f"{where}: @crosstok(modules={name!r}) needs alignment=\"attention\", no space and a "
                           f"top-level function {name}(student_dim, teacher_dim) -> torch.nn.Module in the file.")
    if lr and name is None:
        raise KDBenchError(f"{where}: `{MODULES_LR}` is the learning rate of the modules @crosstok(modules=...) "
                           "names, and this method has none.")


def loss_hp(hp: dict[str, Any]) -> dict[str, Any]:
    """A cross-tokenizer method's bound hyper-parameters as its function takes them (less HARNESS_HP)."""
    return {k: v for k, v in hp.items() if k not in HARNESS_HP}


def _decorator_name(dec: ast.expr) -> str | None:
    dec = dec.func if isinstance(dec, ast.Call) else dec
    return dec.id if isinstance(dec, ast.Name) else dec.attr if isinstance(dec, ast.Attribute) else None


def _decorator_kind(node: ast.FunctionDef | ast.ClassDef) -> str | None:
    """`divergence`, `token_policy` or `crosstok` when a decorator of `node` is ours (`@divergence`,
    `@registry.divergence`, `@crosstok(...)`)."""
    for dec in node.decorator_list:
        name = _decorator_name(dec)
        if name in KINDS:
            return name
    return None


def _init(cls: ast.ClassDef) -> ast.FunctionDef | None:
    return next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)


def _hyper_parameters(fn: ast.FunctionDef | None, where: str, inputs: tuple[str, ...]) -> dict[str, Any]:
    """The keyword-only parameters of `fn` (less the harness's) with their literal defaults; the
    positional ones must be exactly `inputs`."""
    if fn is None:  # a class without its own __init__: no hyper-parameters
        return {}
    args = fn.args
    positional = [a.arg for a in (*args.posonlyargs, *args.args)]
    if positional != list(inputs) or args.vararg:
        raise KDBenchError(
            f"{where}: its positional parameters must be exactly ({', '.join(inputs)}), got "
            f"({', '.join(positional + ([f'*{args.vararg.arg}'] if args.vararg else []))}); the inputs "
            f"are named {', '.join(inputs)} and every hyper-parameter is keyword-only, after `*`.")
    params = {}
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        if arg.arg in HARNESS_ARGS:
            continue
        try:
            params[arg.arg] = REQUIRED if default is None else ast.literal_eval(default)
        except ValueError:
            raise KDBenchError(f"{where}: the default of hyper-parameter '{arg.arg}' (line {default.lineno}) is "
                               "not a literal (a number, string, bool, None, tuple, list or dict); write "
                               "the value itself.") from None
    return params


def _class_literal(cls: ast.ClassDef, name: str) -> Any:
    for node in cls.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    return None


def _check_members(cls: ast.ClassDef, where: str) -> None:
    """A token policy without base classes must define every TokenPolicy member itself (one with a
    base, e.g. torch.nn.Module, is checked when it is imported)."""
    if cls.bases:
        return
    defined = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    _raise_missing([m for m in MEMBERS if m not in defined], cls.name, where)


def _raise_missing(missing: list[str], name: str, where: str) -> None:
    if missing:
        raise KDBenchError(
            f"{where}: token policy {name} lacks {', '.join(missing)} "
            f"(the kdbench.policies.TokenPolicy protocol; methods/_template_policy.py implements all of it)."
        )


def missing_members(policy: object) -> list[str]:
    """The TokenPolicy members that `policy` (a class or an instance) lacks or has as a non-callable."""
    return [name for name in MEMBERS if not callable(getattr(policy, name, None))]


def _import(method: Method) -> Any:
    """Import a plugin file under its own module name; its marked object must be the one read."""
    spec = importlib.util.spec_from_file_location(f"kdbench_methods.{method.key}", method.path)
    if spec is None or spec.loader is None:
        raise KDBenchError(f"cannot import method file {method.path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # so tests and pickling can reach the plugin's helpers
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a broken plugin must name itself, not crash the workflow anonymously
        raise KDBenchError(f"method file {method.path} failed to import: {type(exc).__name__}: {exc}") from exc
    obj = getattr(module, method.name, None)
    if getattr(obj, _MARK, None) != method.kind:
        raise KDBenchError(f"method file {method.path}: {method.name} is not marked @{method.kind} once imported.")
    if method.kind == "token_policy":
        _raise_missing(missing_members(obj), method.name, f"method file {method.path}")
    return obj


def load_method_file(path: Path) -> Method:
    """Read one plugin file and import it: the method with its object loaded (what a job runs)."""
    method = read_method_file(path)
    method.obj  # noqa: B018 (imports now, so an import error names the file here)
    return method


def discover(methods_dir: Path) -> dict[str, Method]:
    """All methods in `methods_dir` (files starting with `_` are templates/helpers, not methods)."""
    methods_dir = Path(methods_dir)
    if not methods_dir.is_dir():
        raise KDBenchError(f"methods directory {methods_dir} does not exist (config key 'methods_dir').")
    return {
        m.key: m
        for m in (read_method_file(p) for p in sorted(methods_dir.glob("*.py")) if not p.name.startswith("_"))
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

