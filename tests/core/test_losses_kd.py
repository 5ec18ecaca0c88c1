"""The knowledge-distillation losses against values worked out by hand (plain Python, `math`), against limits and
identities (endpoints of beta and alpha, identical inputs give zero), gradient signs, masking and extreme logits;
the SLiC list-wise rank and DPKD sequence losses likewise."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from plad.core.losses import (
    TOKEN_DIVERGENCES,
    dpkd_sequence_loss,
    dpkd_token_loss,
    generalized_jsd,
    listwise_rank_loss,
    rank_calibration_loss,
    token_divergence,
    token_kl_to_reference,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------------------
# The fixture: B = 1, T = 3, V = 4; position 0 carries no loss.

STUDENT = [[0.0, 0.0, 0.0, 0.0], [2.0, 1.0, 0.0, -1.0], [0.5, 1.5, -0.5, 0.0]]
TEACHER = [[0.0, 0.0, 0.0, 0.0], [1.0, 3.0, 0.0, 0.0], [0.0, 2.0, 1.0, -1.0]]
LABELS = [-100, 1, 1]


def fixture() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor([STUDENT]), torch.tensor([TEACHER]), torch.tensor([LABELS])


# Hand arithmetic on plain Python lists: nothing shared with the implementation.


def softmax(row: list[float]) -> list[float]:
    e = [math.exp(x) for x in row]
    return [v / sum(e) for v in e]


def kl(a: list[float], b: list[float]) -> float:
    """KL(a || b) = sum a_v log(a_v / b_v)."""
    return sum(x * math.log(x / y) for x, y in zip(a, b, strict=True))


def mix(w: float, a: list[float], b: list[float]) -> list[float]:
    """w * a + (1 - w) * b."""
    return [w * x + (1 - w) * y for x, y in zip(a, b, strict=True)]


def entropy(a: list[float]) -> float:
    return -sum(x * math.log(x) for x in a)


def hand_divergence(kind: str, p: list[float], q: list[float], alpha: float = 0.1) -> float:
    if kind == "kd":
        return kl(p, q)
    if kind == "rkl":
        return kl(q, p)
    if kind == "skew-fkl":
        return kl(p, mix(alpha, p, q))
    if kind == "skew-rkl":
        return kl(q, mix(1 - alpha, p, q))
    if kind == "jsd":
        m = mix(0.5, p, q)
        return 0.5 * kl(p, m) + 0.5 * kl(q, m)
    assert kind == "tvd"
    return 0.5 * sum(abs(x - y) for x, y in zip(p, q, strict=True))


def hand_gjsd(beta: float, p: list[float], q: list[float]) -> float:
    if beta == 0:
        return kl(p, q)
    if beta == 1:
        return kl(q, p)
    m = mix(beta, p, q)
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def assert_fixture_values(out: torch.Tensor, pos1: float, pos2: float) -> None:
    """Shape (1, 3), float32, exactly 0 at the masked position 0, the hand values at 1 and 2."""
    assert out.shape == (1, 3) and out.dtype == torch.float32
    assert out[0, 0].item() == 0.0
    torch.testing.assert_close(out[0, 1:], t(pos1, pos2), atol=1e-5, rtol=0)


TokenFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# Every token-level function, each a (student_logits, teacher_logits, labels) -> (B, T) callable.
TOKEN_FNS: dict[str, TokenFn] = {
    **{
        kind: (lambda s, te, lab, kind=kind: token_divergence(s, te, lab, kind)) for kind in TOKEN_DIVERGENCES
    },
    **{
        f"gjsd-{b}": (lambda s, te, lab, b=b: generalized_jsd(s, te, lab, b))
        for b in (0.0, 0.1, 0.5, 0.9, 1.0)
    },
    "dpkd-token": lambda s, te, lab: dpkd_token_loss(s, te, lab, 0.5),
    "kl-to-ref": token_kl_to_reference,
}

# ----------------------------------------------------------------------------------------------------------------
# token divergences at the fixture


def test_kd_hand_value_written_out():
    """Position 1 spelled out: p = [e, e^3, 1, 1] / (e + e^3 + 2), q = [e^2, e, 1, e^-1] / (e^2 + e + 1 + e^-1)."""
    e = math.e
    zp, zq = e + e**3 + 2, e**2 + e + 1 + 1 / e
    p = [e / zp, e**3 / zp, 1 / zp, 1 / zp]
    q = [e**2 / zq, e / zq, 1 / zq, (1 / e) / zq]
    kd1 = sum(pv * math.log(pv / qv) for pv, qv in zip(p, q, strict=True))  # sum p (log p - log q)
    assert kd1 == pytest.approx(kl(softmax(TEACHER[1]), softmax(STUDENT[1])))  # the helpers agree
    # p ~ [.1096, .8098, .0403, .0403], q ~ [.6439, .2369, .0871, .0321]:
    # .1096 ln(.1096/.6439) + .8098 ln(.8098/.2369) + .0403 ln(.0403/.0871) + .0403 ln(.0403/.0321) ~ .7795
    assert kd1 == pytest.approx(0.779469, abs=1e-5)
    out = token_divergence(*fixture(), "kd")
    assert_fixture_values(out, kd1, kl(softmax(TEACHER[2]), softmax(STUDENT[2])))


@pytest.mark.parametrize("kind", TOKEN_DIVERGENCES)
def test_token_divergence_hand_values(kind):
    p1, q1 = softmax(TEACHER[1]), softmax(STUDENT[1])
    p2, q2 = softmax(TEACHER[2]), softmax(STUDENT[2])
    out = token_divergence(*fixture(), kind)
    assert_fixture_values(out, hand_divergence(kind, p1, q1), hand_divergence(kind, p2, q2))
    assert (out[0, 1:] > 0.01).all()  # not vacuous: the fixture's distributions clearly differ


@pytest.mark.parametrize("kind", ["skew-fkl", "skew-rkl"])
@pytest.mark.parametrize("alpha", [0.3, 0.7])
def test_skew_hand_values_other_alpha(kind, alpha):
    p1, q1 = softmax(TEACHER[1]), softmax(STUDENT[1])
    p2, q2 = softmax(TEACHER[2]), softmax(STUDENT[2])
    out = token_divergence(*fixture(), kind, alpha=alpha)
    assert_fixture_values(out, hand_divergence(kind, p1, q1, alpha), hand_divergence(kind, p2, q2, alpha))


def test_kd_plus_teacher_entropy_is_cross_entropy():
    """Our kd is the true KL; the DistiLLM code's -sum p log q is it plus H(p) (constant in the student)."""
    out = token_divergence(*fixture(), "kd")
    for pos in (1, 2):
        p, q = softmax(TEACHER[pos]), softmax(STUDENT[pos])
        ce = -sum(x * math.log(y) for x, y in zip(p, q, strict=True))
        assert out[0, pos].item() + entropy(p) == pytest.approx(ce, abs=1e-5)


