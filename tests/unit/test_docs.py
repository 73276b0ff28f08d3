"""docs/METHODS.md describes the shipped methods as the code has them: every plugin is there with its
default hyper-parameters, and every citation of it in the code names a section it has."""

import re

from kdbench.registry import discover


def _sections(text: str) -> set[str]:
    return set(re.findall(r"^## (\d+)\. ", text, re.M))


def test_every_method_and_its_defaults_are_in_docs_methods(repo):
    doc = (repo / "docs/METHODS.md").read_text(encoding="utf-8").replace("−", "-")  # typeset minus
    for key, plugin in discover(repo / "methods").items():
        assert f"`{key}`" in doc, f"docs/METHODS.md does not describe the plugin {key}"
        if plugin.kind == "divergence":
            [row] = [line for line in doc.splitlines() if line.startswith(f"| `{key}` |")]
            for name, value in plugin.defaults.items():  # e.g. "α = 0.1", "λ = 0.9", "μ = 0.5"
                assert re.search(rf"= {re.escape(str(value))}\b", row), f"{key}: default {name}={value} not in its row"
    adakd = discover(repo / "methods")["adakd"].defaults
    for name in ("beta", "eps", "delta", "warmup", "r_min", "tau_base", "c"):  # the full method's knobs
        assert re.search(rf"= {re.escape(str(adakd[name]))}\b", doc), (name, adakd[name])
    egad = discover(repo / "methods")["egad"].defaults
    for name in ("lambda0", "t_full", "kappa", "gamma", "q_hard", "beta_feat"):
        assert re.search(rf"= {re.escape(str(egad[name]))}\b", doc), (name, egad[name])


def test_citations_name_docs_methods_and_a_section_it_has(repo):
    sections = _sections((repo / "docs/METHODS.md").read_text(encoding="utf-8"))
    cited = 0
    for path in [*repo.glob("src/kdbench/**/*.py"), *repo.glob("methods/*.py"), *repo.glob("config/*.yaml"),
                 *repo.glob("workflows/schemas/*.yaml"), *repo.glob("evaluation/**/*.md")]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?<![\w/])METHODS\.md", text), f"{path}: cite docs/METHODS.md (users have no other)"
        for first, last in re.findall(r"docs/METHODS\.md §(\d)(?:-(\d))?", text):
            cited += 1
            assert {first, last or first} <= sections, f"{path}: docs/METHODS.md §{first} does not exist"
    assert cited >= 10
