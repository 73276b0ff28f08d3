"""Method labels → resolved methods. A label is `base[+policy]`: `base` is `sft`, a `method_defs`
label, a divergence plugin, or a token-policy plugin (which then runs over its declared
`base_divergence`, e.g. `egad` = fkl under the EGAD policy); `policy` is a token-policy plugin key
or a `policy_defs` label. Each resolves to the `method` section of a run.yaml (kdbench.spec.Method):
the divergence and policies with their hyper-parameters bound to the plugins' signatures, read
from the plugin files without importing them (kdbench.registry)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from kdbench import registry
from kdbench.errors import KDBenchError
from kdbench.paths import portable
from kdbench.spec import Method, default_kd_ratio

RESERVED = {"teacher"}  # the teacher's own row, evaluated from its SFT run or its pretrained weights
SFT = {"divergence": None, "hp": {}, "kd_ratio": 0.0}
SOURCES_FILE = Path(__file__).with_name("sources.py")  # the data sources (kdbench.sources.SOURCES)
SOURCE_HARNESS_ARGS = ("stream", "sampler", "total_steps", "batch_size")


class Labels:
    """The grid's labels: `method_defs` and `policy_defs` of its config over the plugins found in
    its `methods_dir`. `where` names the config in errors."""

    def __init__(self, method_defs: dict, policy_defs: dict, plugins: dict[str, registry.Method], where: str):
        self.defs, self.policy_defs, self.plugins, self.where = {"sft": SFT, **method_defs}, policy_defs, plugins, where
        self.resolved: dict[str, dict] = {}

    def method(self, label: str) -> dict:
        """The resolved method of a label (cached); labels outside the grid (e.g. `init_from`) too."""
        if label not in self.resolved:
            self.resolved[label] = self._parse(label)
        return self.resolved[label]

    def _base(self, base: str, where: str) -> dict:
        """What `base` stands for: its method_defs entry, or a plugin's own."""
        plugin = self.plugins.get(base)
        if base in self.defs:
            return self.defs[base]
        if plugin is not None and plugin.kind in ("divergence", "crosstok"):
            return {"divergence": base}
        if plugin is not None:
            return {"divergence": plugin.base_divergence or "fkl", "policy": base}
        known = sorted({*self.defs, *self.plugins})
        raise KDBenchError(f"{where}: unknown method '{base}'. Known: {', '.join(known)} "
                           f"(plugins in methods/ and labels in method_defs).")

    def _parse(self, label: str) -> dict:
        """`base[+policy]` → the resolved method: divergence and policies with bound hyper-parameters."""
        where = f"{self.where}: key 'methods', label '{label}'"
        if label in RESERVED:
            raise KDBenchError(f"{where}: '{label}' is reserved for the teacher's row, which every table has.")
        base, _, suffix = label.partition("+")
        spec = self._base(base, where)
        if suffix and spec.get("policy_divergence"):  # under a token policy this method distils with another loss
            spec = {**spec, "divergence": spec["policy_divergence"], "hp": {}}
        cross = self._crosstok(spec["divergence"])
        method = Method(label=label, kd_ratio=spec.get("kd_ratio", cross["kd_ratio"] if cross
                                                       else default_kd_ratio(spec["divergence"])),
                        **{k: spec[k] for k in ("source", "source_hp", "init_from", "train_data") if k in spec}).as_dict()
        if method["init_from"] is not None:
            self.method(method["init_from"])  # must itself be a valid label
        if method["source"] != "off_policy" and not spec["divergence"]:
            raise KDBenchError(f"{where}: data source '{method['source']}' needs a distillation loss.")
        check_source_hp(method["source"], method["source_hp"], where)
        if cross and method["source"] != "off_policy":
            raise KDBenchError(f"{where}: cross-tokenizer method '{spec['divergence']}' trains on the dataset's "
                               f"responses only (source off_policy); '{method['source']}' would need the student's "
                               "samples re-tokenized for the teacher, which is not wired yet.")
        if spec["divergence"]:
            div = registry.lookup(self.plugins, spec["divergence"], "crosstok" if cross else "divergence", where)
            method["divergence"] = plugin_entry(div, div.bind(spec.get("hp"), where))
        for policy_label in [p for p in (spec.get("policy"), suffix) if p]:
            if not spec["divergence"]:
                raise KDBenchError(f"{where}: a token policy needs a distillation loss; '{base}' has none.")
            if cross and cross["space"] is None:
                raise KDBenchError(
                    f"{where}: token policy '{policy_label}' cannot act on cross-tokenizer method '{spec['divergence']}': "
                    "a policy reads one teacher and one student distribution over one vocabulary per token, and "
                    f"{spec['divergence']}'s formula has none (@crosstok without space=; docs/METHODS.md §6). "
                    "The cross-tokenizer methods a policy composes with: "
                    f"{', '.join(self.crosstok_methods(composable=True)) or 'none'}.")
            policy = self.plugins.get(self.policy_defs.get(policy_label, {}).get("policy", policy_label))
            if cross and policy is not None and {"student_dim", "teacher_dim"} & set(policy.harness):
                raise KDBenchError(
                    f"{where}: token policy '{policy_label}' takes the models' hidden sizes for a feature loss on "
                    "hidden states, which a cross-tokenizer method has no aligned positions for; it composes "
                    "with same-vocabulary methods only.")
            policy_hp = spec.get("policy_hp", {}) if policy_label == suffix else {}
            method["policies"].append(self._policy_entry(policy_label, where, policy_hp))
        if method["policies"] and method["kd_ratio"] == 0:
            raise KDBenchError(f"{where}: kd_ratio is 0, so its token policy would have nothing to act on.")
        return method

    def _crosstok(self, key: str | None) -> dict | None:
        """A cross-tokenizer plugin's options (kdbench.registry.crosstok), or None for any other key."""
        plugin = self.plugins.get(key) if key else None
        return plugin.crosstok if plugin is not None and plugin.kind == "crosstok" else None

    def crosstok_methods(self, composable: bool = False) -> list[str]:
        """The cross-tokenizer plugins (with `composable`: those a token policy composes with)."""
        return sorted(k for k, m in self.plugins.items() if m.kind == "crosstok" and not (composable and m.crosstok["space"] is None))

    def _policy_entry(self, policy_label: str, where: str, policy_hp: dict) -> dict:
        """The policy of a label, its hyper-parameters (under the method's `policy_hp` for its plugin)
        bound to its signature; its own range checks run in kdbench.preflight."""
        pdef = self.policy_defs.get(policy_label, {"policy": policy_label})
        plugin = registry.lookup(self.plugins, pdef["policy"], "token_policy", where)
        return plugin_entry(plugin, plugin.bind({**pdef.get("hp", {}), **policy_hp.get(plugin.key, {})}, where))