def test_skew_fkl_plus_teacher_entropy_is_distillm_ce_form():
    alpha = 0.1
    out = token_divergence(*fixture(), "skew-fkl", alpha=alpha)
    for pos in (1, 2):
        p, q = softmax(TEACHER[pos]), softmax(STUDENT[pos])
        ce = -sum(x * math.log(m) for x, m in zip(p, mix(alpha, p, q), strict=True))
        assert out[0, pos].item() + entropy(p) == pytest.approx(ce, abs=1e-5)


def test_skew_alpha_limits():
    """alpha = 0: skew-fkl is kd and skew-rkl is rkl exactly; alpha = 1: the mixture is the other side, so 0."""
    s, te, lab = fixture()
    assert torch.equal(
        token_divergence(s, te, lab, "skew-fkl", alpha=0.0), token_divergence(s, te, lab, "kd")
    )
    assert torch.equal(
        token_divergence(s, te, lab, "skew-rkl", alpha=0.0), token_divergence(s, te, lab, "rkl")
    )
    for kind in ("skew-fkl", "skew-rkl"):
        assert torch.equal(token_divergence(s, te, lab, kind, alpha=1.0), torch.zeros(1, 3))


def test_token_divergence_rejects_bad_kind_and_alpha():
    s, te, lab = fixture()
    with pytest.raises(ValueError, match="kd, rkl, skew-fkl, skew-rkl, jsd, tvd"):
        token_divergence(s, te, lab, "fkl")
    for kind in ("skew-fkl", "skew-rkl"):
        for alpha in (-0.1, 1.5):
            with pytest.raises(ValueError, match="alpha"):
                token_divergence(s, te, lab, kind, alpha=alpha)


