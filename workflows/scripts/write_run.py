"""Shim: write the resolved run config (a rule param) to run.yaml, atomically."""
import yaml

from kdbench.atomic import write_text

write_text(snakemake.output[0], yaml.safe_dump(snakemake.params.run, sort_keys=False))  # noqa: F821
