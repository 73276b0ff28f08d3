# kdbench: distillation grid → evaluations → tables. Logic lives in src/kdbench and
# workflows/rules/common.smk; the rules are declarations.
from pathlib import Path

from snakemake.utils import min_version

from kdbench.config import BASE_CONFIGS

min_version("8.20")


for base_config in BASE_CONFIGS:  # config/tiny.yaml, config/variants.yaml; --configfile merges over them

    configfile: base_config



include: "workflows/rules/common.smk"
include: "workflows/rules/data.smk"
include: "workflows/rules/train.smk"
include: "workflows/rules/evaluate.smk"
include: "workflows/rules/aggregate.smk"


for plugin_rules in sorted(Path(workflow.basedir, "methods").glob("*.smk")):

    include: plugin_rules


rule all:
    default_target: True
    input:
        TABLES,
