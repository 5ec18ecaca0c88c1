"""Distillation losses as pure functions over tensors.

Nothing here sees a model: the training loop computes log-probs and passes tensors in. Every function returns
unreduced values ((B,) per example or (B, T) per token); reduction happens in one place, the training loop, which
normalises over the whole gradient-accumulation window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rank_calibration_loss(
    chosen_logps: torch.Tensor,  # (B,) log P(y+|x) of the teacher output
    rejected_logps: torch.Tensor,  # (B,) log P(y-|x) of the student output
    beta: float,
) -> torch.Tensor:  # (B,)
    """PLaD ranking calibration: max(0, beta - log P(y+|x) + log P(y-|x)) (Zhang et al. 2024, eq. 3)."""
    return torch.clamp(beta - chosen_logps + rejected_logps, min=0.0)


def margin_calibration_loss(
    chosen_logps: torch.Tensor,  # (B,)
    rejected_logps: torch.Tensor,  # (B,)
    chosen_scores: torch.Tensor,  # (B,) quality s(y+; x)
    rejected_scores: torch.Tensor,  # (B,) quality s(y-; x)
    beta: float,
) -> torch.Tensor:  # (B,)
    """PLaD margin calibration: max(0, beta * (s(y+) - s(y-)) - log P(y+|x) + log P(y-|x)) (eq. 4).

    The required log-likelihood gap grows with the quality gap; pairs the scorer rates equal ask for no gap.
    """
    margin = beta * (chosen_scores - rejected_scores)
    return torch.clamp(margin - chosen_logps + rejected_logps, min=0.0)


def token_nll(
    logits: torch.Tensor,  # (B, T, V) aligned: logits[:, t] scores labels[:, t]; or gathered (M, V)
    labels: torch.Tensor,  # (B, T), -100 where no loss; or (M,)
) -> torch.Tensor:  # (B, T) or (M,), 0 where labels == -100
    """Per-token negative log-likelihood (the CE of SFT, SeqKD and the regulariser)."""
    V = logits.shape[-1]
    nll = F.cross_entropy(
        logits.reshape(-1, V).float(), labels.reshape(-1), ignore_index=-100, reduction="none"
    )
    return nll.view(labels.shape)


def ranking_accuracy(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs where the model already ranks the chosen output first (a detached diagnostic)."""
    return (chosen_logps > rejected_logps).float().mean().detach()


# ----------------------------------------------------------------------------------------------------------------
# SLiC list-wise rank and DPKD sequence losses over sequence log-probs


def listwise_rank_loss(
    logps: torch.Tensor,  # (B, K) log P(y_k|x) of K outputs per prompt
    ranks: torch.Tensor,  # (B, K) integer ranks, 0 = best (the teacher output); equal ranks are ties
    mask: torch.Tensor,  # (B, K) bool, False = padding slot
    beta: float,
) -> torch.Tensor:  # (B,)
    """SLiC list-wise rank loss (Zhao et al. 2023, "Calibrating Sequence Likelihood Improves Conditional
    Language Generation", list-wise rank calibration): sum over ordered pairs (i, j) with rank_i < rank_j of

        max(0, beta * (rank_j - rank_i) - log P(y_i|x) + log P(y_j|x)).

    With ranks = arange(K) this is the paper's sum_{i<j} max(0, beta * |i - j| - log P(y_i) + log P(y_j)).
    Ties (equal ranks) and pairs touching a padding slot contribute nothing.
    """
    # Padding slots may hold anything (-inf, NaN): zero them so they reach neither the value nor the gradient.
    logps = torch.where(mask, logps, 0.0)  # (B, K)
    gap = ranks.unsqueeze(1) - ranks.unsqueeze(2)  # (B, K, K): [b, i, j] = rank_j - rank_i
    hinge = torch.clamp(beta * gap - logps.unsqueeze(2) + logps.unsqueeze(1), min=0.0)  # (B, K, K)
    pairs = mask.unsqueeze(2) & mask.unsqueeze(1) & (gap > 0)  # (B, K, K): i strictly better than j
    return torch.where(pairs, hinge, 0.0).sum(dim=(1, 2))


def dpkd_sequence_loss(
    chosen_logps: torch.Tensor,  # (B,) student log q(y_t|x), summed over tokens; y_t = teacher output
    rejected_logps: torch.Tensor,  # (B,) student log q(y_s|x), summed; y_s = student output
    teacher_chosen_logps: torch.Tensor,  # (B,) teacher log p(y_t|x), summed
    teacher_rejected_logps: torch.Tensor,  # (B,) teacher log p(y_s|x), summed
    chosen_lengths: torch.Tensor,  # (B,) |y_t| in tokens (ones: no length normalisation)
    rejected_lengths: torch.Tensor,  # (B,) |y_s| in tokens
    beta: float,
) -> torch.Tensor:  # (B,)
    """DPKD stage-2 preference loss with the teacher as reference model (Li et al. 2024, arXiv 2406.19774):

        -log sigmoid( (beta/|y_t|) * log(q(y_t)/p(y_t)) - (beta/|y_s|) * log(q(y_s)/p(y_s)) ).

    The teacher log-probs are constants (detached); F.logsigmoid keeps large margins finite.
    """
    chosen_ratio = (chosen_logps - teacher_chosen_logps.detach()) / chosen_lengths  # (B,) log(q/p) per token
    rejected_ratio = (rejected_logps - teacher_rejected_logps.detach()) / rejected_lengths  # (B,)
    return -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))


