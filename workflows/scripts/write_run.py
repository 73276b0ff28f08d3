"""Shim: write a rule's `run` param (a resolved run config, or a teacher-states spec) as YAML, atomically."""
import yaml

from kdbench.atomic import write_text

write_text(snakemake.output[0], yaml.safe_dump(snakemake.params.run, sort_keys=False))  # noqa: F821