def test_tvd_bounds():
    """0 <= TVD <= 1, and near 1 for distributions on disjoint tokens."""
    s = torch.tensor([[[60.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]]])
    te = torch.tensor([[[0.0, 60.0, 0.0, 0.0], [4.0, 3.0, 2.0, 1.0]]])
    out = token_divergence(s, te, torch.tensor([[0, 0]]), "tvd")
    assert ((out >= 0) & (out <= 1)).all()
    assert out[0, 0].item() == pytest.approx(1.0, abs=1e-6)
    # second row: p = rev(q), q = softmax([1, 2, 3, 4]); 0.5 * sum |p - q| = |q_4 - q_1| + |q_3 - q_2|
    q = softmax([1.0, 2.0, 3.0, 4.0])
    assert out[0, 1].item() == pytest.approx((q[3] - q[0]) + (q[2] - q[1]), abs=1e-6)


def test_token_functions_match_reference_on_random_batch():
    """The batched path against the per-position hand reference, B = 2, T = 3, V = 5, masked positions mixed in."""
    gen = torch.Generator().manual_seed(0)
    s, te = torch.randn(2, 3, 5, generator=gen) * 2, torch.randn(2, 3, 5, generator=gen) * 2
    lab = torch.tensor([[3, -100, 0], [-100, 1, 4]])
    for kind in TOKEN_DIVERGENCES:
        out = token_divergence(s, te, lab, kind)
        for b in range(2):
            for pos in range(3):
                p, q = softmax(te[b, pos].tolist()), softmax(s[b, pos].tolist())
                want = 0.0 if lab[b, pos] == -100 else hand_divergence(kind, p, q)
                assert out[b, pos].item() == pytest.approx(want, abs=1e-5), (kind, b, pos)
                if lab[b, pos] != -100:
                    assert out[b, pos].item() >= 0


def test_all_divergences_nonnegative():
    gen = torch.Generator().manual_seed(1)
    s, te = torch.randn(4, 6, 9, generator=gen) * 3, torch.randn(4, 6, 9, generator=gen) * 3
    lab = torch.zeros(4, 6, dtype=torch.long)
    for name, fn in TOKEN_FNS.items():
        if name != "dpkd-token":  # a logistic loss, positive but not a divergence
            assert (fn(s, te, lab) >= 0).all(), name


# ----------------------------------------------------------------------------------------------------------------
# generalized JSD


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_generalized_jsd_hand_values(beta):
    p1, q1 = softmax(TEACHER[1]), softmax(STUDENT[1])
    p2, q2 = softmax(TEACHER[2]), softmax(STUDENT[2])
    out = generalized_jsd(*fixture(), beta)
    assert_fixture_values(out, hand_gjsd(beta, p1, q1), hand_gjsd(beta, p2, q2))


