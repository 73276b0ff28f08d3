"""The per-pair vocabulary artifact, from the two tokenizers alone (no weights).

`kdbench vocab-map --student DIR --teacher DIR --out results/.../vocab_map.safetensors` writes one
safetensors file (numpy arrays, the report in its metadata) and the report beside it as json:

- `common_student`, `common_teacher` (int64, paired, sorted by student id): the common
  sub-vocabulary. Tokens match when their text is the same bytes once the markers are normalised:
  a byte-level BPE token (`Ġthe`, `Ċ`, `Ã©`) is read through the GPT-2 byte table, a SentencePiece
  one turns `▁` into a space and a byte-fallback token `<0xNN>` into that byte. Special tokens never
  match. Where one side has several ids with the same text, the lowest id stands for them.
- `relaxed_student`, `relaxed_teacher` (int64, paired): X-Token H-KL's common pairs, read off the
  projection by `exact_map(relaxed=True)` (NeMo-RL's `build_exact_token_map` on its H-KL path).
- `projection_indices` (int64, -1 = none) and `projection_weights` (float32), both (V_student, k):
  X-Token's sparse student->teacher projection, as NVIDIA NeMo-RL builds it
  (tools/x_token: minimal_projection_via_multitoken, reapply_exact_map, sort_and_cut_projection_matrix):
  every student token's text is re-tokenized by the teacher and its first `tokens_to_cut` teacher
  tokens get weights proportional to 0.9 * 0.1**i (i = 0, 1, ...; normalised to sum 1); the reverse
  pass does the same for every teacher token re-tokenized by the student (weight on (s_i, t));
  weights add up, each row is normalised to sum 1 and cut to its `top_k` largest; rows of common
  tokens are then pinned one-to-one (weight 1); finally each row is cut to `runtime_top_k` and
  normalised again. Differences from NeMo-RL's default: token texts come from the marker
  normalisation above (NeMo decodes each id, or with --use-canonicalization maps markers by string
  rules), tokens that are not valid UTF-8 alone (a partial byte) are not re-tokenized (NeMo re-encodes
  the replacement character), and the "scale trick" (a fixed 0.2 in the last column) and special-
  token similarity mapping are not applied.
- `mined_teacher`, `mined_student` (int64, paired, sorted by teacher id): FuseLLM's vocabulary map
  (fanqiwan/FuseLLM `src/utils/vocab_mapping.py`, `--vocab_mapping_type default`), every non-special
  teacher token to one student token: the student token of the same normalised bytes (the lowest
  id, as `common_*`) where there is one, else the student token at the least Levenshtein distance
  (rapidfuzz) over those bytes, the lowest student id on a tie (FuseLLM: the first in the base
  vocabulary's order, id order for its slow Llama tokenizer). Differences from FuseLLM: the distance
  is over the normalised bytes (FuseLLM: the token strings with the teacher's marker replaced by the
  student's, `Ġ` → `▁`, so a byte-level `Ã©` is two characters where a SentencePiece `é` is one),
  and special tokens map to nothing and are never a target (FuseLLM maps every vocabulary entry).

The report: vocabulary sizes, common size, overlap ratio (common / smaller vocabulary, as NeMo-RL's
overlap table), projection entries, the MinED map's exact and edit-distance matches and its own
build seconds (wall and CPU), build seconds, and where each tokenizer came from (docs/METHODS.md §6).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from kdbench.errors import KDBenchError

TOKENS_TO_CUT = 4  # NeMo-RL minimal_projection_via_multitoken --tokens-to-cut
TOP_K = 32  # its --top-k (first stage)
RUNTIME_TOP_K = 4  # sort_and_cut_projection_matrix --top_k in NeMo-RL's guide
HKL_THRESHOLD = 0.6  # NeMo-RL build_exact_token_map with xtoken_loss=True


def _is_byte_level(tokenizer) -> bool:
    """Whether the tokenizer decodes through the GPT-2 byte table (a ByteLevel decoder anywhere)."""
    return '"ByteLevel"' in json.dumps(json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder"))


def special_ids(tokenizer) -> set[int]:
    """Ids of special tokens: the named ones and every added token flagged special."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | {i for i, tok in added.items() if getattr(tok, "special", False)}