# ----------------------------------------------------------------------------------------------------------------
# Token-level losses over full-vocabulary logits. Shared conventions: logits (B, T, V) aligned with labels (B, T)
# (logits[:, t] scores labels[:, t]), -100 = no loss; p = softmax(teacher_logits) is a constant (detached),
# q = softmax(student_logits); computed in float32; per-token (B, T) values, exactly 0 where labels == -100.
# Any leading shape works the same: the training loop passes the gathered labelled tokens, logits (M, V) and
# labels (M,) (plad.core.logprobs.output_logits), and gets (M,) values. The shapes below name the (B, T) case.


def _clean_logits(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:  # (B, T, V) float32
    """float32 logits with masked positions replaced by zeros: whatever sits there (1e30, -inf, NaN) can produce
    neither a NaN value nor a NaN gradient, and torch.where sends those positions exactly zero gradient."""
    return torch.where(valid.unsqueeze(-1), logits.float(), 0.0)


def _log_probs(logits: torch.Tensor) -> torch.Tensor:  # (B, T, V)
    """log_softmax, with -inf (a -inf logit, or underflow) clamped to the most negative float32: then
    exp() is still 0 there, but differences of log-probs and 0 * (difference) stay finite."""
    return F.log_softmax(logits, dim=-1).clamp(min=torch.finfo(torch.float32).min)


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:  # (B, T, V) x2 -> (B, T)
    """KL(a || b) = sum_v a_v (log a_v - log b_v) over the vocabulary, from log-probs."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def _log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, weight_p: float) -> torch.Tensor:  # (B, T, V)
    """log(w * p + (1 - w) * q) in log space (logaddexp: the two-term logsumexp, without stacking a (B, T, V, 2)
    copy); a zero weight returns the other distribution exactly rather than adding log 0 = -inf."""
    if weight_p == 1.0:
        return log_p
    if weight_p == 0.0:
        return log_q
    log_w = torch.tensor([weight_p, 1.0 - weight_p], dtype=torch.float64).log().tolist()
    return torch.logaddexp(log_p + log_w[0], log_q + log_w[1])


def _student_teacher_log_probs(
    student_logits: torch.Tensor,  # (B, T, V)
    teacher_logits: torch.Tensor,  # (B, T, V)
    labels: torch.Tensor,  # (B, T)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # valid (B, T), log q (B, T, V), log p (B, T, V)
    valid = labels != -100
    log_q = _log_probs(_clean_logits(student_logits, valid))
    log_p = _log_probs(_clean_logits(teacher_logits.detach(), valid))
    return valid, log_q, log_p


def _forward_kl(
    student_logits: torch.Tensor,  # (B, T, V)
    teacher_logits: torch.Tensor,  # (B, T, V), constant
    labels: torch.Tensor,  # (B, T)
) -> torch.Tensor:  # (B, T)
    """KL(teacher || student) per token: the one helper behind token_divergence("kd") and token_kl_to_reference."""
    valid, log_q, log_p = _student_teacher_log_probs(student_logits, teacher_logits, labels)
    return torch.where(valid, _kl(log_p, log_q), 0.0)


def dpkd_token_loss(
    student_logits: torch.Tensor,  # (B, T, V)
    teacher_logits: torch.Tensor,  # (B, T, V)
    labels: torch.Tensor,  # (B, T)
    beta: float,
) -> torch.Tensor:  # (B, T)
    """DPKD per-token form of the released code (Li et al. 2024, arXiv 2406.19774): at each valid position,
    a = argmax of the teacher logits, b = argmax of the student logits,

        h = [log q(a) - log q(b)] - [log p(a) - log p(b)],   value = -log sigmoid(beta * h).

    When a == b, h = 0 and the value is log 2 (with no gradient). The caller mixes it with CE.
    """
    valid = labels != -100
    student = _clean_logits(student_logits, valid)  # (B, T, V)
    teacher = _clean_logits(teacher_logits.detach(), valid)  # (B, T, V)
    log_q, log_p = _log_probs(student), _log_probs(teacher)
    a = teacher.argmax(-1, keepdim=True)  # (B, T, 1) the teacher's top token
    b = student.detach().argmax(-1, keepdim=True)  # (B, T, 1) the student's top token
    h = (log_q.gather(-1, a) - log_q.gather(-1, b)) - (log_p.gather(-1, a) - log_p.gather(-1, b))  # (B, T, 1)
    return torch.where(valid, -F.logsigmoid(beta * h.squeeze(-1)), 0.0)


def generalized_jsd(
    student_logits: torch.Tensor,  # (B, T, V)
    teacher_logits: torch.Tensor,  # (B, T, V)
    labels: torch.Tensor,  # (B, T)
    beta: float,
) -> torch.Tensor:  # (B, T)
    """GKD's generalized Jensen-Shannon divergence (Agarwal et al. 2024, "On-Policy Distillation of Language
    Models", JSD(beta)): with M = beta * p + (1 - beta) * q,

        JSD(beta) = beta * KL(p || M) + (1 - beta) * KL(q || M).

    The endpoints follow the paper and TRL: beta == 0 gives KL(p || q) and beta == 1 gives KL(q || p). These
    are the scale-free limits JSD(beta) / beta (beta -> 0) and JSD(beta) / (1 - beta) (beta -> 1), NOT the
    values of the formula, which tends to 0 at both ends: the function is discontinuous at beta = 0 and 1.
    log M is computed in log space.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"generalized_jsd: beta must be in [0, 1], got {beta}")
    valid, log_q, log_p = _student_teacher_log_probs(student_logits, teacher_logits, labels)
    if beta == 0.0:
        value = _kl(log_p, log_q)
    elif beta == 1.0:
        value = _kl(log_q, log_p)
    else:
        log_m = _log_mixture(log_p, log_q, beta)  # (B, T, V)
        value = beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)
    return torch.where(valid, value, 0.0)