def test_generalized_jsd_endpoints_are_the_kls():
    """beta 0 -> KL(p || q) (forward), beta 1 -> KL(q || p) (reverse), by hand; also the divergences' kd / rkl."""
    s, te, lab = fixture()
    p1, q1 = softmax(TEACHER[1]), softmax(STUDENT[1])
    p2, q2 = softmax(TEACHER[2]), softmax(STUDENT[2])
    assert_fixture_values(generalized_jsd(s, te, lab, 0.0), kl(p1, q1), kl(p2, q2))
    assert_fixture_values(generalized_jsd(s, te, lab, 1.0), kl(q1, p1), kl(q2, p2))
    torch.testing.assert_close(generalized_jsd(s, te, lab, 0.0), token_divergence(s, te, lab, "kd"))
    torch.testing.assert_close(generalized_jsd(s, te, lab, 1.0), token_divergence(s, te, lab, "rkl"))


def test_generalized_jsd_endpoints_are_scale_free_limits():
    """The documented discontinuity: JSD(beta) / beta -> KL(p || q) and JSD(beta) / (1 - beta) -> KL(q || p)."""
    s, te, lab = fixture()
    eps = 1e-3
    torch.testing.assert_close(
        generalized_jsd(s, te, lab, eps) / eps, generalized_jsd(s, te, lab, 0.0), atol=5e-3, rtol=5e-3
    )
    torch.testing.assert_close(
        generalized_jsd(s, te, lab, 1 - eps) / eps, generalized_jsd(s, te, lab, 1.0), atol=5e-3, rtol=5e-3
    )


def test_generalized_jsd_half_is_jsd_and_symmetric():
    s, te, lab = fixture()
    half = generalized_jsd(s, te, lab, 0.5)
    torch.testing.assert_close(half, token_divergence(s, te, lab, "jsd"))
    torch.testing.assert_close(half, generalized_jsd(te, s, lab, 0.5), atol=1e-6, rtol=0)
    # ... and only at 0.5: JSD(beta)(p, q) = JSD(1 - beta)(q, p)
    torch.testing.assert_close(
        generalized_jsd(s, te, lab, 0.1), generalized_jsd(te, s, lab, 0.9), atol=1e-6, rtol=0
    )


def test_generalized_jsd_rejects_beta_outside_unit_interval():
    for beta in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="beta"):
            generalized_jsd(*fixture(), beta)


def test_identical_logits_give_zero():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 11, generator=gen) * 4
    lab = torch.tensor([[1, 2, -100, 3, 4], [0, -100, -100, 5, 6]])
    for beta in (0.0, 0.1, 0.5, 0.9, 1.0):
        torch.testing.assert_close(
            generalized_jsd(logits, logits.clone(), lab, beta), torch.zeros(2, 5), atol=1e-6, rtol=0
        )
    for kind in TOKEN_DIVERGENCES:
        out = token_divergence(logits, logits.clone(), lab, kind)
        torch.testing.assert_close(out, torch.zeros(2, 5), atol=1e-6, rtol=0)
    torch.testing.assert_close(token_kl_to_reference(logits, logits.clone(), lab), torch.zeros(2, 5))


# ----------------------------------------------------------------------------------------------------------------
# DPKD, per-token form


def test_dpkd_token_hand_values():
    """Position 1: teacher argmax a = 1, student argmax b = 0. Differences of log-softmax are differences of
    logits: h = (y_1 - y_0) - (x_1 - x_0) = (1 - 2) - (3 - 1) = -3 -> -log sigmoid(-3 beta) = log(1 + e^(3 beta)).
    Position 2: a = b = 1 -> h = 0 -> log 2."""
    beta = 0.5
    s, te, lab = fixture()
    assert te[0, 1].argmax() == 1 and s[0, 1].argmax() == 0
    assert te[0, 2].argmax() == 1 and s[0, 2].argmax() == 1
    out = dpkd_token_loss(s, te, lab, beta)
    assert_fixture_values(out, math.log(1 + math.exp(3 * beta)), math.log(2))
    # The same h from explicit probabilities.
    p, q = softmax(TEACHER[1]), softmax(STUDENT[1])
    h = (math.log(q[1]) - math.log(q[0])) - (math.log(p[1]) - math.log(p[0]))
    assert h == pytest.approx(-3.0)
    assert out[0, 1].item() == pytest.approx(-math.log(1 / (1 + math.exp(-beta * h))), abs=1e-5)


