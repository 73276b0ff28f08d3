"""DSKD: dual-space knowledge distillation with cross-model attention, across tokenizers."""

import math

import torch
import torch.nn.functional as F

from kdbench.registry import crosstok


class Projectors(torch.nn.Module):
    """DSKD's trainable projectors (its configs/projector_config.json): `query` 2·d_s → 2·d_t (the
    student's [input; target] embeddings into the teacher's key space), `t2s` d_t → d_s and `s2t`
    d_s → d_t (hidden states into the other model's space); each one nn.Linear with bias, PyTorch's
    default initialisation."""

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.query = torch.nn.Linear(2 * student_dim, 2 * teacher_dim)
        self.t2s = torch.nn.Linear(teacher_dim, student_dim)
        self.s2t = torch.nn.Linear(student_dim, teacher_dim)


def projectors(student_dim: int, teacher_dim: int) -> Projectors:
    """The module the harness builds from the two models' hidden sizes, trains and saves with the student."""
    return Projectors(student_dim, teacher_dim)


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per row KL(softmax(p/T) ‖ softmax(q/T)) (DSKD's compute_forward_kl_divergence, no T² factor)."""
    p_logp = F.log_softmax(p_logits / temperature, -1)
    return (p_logp.exp() * (p_logp - F.log_softmax(q_logits / temperature, -1))).sum(-1)


def dual_space_terms(z_s, z_t, h_s, h_t, e_s_in, e_s_tgt, e_t_in, e_t_tgt, y_s, w_s, w_t, proj: Projectors,
                     temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One example's DSKD values: (per student row t2s CE + agreement-masked t2s KD (n_s,), per
    teacher row s2t KD (n_t,)). z: each side's logits (or log-probabilities: the same softmax) of its
    response rows; h: final hidden states; e: input embeddings of each row's token and predicted
    token; y_s: the student's predicted ids; w: output-head weights (V, d). The formula is the
    method's docstring; the stds are each over this example's response rows."""
    def project(layer, x):  # the projectors may be bf16 (the student's engine casts them with it)
        return layer(x.to(layer.weight.dtype)).to(x.dtype)

    k = torch.cat([e_t_in, e_t_tgt], -1)
    k = k / k.std()
    q = project(proj.query, torch.cat([e_s_in, e_s_tgt], -1))
    align = q @ k.T / math.sqrt(k.shape[-1])  # (n_s, n_t); the scale is √(2·d_t)
    v_t = project(proj.t2s, h_t / h_t.std() + e_t_tgt / e_t_tgt.std())
    z_t2s = align.softmax(-1) @ v_t @ w_s.T  # teacher states at each student row, read by the student head
    ce = F.cross_entropy(z_t2s, y_s, reduction="none")
    agree = (z_t2s.argmax(-1) == y_s).float()
    t2s_kd = agree * kl(z_t2s.detach(), z_s, temperature)
    z_s2t = align.T.softmax(-1) @ project(proj.s2t, h_s) @ w_t.T  # student states at each teacher row, teacher head
    s2t_kd = kl(z_t, z_s2t, temperature)
    return ce + t2s_kd, s2t_kd


@crosstok(alignment="attention", modules="projectors")
def dskd(student_logp: torch.Tensor, teacher_logp: torch.Tensor, *, student_hidden: torch.Tensor,
         teacher_hidden: torch.Tensor, student_input_embeds: torch.Tensor, student_target_embeds: torch.Tensor,
         teacher_input_embeds: torch.Tensor, teacher_target_embeds: torch.Tensor, student_targets: torch.Tensor,
         student_head: torch.Tensor, teacher_head: torch.Tensor, modules: Projectors, temperature: float = 2.0,
         kd_ratio: float = 0.5, modules_lr: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """DSKD with cross-model attention (Zhang, Zhang, Xu, Ding, Chen, Xu: "Dual-Space Knowledge
    Distillation for Large Language Models", EMNLP 2024; songmzhang/DSKD
    `code/criterions/dual_space_kd_with_cross_model_attention.py`), a cross-tokenizer method.

    Per example, student response rows i (token x_i, predicting y_i; hidden h^s_i, logits z^s_i)
    and teacher response rows j (x'_j, y'_j; h^t_j, z^t_j); E_s, E_t the input embeddings (detached),
    W_s, W_t the output-head weights (detached); σ(·) the std over the example's rows:
        k_j   = [E_t x'_j ; E_t y'_j] / σ([E_t x' ; E_t y'])                     (keys, 2·d_t)
        q_i   = W_q [E_s x_i ; E_s y_i] + b_q                                      (queries, 2·d_t)
        a_ij  = q_i·k_j / √(2·d_t)
        t2s_i = Σ_j softmax_j(a_i·) · (W_t2s (h^t_j/σ(h^t) + E_t y'_j/σ(E_t y')) + b_t2s),   z^t2s_i = W_s t2s_i
        s2t_j = Σ_i softmax_i(a_·j) · (W_s2t h^s_i + b_s2t),                                  z^s2t_j = W_t s2t_j
    Student rows: CE(z^t2s_i, y_i) + 1[argmax z^t2s_i = y_i] · KL(softmax(sg(z^t2s_i)/T) ‖ softmax(z^s_i/T));
    teacher rows: KL(softmax(z^t_j/T) ‖ softmax(z^s2t_j/T)). The harness sums both sides' values and
    divides by the student's response tokens: KD = (Σ_i … + Σ_j …) / n_s, loss = (1 − kd_ratio)·CE +
    kd_ratio·KD, DSKD's (1 − kd_rate)·CE + kd_rate·(t2s_ce + t2s_kd + s2t_kd) over its token count.
    The t2s CE trains the query and t2s projectors only (no student gradient: embeddings and heads
    detached); the t2s KD trains the student; the s2t KD trains the student, s2t and the query.
    Alignment: none needed (`alignment="attention"`: each side's whole response and end of sequence).
    Defaults (scripts/gpt2/dskd_cma_gpt2_base.sh): kd_rate 0.5 (`kd_ratio`), kd_temperature 2.0
    (`temperature`, both sides, no T²), forward KL, projector_lr 1e-3 (`modules_lr`: the projectors'
    optimizer group, on the run's schedule and weight decay, as `Distiller.add_optimizer_param_group`
    adds it; null trains them at the student's rate). Range: temperature > 0, modules_lr > 0. No token
    policy composes (no space). Projectors: `projectors` (above), saved with the student. Formula
    code: `dual_space_terms`; docs/METHODS.md §6 (differences from the code).
    """
    if not temperature > 0:
        raise ValueError(f"dskd: temperature = {temperature} must be > 0")
    return dual_space_terms(student_logp, teacher_logp, student_hidden, teacher_hidden, student_input_embeds,
                            student_target_embeds, teacher_input_embeds, teacher_target_embeds, student_targets,
                            student_head, teacher_head, modules, temperature)