def token_bytes(tokenizer) -> dict[int, bytes]:
    """The text of every non-special token as bytes, the markers normalised (see module doc)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = {ch: b for b, ch in bytes_to_unicode().items()}

    def byte_level(tok: str) -> bytes:  # an added token outside the byte table is its own text
        return bytes(table[c] for c in tok) if all(c in table for c in tok) else tok.encode()

    def sentencepiece(tok: str) -> bytes:
        if len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            return bytes([int(tok[3:5], 16)])
        return tok.replace("▁", " ").encode()

    as_bytes = byte_level if _is_byte_level(tokenizer) else sentencepiece
    skip = special_ids(tokenizer)
    return {i: as_bytes(tok) for tok, i in tokenizer.get_vocab().items() if i not in skip}


def common_vocab(student, teacher) -> tuple[np.ndarray, np.ndarray]:
    """Paired (student ids, teacher ids) of the tokens whose normalised bytes are equal."""
    def first_id(table: dict[int, bytes]) -> dict[bytes, int]:
        out: dict[bytes, int] = {}
        for i in sorted(table):
            out.setdefault(table[i], i)
        return out

    s, t = first_id(token_bytes(student)), first_id(token_bytes(teacher))
    pairs = sorted((s[text], t[text]) for text in s.keys() & t.keys())
    return np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.int64)


def decay_weights(n: int) -> list[float]:
    """NeMo-RL's `create_weight_distribution`: 0.9 * 0.1**i for i < n, normalised to sum 1."""
    raw = [0.9 * 0.1**i for i in range(n)]
    return [w / sum(raw) for w in raw]


def _texts(tokenizer) -> dict[int, str]:
    texts = {}
    for i, raw in token_bytes(tokenizer).items():
        try:
            texts[i] = raw.decode("utf-8")
        except UnicodeDecodeError:  # a partial UTF-8 byte has no text of its own
            continue
    return texts


