# kdbench: distillation grid → evaluations → tables. Logic lives in src/kdbench and
# workflows/rules/common.smk; the rules are declarations.
from pathlib import Path

from snakemake.utils import min_version

min_version("8.20")


configfile: "config/tiny.yaml"
configfile: "config/variants.yaml"


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
