# kdbench: distillation grid → evaluations → tables. Logic lives in src/kdbench and
# workflows/rules/common.smk; the rules are declarations.
from pathlib import Path

from snakemake.utils import min_version

from kdbench.config import DEFAULT_CONFIG, SHARED_CONFIGS

min_version("8.20")


# The embedded default grid (config/tiny.yaml) only when no --configfile is given: a grid file starts
# from the schemas' defaults. The shared labels (config/variants.yaml) under every grid; Snakemake
# merges each --configfile and --config over them.
if not workflow.configfiles:

    configfile: DEFAULT_CONFIG


for shared_config in SHARED_CONFIGS:

    configfile: shared_config



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
