"""kdbench: a benchmark and reproducibility harness for token-level knowledge distillation of LLMs."""

__version__ = "0.1.0"