def plugin_entry(plugin: registry.Method, hp: dict) -> dict:
    return {"key": plugin.key, "path": portable(plugin.path), "version": plugin.version, "hp": hp}


@functools.lru_cache(maxsize=1)
def source_params() -> dict[str, list[str]]:
    """Each data source of kdbench.sources and its hyper-parameters, read from the file's syntax tree
    (the module imports torch): `SOURCES = {name: Class, ...}` and each class's `__init__`."""
    tree = ast.parse(SOURCES_FILE.read_text(encoding="utf-8"))
    table = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "SOURCES" for t in node.targets))
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}

    def params(name: str) -> list[str]:
        init = next((n for n in classes[name].body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        if init is None:
            return params(classes[name].bases[0].id)
        args = init.args
        return [a.arg for a in (*args.args, *args.kwonlyargs) if a.arg not in ("self", *SOURCE_HARNESS_ARGS)]

    return {key.value: params(value.id) for key, value in zip(table.keys, table.values)}


def check_source_hp(source: str, hp: dict, where: str) -> None:
    """Bind a data source's hyper-parameters to its constructor, as for plugins."""
    sources = source_params()
    if source not in sources:
        raise KDBenchError(f"{where}: unknown data source '{source}'. Known: {', '.join(sources)}.")
    unknown = sorted(set(hp) - set(sources[source]))
    if unknown:
        raise KDBenchError(f"{where}: unknown source_hp {', '.join(unknown)} for data source '{source}'. "
                           f"It accepts: {', '.join(sources[source]) or 'none'}.")