def test_dpkd_token_identical_logits_give_log2_and_no_gradient():
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(2, 4, 7, generator=gen) * 3).requires_grad_()
    lab = torch.tensor([[1, 2, -100, 3], [0, 1, 2, -100]])
    out = dpkd_token_loss(logits, logits.detach().clone(), lab, 1.0)
    torch.testing.assert_close(out, math.log(2) * (lab != -100).float())
    out.sum().backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# ----------------------------------------------------------------------------------------------------------------
# token KL to the reference model


def test_token_kl_to_reference():
    s, te, lab = fixture()
    ref = te  # the reference plays the teacher
    out = token_kl_to_reference(s, ref, lab)
    assert_fixture_values(
        out, kl(softmax(TEACHER[1]), softmax(STUDENT[1])), kl(softmax(TEACHER[2]), softmax(STUDENT[2]))
    )
    assert torch.equal(out, token_divergence(s, ref, lab, "kd"))
    assert torch.equal(token_kl_to_reference(s, s.clone(), lab), torch.zeros(1, 3))


# ----------------------------------------------------------------------------------------------------------------
# every token function: gradient direction, masking, teacher constant, extreme logits


def masked_extreme_fixture() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixture with wild logits at the masked position 0: any leak there shows up as a value or a gradient."""
    s, te, lab = fixture()
    s[0, 0] = t(50.0, -50.0, 3.0, 0.0)
    te[0, 0] = t(-1e9, 40.0, 0.0, 7.0)
    return s, te, lab


@pytest.mark.parametrize("name", list(TOKEN_FNS))
def test_sgd_step_reduces_loss_and_masking_and_constant_teacher(name):
    fn = TOKEN_FNS[name]
    s, te, lab = masked_extreme_fixture()
    s.requires_grad_()
    te.requires_grad_()
    out = fn(s, te, lab)
    assert out[0, 0].item() == 0.0
    out.sum().backward()
    assert torch.equal(s.grad[0, 0], torch.zeros(4)), "gradient leaked into a masked position"
    assert te.grad is None or torch.equal(te.grad, torch.zeros_like(te)), "the teacher must be a constant"
    assert s.grad[0, 1:].abs().sum() > 0
    with torch.no_grad():
        stepped = s - 0.05 * s.grad
        assert fn(stepped, te, lab).sum() < out.sum() - 1e-5


def extreme_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1e4 spreads and -1e9 entries at valid positions; inf, -inf and NaN at the masked one."""
    s = torch.tensor(
        [
            [
                [float("nan"), float("inf"), float("-inf"), 1e30],
                [1e4, -1e4, 0.0, 0.0],
                [-1e9, 3.0, -1e9, 0.0],
                [5e3, -5e3, 1e4, -1e9],
            ]
        ]
    )
    te = torch.tensor(
        [
            [
                [float("inf"), float("nan"), 0.0, float("-inf")],
                [-1e9, 0.0, 0.0, -1e9],
                [5e3, -5e3, 0.0, 1.0],
                [1e4, -1e4, -1e9, 0.0],
            ]
        ]
    )
    return s, te, torch.tensor([[-100, 0, 1, 2]])


@pytest.mark.parametrize("name", list(TOKEN_FNS))
def test_extreme_logits_give_finite_values_and_gradients(name):
    s, te, lab = extreme_inputs()
    s.requires_grad_()
    out = TOKEN_FNS[name](s, te, lab)
    assert torch.isfinite(out).all(), out
    assert out[0, 0].item() == 0.0
    out.sum().backward()
    assert torch.isfinite(s.grad).all(), s.grad
    assert torch.equal(s.grad[0, 0], torch.zeros(4))


