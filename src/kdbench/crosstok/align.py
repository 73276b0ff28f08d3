"""Position alignment between a student and a teacher tokenization of the same text.

Both tokenizers are fast (Rust `tokenizers`) ones, so one call per tokenizer gives the token ids and
each token's character span in the text. The text is the rendered one (chat template included);
when each model renders its own template, pass each tokenizer its rendered string and the
character offset at which the shared part (the response) starts, so both spans live in one
coordinate system. A token with no text (a bos/eos the tokenizer adds, offsets ``(0, 0)``) has
span None and is aligned to nothing.

Two alignments:

- `exact_groups`: the tokenizations agree on a *cut* where a token of each ends at the same
  character; the tokens between two consecutive common cuts form a group that covers the same text
  on both sides. This is TRL GOLD's `_align_by_byte_offsets` (groups close where both sides reach the
  same boundary) on character instead of byte offsets (the same cuts: a character boundary is a byte
  boundary, and both tokenizers report character offsets). A group of one student and one teacher
  token is DSKDv2's exact token alignment (same text, same start, same end: its `align_sequences`
  walks the two token strings with their `Ġ`/`▁` markers removed). Tokens after the last common cut
  (a text cut short on one side) are left out, where GOLD puts them in one last group.
- `mined_alignment`: FuseLLM's minimum-edit-distance alignment: dynamic time warping over the two
  token sequences with the Levenshtein distance between token strings (markers removed) as the
  cost; each student position gets the teacher positions the warping path matches it with.

Which method uses which alignment: docs/METHODS.md §6.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from kdbench.errors import KDBenchError

# Word-boundary markers of byte-level BPE (GPT-2 `Ġ`, newline `Ċ` is text) and SentencePiece (`▁`).
MARKERS = ("Ġ", "▁")

Span = tuple[int, int]


@dataclass(frozen=True)
class Encoded:
    """One tokenization of a text: ids, token strings and character spans (None: no text)."""

    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    spans: tuple[Span | None, ...]


@dataclass(frozen=True)
class Group:
    """Student and teacher positions whose tokens cover the same characters of the text."""

    student: tuple[int, ...]
    teacher: tuple[int, ...]


def encode(tokenizer, text: str, *, start: int = 0, add_special_tokens: bool = True) -> Encoded:
    """Tokenize `text` once with a fast tokenizer, spans shifted so that character `start` is 0.

    Tokens that end at or before `start` (the prompt of a template the other side renders
    differently) and tokens with an empty span (special tokens the tokenizer adds) get span None."""
    if not getattr(tokenizer, "is_fast", False):
        raise KDBenchError(f"{getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)}: not a fast tokenizer; "
                           "cross-tokenizer alignment needs the character offsets only fast (tokenizer.json) ones give.")
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    spans = tuple(None if e <= s or e <= start else (max(s, start) - start, e - start)
                  for s, e in enc["offset_mapping"])
    ids = tuple(enc["input_ids"])
    return Encoded(ids, tuple(tokenizer.convert_ids_to_tokens(list(ids))), spans)


def _ends(spans: tuple[Span | None, ...]) -> set[int]:
    """The characters where a token with text ends."""
    return {span[1] for span in spans if span is not None}


def _assign(spans: tuple[Span | None, ...], cuts: list[int]) -> list[list[int]]:
    """Positions per cut: a token belongs to the first common cut at or after its end."""
    groups: list[list[int]] = [[] for _ in cuts]
    for position, span in enumerate(spans):
        if span is not None:
            k = bisect.bisect_left(cuts, span[1])
            if k < len(cuts):
                groups[k].append(position)
    return groups


def exact_groups(student: Encoded, teacher: Encoded) -> list[Group]:
    """Groups of student and teacher positions between consecutive common cuts (see module doc)."""
    cuts = sorted(_ends(student.spans) & _ends(teacher.spans))
    pairs = zip(_assign(student.spans, cuts), _assign(teacher.spans, cuts))
    return [Group(tuple(s), tuple(t)) for s, t in pairs if s and t]


def exact_pairs(groups: list[Group]) -> list[tuple[int, int]]:
    """(student, teacher) positions of the one-to-one groups: DSKDv2's exact token alignment."""
    return [(g.student[0], g.teacher[0]) for g in groups if len(g.student) == 1 and len(g.teacher) == 1]


def teacher_positions(groups: list[Group], n_student: int) -> list[tuple[int, ...]]:
    """For each student position, the teacher positions of its group (empty: unaligned)."""
    out: list[tuple[int, ...]] = [() for _ in range(n_student)]
    for group in groups:
        for position in group.student:
            out[position] = group.teacher
    return out


def strip_markers(token: str) -> str:
    """A token string without the byte-level / SentencePiece word-boundary markers."""
    for marker in MARKERS:
        token = token.replace(marker, "")
    return token


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character, each costing 1)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def dtw(series_1: list[str], series_2: list[str]) -> tuple[list[tuple[int, int]], float]:
    """Dynamic time warping of two token-string sequences with Levenshtein cost, as FuseLLM's
    `dtw`: accumulated cost D[i,j] = d(i,j) + min(D[i-1,j], D[i,j-1], D[i-1,j-1]); the path is
    traced back from the last cell preferring the diagonal, then i-1, then j-1. Returns the path's
    (i, j) cells from (0, 0) and its total cost."""
    inf = float("inf")
    n, m = len(series_1), len(series_2)
    acc = [[inf] * (m + 1) for _ in range(n + 1)]
    acc[0][0] = 0.0
    for i in range(n):
        for j in range(m):
            cost = levenshtein(series_1[i], series_2[j])
            acc[i + 1][j + 1] = cost + min(acc[i][j + 1], acc[i + 1][j], acc[i][j])
    i, j, path = n - 1, m - 1, []
    while i > 0 or j > 0:
        path.append((i, j))
        options = [acc[i][j] if i > 0 and j > 0 else inf, acc[i][j + 1] if i > 0 else inf,
                   acc[i + 1][j] if j > 0 else inf]
        move = options.index(min(options))
        i, j = (i - 1, j - 1) if move == 0 else (i - 1, j) if move == 1 else (i, j - 1)
    path.append((0, 0))
    return path[::-1], acc[n][m]


def mined_alignment(student: Encoded, teacher: Encoded) -> list[tuple[int, ...]]:
    """FuseLLM's MinED alignment: for each student position, the teacher positions the DTW path
    (Levenshtein cost on marker-free token strings; the teacher is FuseLLM's `series_1`, the
    "blending" model) matches it with; positions without text are aligned to nothing."""
    s_pos = [k for k, span in enumerate(student.spans) if span is not None]
    t_pos = [k for k, span in enumerate(teacher.spans) if span is not None]
    out: list[tuple[int, ...]] = [() for _ in student.ids]
    if not s_pos or not t_pos:
        return out
    path, _ = dtw([strip_markers(teacher.tokens[k]) for k in t_pos], [strip_markers(student.tokens[k]) for k in s_pos])
    matched: dict[int, list[int]] = {}
    for i, j in path:
        matched.setdefault(s_pos[j], []).append(t_pos[i])
    for position, teachers in matched.items():
        out[position] = tuple(teachers)
    return out
