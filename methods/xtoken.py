"""X-Token P-KL: KL to the teacher after projecting the student into the teacher's vocabulary."""

import torch

from kdbench.crosstok import losses
from kdbench.registry import crosstok


@crosstok(alignment="chunks", space="teacher")
def xtoken(student_logp: torch.Tensor, teacher_logp: torch.Tensor, *, projection_indices: torch.Tensor,
           projection_weights: torch.Tensor, kd_ratio: float = 0.909091, vocab_topk: int = 8192) -> torch.Tensor:
    """X-Token P-KL (NVIDIA NeMo-RL, `CrossTokenizerDistillationLossFn._compute_p_kl`; projection from
    its tools/x_token), a cross-tokenizer method.

    Formula (per aligned chunk, q = student, p = teacher, M = the pair's sparse student→teacher
    projection, S = the `vocab_topk` teacher ids of largest maximum teacher log-probability over the
    chunk's micro-batch rows given, all ids when vocab_topk ≥ V_t):
        r_t = Σ_s q_s M[s, t],   r̃_t = r_t / (Σ_{t'∈S} r_{t'} + 1e-10),   p̃_t = p_t / Σ_{t'∈S} p_{t'}
        PKL = Σ_{t∈S} p̃_t (log p̃_t − log(r̃_t + 1e-10))
    Direction: forward KL, in the teacher's vocabulary. Range: [0, ∞).
    Alignment: chunks of positions with the same text (every exact group; `alignment="chunks"`): the
    student's probabilities averaged over a chunk (then projected: the projection is linear), the
    teacher's log-probabilities averaged over it, as NeMo-RL does.
    Defaults (NeMo-RL): temperature 1, L = 1 · KL + 0.1 · CE, here (1 − kd_ratio)·CE + kd_ratio·KL with
    kd_ratio 0.909091 = 1/1.1 (the same up to a factor 1.1); vocab_topk 8192 (≥ 1). NeMo-RL's
    dynamic rescaling of the KL to CE's magnitude each step is not applied.
    A token policy would act in the teacher's space (p̃ and r̃; `space="teacher"`).
    Formula code: kdbench.crosstok.losses.xtoken_pkl; docs/METHODS.md §6.
    """
    if vocab_topk < 1:
        raise ValueError(f"xtoken: vocab_topk {vocab_topk}: give at least 1.")
    return losses.xtoken_pkl(student_logp, teacher_logp, projection_indices, projection_weights, vocab_topk=vocab_topk)
