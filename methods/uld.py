"""ULD: Universal Logit Distillation, a cross-tokenizer method."""

import torch

from kdbench.crosstok import losses
from kdbench.registry import crosstok


@crosstok(alignment="position")
def uld(student_logp: torch.Tensor, teacher_logp: torch.Tensor, *, kd_ratio: float = 0.6) -> torch.Tensor:
    """Universal Logit Distillation (Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the
    Universal Logit Distillation Loss for LLMs", arXiv 2402.12030; code Nicolas-BZRD/llm-recipes).

    Formula (per aligned unit, q = student, p = teacher): the Wasserstein-1 distance under a uniform
    transport cost, in closed form on the sorted probability vectors,
        ULD = Σ_k |q_(k) − p_(k)|,   q_(1) ≥ q_(2) ≥ …,  p_(1) ≥ …,  the shorter vector zero-padded.
    Direction: symmetric. Range: [0, 2].
    Alignment (its code): the i-th response token of the student with the i-th of the teacher, the
    first min(n_s, n_t) of them and the end of sequence (`alignment="position"`); no text alignment.
    Defaults (llm-recipes): L = 1 · CE + 1.5 · ULD, temperatures 1, no τ². The harness mixes
    (1 − kd_ratio)·CE + kd_ratio·KD, so `kd_ratio` 0.6 gives 0.4 · CE + 0.6 · ULD = (1 · CE + 1.5 · ULD) / 2.5:
    the same objective up to a constant factor (Adam is invariant to it, up to its ε).
    No hyper-parameters. No token policy composes with it: it compares sorted probabilities of two
    vocabularies, not one distribution pair over one vocabulary (no `space`).
    Formula code: kdbench.crosstok.losses.uld; docs/METHODS.md §6.
    """
    return losses.uld(student_logp, teacher_logp)