def _multitoken_counts(student, teacher, tokens_to_cut: int) -> dict[int, dict[int, float]]:
    """{student id: {teacher id: summed weight}} of the forward and the reverse re-tokenization pass."""
    counts: dict[int, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for source, target, forward in ((student, teacher, True), (teacher, student, False)):
        texts, bad = _texts(source), special_ids(target)
        ids = list(texts)
        encoded = target([texts[i] for i in ids], add_special_tokens=False)["input_ids"] if ids else []
        for i, pieces in zip(ids, encoded):
            if not pieces or any(p in bad for p in pieces):
                continue
            pieces = pieces[:tokens_to_cut]
            for piece, w in zip(pieces, decay_weights(len(pieces))):
                s, t = (i, piece) if forward else (piece, i)
                counts[s][t] += w
    return counts


def _top(row: dict[int, float], k: int) -> dict[int, float]:
    """The `k` largest entries (ties: lower teacher id), normalised to sum 1."""
    kept = sorted(row.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    total = sum(w for _, w in kept)
    return {t: w / total for t, w in kept} if total > 0 else {}


def xtoken_projection(student, teacher, common: tuple[np.ndarray, np.ndarray], *, tokens_to_cut: int = TOKENS_TO_CUT,
                      top_k: int = TOP_K, runtime_top_k: int = RUNTIME_TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """X-Token's sparse student->teacher projection: (indices, weights), each (len(student), runtime_top_k)."""
    counts = _multitoken_counts(student, teacher, tokens_to_cut)
    rows = {s: _top(_top(row, top_k), runtime_top_k) for s, row in counts.items()}
    for s, t in zip(*common):
        rows[int(s)] = {int(t): 1.0}
    indices = np.full((len(student), runtime_top_k), -1, dtype=np.int64)
    weights = np.zeros((len(student), runtime_top_k), dtype=np.float32)
    for s, row in rows.items():
        for k, (t, w) in enumerate(sorted(row.items(), key=lambda kv: (-kv[1], kv[0]))):
            indices[s, k], weights[s, k] = t, w
    return indices, weights


def exact_map(indices: np.ndarray, weights: np.ndarray, *, relaxed: bool) -> tuple[np.ndarray, np.ndarray]:
    """NeMo-RL's `build_exact_token_map`: the common partition its gold path (strict: a row of exactly
    one weight 1.0; on a collision the lowest student id wins) or its H-KL path (relaxed: a top weight
    >= 0.6; on a collision the highest weight wins, then the lowest student id) reads off the projection."""
    best: dict[int, tuple[float, int]] = {}
    for s in range(indices.shape[0]):
        w, t = float(weights[s, 0]), int(indices[s, 0])
        single = indices.shape[1] == 1 or indices[s, 1] == -1
        if t < 0 or not (w >= HKL_THRESHOLD if relaxed else (w == 1.0 and single)):
            continue
        if t not in best or (relaxed and w > best[t][0]):
            best[t] = (w, s)
    pairs = sorted((s, t) for t, (_, s) in best.items())
    return np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.int64)


def _as_text(raw: bytes) -> str:
    """Bytes as a string of one character per byte (latin-1), so edit distances count bytes."""
    return raw.decode("latin-1")


def mined_map(student, teacher, *, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray, int]:
    """FuseLLM's vocabulary map (see module doc): (teacher ids, student ids, how many are exact)."""
    try:
        from rapidfuzz.distance import Levenshtein
        from rapidfuzz.process import cdist
    except ImportError as exc:
        raise KDBenchError("vocab-map: the MinED vocabulary map needs the rapidfuzz package (a dependency of "
                           "kdbench, in pyproject.toml); install it: pip install 'rapidfuzz>=3.0'.") from exc
    s_table, t_table = token_bytes(student), token_bytes(teacher)
    s_ids = np.array(sorted(s_table), dtype=np.int64)
    s_texts = [_as_text(s_table[i]) for i in s_ids]
    first: dict[str, int] = {}
    for i, text in zip(s_ids.tolist(), s_texts):
        first.setdefault(text, i)
    t_ids = np.array(sorted(t_table), dtype=np.int64)
    t_texts = [_as_text(t_table[i]) for i in t_ids]
    mapped = np.array([first.get(text, -1) for text in t_texts], dtype=np.int64)
    rest = np.flatnonzero(mapped < 0)
    for at in range(0, len(rest), chunk):  # (chunk, V_student) distances at a time; argmin: the lowest id
        rows = rest[at:at + chunk]
        distances = cdist([t_texts[k] for k in rows], s_texts, scorer=Levenshtein.distance, dtype=np.int32)
        mapped[rows] = s_ids[distances.argmin(axis=1)]
    return t_ids, mapped, len(t_ids) - len(rest)


def build(student, teacher, *, runtime_top_k: int = RUNTIME_TOP_K) -> tuple[dict[str, np.ndarray], dict]:
    """The artifact's arrays and its report (sizes, overlap, projection entries, build seconds)."""
    started = time.perf_counter()
    common = common_vocab(student, teacher)
    indices, weights = xtoken_projection(student, teacher, common, runtime_top_k=runtime_top_k)
    relaxed = exact_map(indices, weights, relaxed=True)  # X-Token H-KL's common pairs
    mined_started, mined_cpu = time.perf_counter(), time.process_time()
    mined_teacher, mined_student, exact = mined_map(student, teacher)
    mined = {"mined_mapped": int(len(mined_teacher)), "mined_exact": exact,
             "mined_edit_distance": int(len(mined_teacher)) - exact,
             "mined_exact_share": round(exact / max(len(mined_teacher), 1), 4),
             "mined_seconds": round(time.perf_counter() - mined_started, 2),
             "mined_cpu_seconds": round(time.process_time() - mined_cpu, 2)}
    arrays = {"common_student": common[0], "common_teacher": common[1], "projection_indices": indices,
              "projection_weights": weights, "relaxed_student": relaxed[0], "relaxed_teacher": relaxed[1],
              "mined_teacher": mined_teacher, "mined_student": mined_student}
    report = {"student_vocab": len(student), "teacher_vocab": len(teacher), "common": int(len(common[0])),
              "overlap_ratio": round(len(common[0]) / min(len(student), len(teacher)), 4),
              "projection_top_k": runtime_top_k, "projection_entries": int((indices >= 0).sum()),
              "student_rows_projected": int((indices[:, 0] >= 0).sum()), "relaxed_common": int(len(relaxed[0])),
              **mined, "build_seconds": round(time.perf_counter() - started, 2)}
    return arrays, report


def save(path: Path, arrays: dict[str, np.ndarray], report: dict) -> None:
    """`path` (safetensors, the report in its metadata) and the report beside it as `<path>.json`."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(arrays, str(path), metadata={"report": json.dumps(report)})
    path.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")


def load(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a vocab-map file."""
    from safetensors.numpy import load_file

    return load_file(str(path))


def _tokenizer(path: str, role: str):
    from transformers import AutoTokenizer

    if not Path(path, "tokenizer.json").is_file() and not Path(path, "tokenizer_config.json").is_file():
        raise KDBenchError(f"vocab-map: --{role} {path}: no tokenizer there (a directory with tokenizer.json, "
                           "as save_pretrained writes it, e.g. a model directory of `kdbench init-model`).")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.is_fast:
        raise KDBenchError(f"vocab-map: --{role} {path}: not a fast tokenizer; cross-tokenizer alignment needs one.")
    return tokenizer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kdbench vocab-map", description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", required=True, help="the student's tokenizer directory")
    ap.add_argument("--teacher", required=True, help="the teacher's tokenizer directory")
    ap.add_argument("--out", required=True, type=Path, help="the .safetensors file to write (report beside it)")
    ap.add_argument("--top-k", type=int, default=RUNTIME_TOP_K, help="teacher tokens kept per student token")
    args = ap.parse_args(argv)
    if args.top_k < 1:
        raise KDBenchError(f"vocab-map: --top-k {args.top_k}: give at least 1.")
    arrays, report = build(_tokenizer(args.student, "student"), _tokenizer(args.teacher, "teacher"),
                           runtime_top_k=args.top_k)
    report.update(student=args.student, teacher=args.teacher)
    save(args.out, arrays, report)
    print(json.dumps(report))
    return 0