TOKEN_DIVERGENCES = ("kd", "rkl", "skew-fkl", "skew-rkl", "jsd", "tvd")


def token_divergence(
    student_logits: torch.Tensor,  # (B, T, V)
    teacher_logits: torch.Tensor,  # (B, T, V)
    labels: torch.Tensor,  # (B, T)
    kind: str,
    alpha: float = 0.1,
) -> torch.Tensor:  # (B, T)
    """DistiLLM's token-level divergences (Ko et al. 2024, "DistiLLM: Towards Streamlined Distillation for
    Large Language Models", skew KL definitions), one per `kind`:

        kd        KL(p || q)
        rkl       KL(q || p)
        skew-fkl  KL(p || alpha * p + (1 - alpha) * q)
        skew-rkl  KL(q || (1 - alpha) * p + alpha * q)
        jsd       0.5 * KL(p || M) + 0.5 * KL(q || M), M = (p + q) / 2  (= generalized_jsd at beta 0.5)
        tvd       0.5 * sum_v |p_v - q_v|

    "kd" and "skew-fkl" are the true KLs, not the cross-entropy forms -sum p log q and
    -sum p log(alpha p + (1 - alpha) q) of the DistiLLM code: ours = CE form - H(p), H(p) = -sum p log p. H(p)
    is constant in the student, so the gradients are identical; ours is 0 when the student matches the teacher.
    alpha (skew forms only) must lie in [0, 1]; alpha = 0 gives kd and rkl exactly.
    """
    if kind not in TOKEN_DIVERGENCES:
        raise ValueError(
            f"token_divergence: unknown kind {kind!r}; known kinds: {', '.join(TOKEN_DIVERGENCES)}"
        )
    if kind == "kd":
        return _forward_kl(student_logits, teacher_logits, labels)
    if kind == "jsd":
        return generalized_jsd(student_logits, teacher_logits, labels, 0.5)
    if kind in ("skew-fkl", "skew-rkl") and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"token_divergence: alpha must be in [0, 1] for {kind!r}, got {alpha}")
    valid, log_q, log_p = _student_teacher_log_probs(student_logits, teacher_logits, labels)
    if kind == "rkl":
        value = _kl(log_q, log_p)
    elif kind == "skew-fkl":
        value = _kl(log_p, _log_mixture(log_p, log_q, alpha))
    elif kind == "skew-rkl":
        value = _kl(log_q, _log_mixture(log_p, log_q, 1.0 - alpha))
    else:  # tvd
        value = 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
    return torch.where(valid, value, 0.0)


def token_kl_to_reference(
    logits: torch.Tensor,  # (B, T, V) the model being trained
    ref_logits: torch.Tensor,  # (B, T, V) the frozen initial model (constant)
    labels: torch.Tensor,  # (B, T)
) -> torch.Tensor:  # (B, T)
    """KL(ref || current) per token, sum_v r_v (log r_v - log s_v) with r = softmax(ref_logits) detached:
    SLiC's regulariser towards the initial model (Zhao et al. 2023), the PLaD regulariser option "token KL to the
    initial student". Same math as token_divergence(..., "kd") with the reference as teacher."""
    return _forward_kl(logits, ref_logits, labels)