@pytest.mark.parametrize("name", [n for n in TOKEN_FNS if n not in ("rkl", "gjsd-1.0")])
def test_teacher_minus_inf_entries_give_finite_values(name):
    """A teacher with -inf logits (vocabulary padding) has finite divergences except KL(q || p) when the student
    puts mass there; when both sides have -inf in the same slot, even KL(q || p) is finite."""
    s, te, lab = fixture()
    te[0, 1, 3] = te[0, 2, 0] = float("-inf")
    s.requires_grad_()
    out = TOKEN_FNS[name](s, te, lab)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("name", list(TOKEN_FNS))
def test_both_minus_inf_in_the_same_slot(name):
    s, te, lab = fixture()
    s[0, 1:, 3] = te[0, 1:, 3] = float("-inf")
    s.requires_grad_()
    out = TOKEN_FNS[name](s, te, lab)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(s.grad).all()
    assert torch.equal(s.grad[..., 3], torch.zeros(1, 3))
    # The -inf slot is simply absent: same value as the 3-token vocabulary.
    torch.testing.assert_close(out.detach(), TOKEN_FNS[name](s.detach()[..., :3], te[..., :3], lab))


# ----------------------------------------------------------------------------------------------------------------
# SLiC list-wise rank


def test_listwise_rank_hand_value():
    """K = 3, beta = 0.5, logps [-1, -2, -0.5], ranks [0, 1, 2]:
    (0, 1): 0.5 * 1 - (-1) + (-2)   = -0.5 -> 0
    (0, 2): 0.5 * 2 - (-1) + (-0.5) =  1.5
    (1, 2): 0.5 * 1 - (-2) + (-0.5) =  2.0      total 3.5"""
    logps, ranks, mask = (
        t(-1.0, -2.0, -0.5).view(1, 3),
        torch.tensor([[0, 1, 2]]),
        torch.ones(1, 3, dtype=bool),
    )
    out = listwise_rank_loss(logps, ranks, mask, 0.5)
    assert out.shape == (1,)
    torch.testing.assert_close(out, t(3.5))


def test_listwise_rank_tie_has_no_hinge():
    """ranks [0, 1, 1]: (0, 1): 0.5 - (-1) + (-2) = -0.5 -> 0; (0, 2): 0.5 - (-1) + (-0.5) = 1.0; the tie (1, 2)
    contributes nothing (as an ordered pair it would add max(0, 0 + 2 - 0.5) = 1.5)."""
    logps, mask = t(-1.0, -2.0, -0.5).view(1, 3), torch.ones(1, 3, dtype=bool)
    torch.testing.assert_close(listwise_rank_loss(logps, torch.tensor([[0, 1, 1]]), mask, 0.5), t(1.0))


def test_listwise_rank_masked_slot_is_ignored():
    """A padding slot (rank 3, any log-prob, even NaN) changes neither the value nor the gradient."""
    logps = t(-1.0, -2.0, -0.5, float("nan"), -1.0, -2.0, -0.5, 100.0).view(2, 4).requires_grad_()
    ranks = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, False]])
    out = listwise_rank_loss(logps, ranks, mask, 0.5)
    torch.testing.assert_close(out, t(3.5, 3.5))
    out.sum().backward()
    # d/d logps: pairs (0, 2) and (1, 2) active -> [-1, -1, +2], padding 0
    torch.testing.assert_close(logps.grad, t(-1.0, -1.0, 2.0, 0.0, -1.0, -1.0, 2.0, 0.0).view(2, 4))


def test_listwise_rank_gradient_signs():
    """Descent raises the better-ranked log-probs and lowers the worse-ranked one."""
    logps = t(-1.0, -2.0, -0.5).view(1, 3).requires_grad_()
    listwise_rank_loss(logps, torch.tensor([[0, 1, 2]]), torch.ones(1, 3, dtype=bool), 0.5).sum().backward()
    torch.testing.assert_close(logps.grad, t(-1.0, -1.0, 2.0).view(1, 3))


