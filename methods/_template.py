"""Template for a new divergence: copy to methods/<key>.py (the key is the file stem), rename the
function to <key>, write the docstring, and list the label in a grid config. Files starting with `_`
are not discovered, so this template is never registered."""

import torch

from kdbench.registry import divergence


@divergence
def my_divergence(student_logp: torch.Tensor, teacher_logp: torch.Tensor, *, alpha: float = 0.5) -> torch.Tensor:
    """<Name>: <one line>.

    Paper: <authors, venue, arXiv id>.
    Formula (per token, p = teacher, q = student, both softmax(z/τ)): <...>.
    Direction: <forward / reverse / symmetric>.
    Defaults: alpha = 0.5. Ranges: alpha in [0, 1].

    Inputs are fp32 log-probabilities (N, V) of the N valid response tokens, already tempered and
    vocabulary-aligned by the harness; return the (N,) per-token values. Do not mask, reduce, or
    multiply by τ²: kdbench.losses does that identically for every method.
    """
    p, q = teacher_logp.exp(), student_logp.exp()
    return alpha * (p * (teacher_logp - student_logp)).sum(-1) + (1 - alpha) * (q * (student_logp - teacher_logp)).sum(-1)