def test_listwise_rank_k2_is_rank_calibration():
    gen = torch.Generator().manual_seed(4)
    c, r = -torch.rand(16, generator=gen) * 5, -torch.rand(16, generator=gen) * 5
    out = listwise_rank_loss(
        torch.stack([c, r], dim=1), torch.tensor([[0, 1]] * 16), torch.ones(16, 2, dtype=bool), 0.7
    )
    torch.testing.assert_close(out, rank_calibration_loss(c, r, 0.7))


def test_listwise_rank_unordered_ranks():
    """Ranks need not follow slot order: the same list permuted gives the same loss."""
    logps, mask = t(-1.0, -2.0, -0.5).view(1, 3), torch.ones(1, 3, dtype=bool)
    perm = [2, 0, 1]
    out = listwise_rank_loss(logps[:, perm], torch.tensor([[2, 0, 1]]), mask, 0.5)
    torch.testing.assert_close(out, t(3.5))


# ----------------------------------------------------------------------------------------------------------------
# DPKD, sequence form


def test_dpkd_sequence_hand_value():
    """beta 0.1; chosen: student -4, teacher -3, |y_t| = 4; rejected: student -6, teacher -9, |y_s| = 3:
    z = 0.1/4 * (-4 + 3) - 0.1/3 * (-6 + 9) = -0.025 - 0.1 = -0.125 -> loss = log(1 + e^0.125)."""
    out = dpkd_sequence_loss(t(-4.0), t(-6.0), t(-3.0), t(-9.0), torch.tensor([4]), torch.tensor([3]), 0.1)
    assert out.shape == (1,)
    assert out.item() == pytest.approx(math.log(1 + math.exp(0.125)), abs=1e-6)


def test_dpkd_sequence_identities():
    """Student == teacher, or beta = 0: the margin is 0 and the loss log 2."""
    gen = torch.Generator().manual_seed(5)
    c, r = -torch.rand(8, generator=gen) * 20, -torch.rand(8, generator=gen) * 20
    lc, lr = torch.randint(1, 30, (8,), generator=gen), torch.randint(1, 30, (8,), generator=gen)
    log2 = torch.full((8,), math.log(2))
    torch.testing.assert_close(dpkd_sequence_loss(c, r, c.clone(), r.clone(), lc, lr, 0.5), log2)
    torch.testing.assert_close(dpkd_sequence_loss(c, r, c - 3.0, r + 2.0, lc, lr, 0.0), log2)


def test_dpkd_sequence_unit_lengths_turn_normalisation_off():
    ones = torch.ones(1)
    out = dpkd_sequence_loss(t(-4.0), t(-6.0), t(-3.0), t(-9.0), ones, ones, 0.1)
    # z = 0.1 * (-1) - 0.1 * 3 = -0.4
    assert out.item() == pytest.approx(math.log(1 + math.exp(0.4)), abs=1e-6)


def test_dpkd_sequence_gradient_signs_and_large_margins():
    """d loss / d chosen = -(beta/|y_t|) sigmoid(-z) < 0, d loss / d rejected = +(beta/|y_s|) sigmoid(-z) > 0;
    the teacher inputs are plain tensors."""
    c, r = t(-4.0).requires_grad_(), t(-6.0).requires_grad_()
    dpkd_sequence_loss(c, r, t(-3.0), t(-9.0), torch.tensor([4]), torch.tensor([3]), 0.1).sum().backward()
    s = 1 / (1 + math.exp(-0.125))  # sigmoid(-z), z = -0.125
    assert c.grad.item() == pytest.approx(-0.1 / 4 * s, abs=1e-6) and c.grad.item() < 0
    assert r.grad.item() == pytest.approx(0.1 / 3 * s, abs=1e-6) and r.grad.item() > 0
    # Huge margins either way stay finite: ~0 when far ahead, ~ -z when far behind.
    one = torch.ones(1)
    far = dpkd_sequence_loss(t(0.0, -1e4), t(-1e4, 0.0), t(-1e4, 0.0), t(0.0, -1e4), one, one, 1.0)
    assert torch.isfinite(far).all()
    torch.testing.assert_close(far, t(0.0, 2e4))
