"""Losses against hand-worked values and identities; the batched log-prob path against a one-by-one reference;
the calibration methods of `plad.core.methods` on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from plad.config import LossConfig
from plad.core.batching import collate_sequences
from plad.core.logprobs import sequence_logps
from plad.core.losses import margin_calibration_loss, rank_calibration_loss, ranking_accuracy, token_nll
from plad.core.methods import METHODS, Item, make_batch

PAD = 0


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------------------
# rank / margin calibration


def test_rank_calibration_hand_values():
    """max(0, beta - c + r), per example, unreduced."""
    c, r = t(-1.0, -3.0, -2.0), t(-2.0, -1.0, -2.0)
    # beta = 0.5:
    #   row 0: 0.5 - (-1) + (-2) = 0.5 + 1 - 2 = -0.5 -> 0
    #   row 1: 0.5 - (-3) + (-1) = 0.5 + 3 - 1 =  2.5
    #   row 2: 0.5 - (-2) + (-2) = 0.5 + 2 - 2 =  0.5
    out = rank_calibration_loss(c, r, 0.5)
    assert out.shape == (3,)
    torch.testing.assert_close(out, t(0.0, 2.5, 0.5))


def test_margin_calibration_hand_values():
    """max(0, beta * (sc - sr) - c + r), per example, unreduced."""
    c, r = t(-1.0, -3.0, -2.0), t(-2.0, -1.0, -2.0)
    sc, sr = t(1.0, 0.5, 0.2), t(0.0, 0.5, 0.8)
    # beta = 2:
    #   row 0: 2 * (1.0 - 0.0) - (-1) + (-2) = 2 + 1 - 2   =  1.0
    #   row 1: 2 * (0.5 - 0.5) - (-3) + (-1) = 0 + 3 - 1   =  2.0
    #   row 2: 2 * (0.2 - 0.8) - (-2) + (-2) = -1.2 + 0    = -1.2 -> 0
    out = margin_calibration_loss(c, r, sc, sr, 2.0)
    assert out.shape == (3,)
    torch.testing.assert_close(out, t(1.0, 2.0, 0.0))


def test_rank_beta_zero_and_chosen_ahead_is_zero():
    """beta = 0 and log P(y+) >= log P(y-): nothing to learn."""
    c, r = t(-1.0, -2.0, -0.5), t(-1.0, -5.0, -3.0)
    assert torch.equal(rank_calibration_loss(c, r, 0.0), torch.zeros(3))
    # ... but a rejected output ahead of the chosen one is penalised by exactly the gap, even with beta = 0.
    torch.testing.assert_close(rank_calibration_loss(t(-4.0), t(-1.5), 0.0), t(2.5))


def test_rank_identical_logps_give_beta():
    """Equal likelihoods ask for the whole margin beta."""
    c = t(-3.0, -0.1, -7.0)
    torch.testing.assert_close(rank_calibration_loss(c, c.clone(), 0.7), t(0.7, 0.7, 0.7))


def test_margin_equal_scores_equals_rank_with_beta_zero():
    """A scorer that rates both outputs equal asks for no likelihood gap."""
    gen = torch.Generator().manual_seed(0)
    c, r = -torch.rand(16, generator=gen) * 5, -torch.rand(16, generator=gen) * 5
    s = torch.rand(16, generator=gen)
    torch.testing.assert_close(
        margin_calibration_loss(c, r, s, s.clone(), 3.0), rank_calibration_loss(c, r, 0.0)
    )


def test_margin_unit_score_gap_equals_rank():
    """With s(y+) - s(y-) = 1 the margin loss is the ranking loss with the same beta."""
    gen = torch.Generator().manual_seed(1)
    c, r = -torch.rand(16, generator=gen) * 5, -torch.rand(16, generator=gen) * 5
    sr = torch.rand(16, generator=gen)
    torch.testing.assert_close(
        margin_calibration_loss(c, r, sr + 1.0, sr, 0.8), rank_calibration_loss(c, r, 0.8), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("kind", ["rank", "margin"])
def test_calibration_gradient_signs(kind):
    """Active rows: d/d chosen = -1 (descent raises chosen), d/d rejected = +1 (descent lowers rejected);
    inactive rows get no gradient at all."""
    c = t(-1.0, -3.0, -2.0).requires_grad_()
    r = t(-2.0, -1.0, -2.5).requires_grad_()
    if kind == "rank":
        # beta 0.4 (not 0.5: row 2 would sit exactly on the hinge's corner, where the subgradient is a choice):
        # row 0: 0.4 + 1 - 2 = -0.6 (inactive), row 1: 0.4 + 3 - 1 = 2.4 (active), row 2: 0.4 + 2 - 2.5 = -0.1
        loss = rank_calibration_loss(c, r, 0.4)
        active = [False, True, False]
    else:
        # beta 1, score gaps [0, 1, 1]: row 0: 0 + 1 - 2 = -1 (inactive), row 1: 1 + 3 - 1 = 3,
        # row 2: 1 + 2 - 2.5 = 0.5 (active)
        loss = margin_calibration_loss(c, r, t(0.0, 1.0, 1.0), t(0.0, 0.0, 0.0), 1.0)
        active = [False, True, True]
    loss.sum().backward()
    expected_c = t(*[-1.0 if a else 0.0 for a in active])
    torch.testing.assert_close(c.grad, expected_c)
    torch.testing.assert_close(r.grad, -expected_c)


def test_ranking_accuracy():
    """Strictly ahead counts; a tie does not."""
    assert float(ranking_accuracy(t(-1.0, -2.0, -3.0, -1.0), t(-2.0, -1.0, -3.0, -5.0))) == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------------------------
# token NLL


def test_token_nll_uniform_hand_value():
    """Uniform logits over V = 4: every token costs log 4 = 1.386294; -100 positions cost 0."""
    logits = torch.zeros(2, 3, 4)
    labels = torch.tensor([[0, 3, -100], [2, -100, -100]])
    out = token_nll(logits, labels)
    assert out.shape == (2, 3)
    L = 1.386294
    torch.testing.assert_close(out, t(L, L, 0.0, L, 0.0, 0.0).view(2, 3), atol=1e-6, rtol=0)


def test_token_nll_hand_value_nonuniform():
    """logits [log 1, log 3] -> p = [1/4, 3/4]: -log(3/4) = 0.287682 for label 1, -log(1/4) = 1.386294 for 0."""
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    out = token_nll(logits, torch.tensor([[1, 0]]))
    torch.testing.assert_close(out, t(0.287682, 1.386294).view(1, 2), atol=1e-6, rtol=0)


def test_token_nll_matches_log_softmax_gather():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=gen) * 3
    labels = torch.randint(0, 7, (3, 5), generator=gen)
    labels[0, 4] = labels[2, 0] = -100
    ref = -torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    ref = ref * (labels != -100)
    torch.testing.assert_close(token_nll(logits, labels), ref, atol=1e-5, rtol=1e-5)
    assert token_nll(logits, labels)[0, 4] == 0 and token_nll(logits, labels)[2, 0] == 0


# ----------------------------------------------------------------------------------------------------------------
# sequence log-probs: batched, right padded forward vs one sequence at a time


@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
        pad_token_id=PAD,
        eos_token_id=1,
        bos_token_id=1,
    )
    model = LlamaForCausalLM(config).eval()
    # Larger weights than the init's so that log-probs differ clearly between tokens and positions.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return model


EOS = 1
PROMPTS = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]]
OUTPUTS = [[20, 21, EOS], [22, 23, 24, 25, 26, EOS], [27, EOS], [EOS]]


def _reference_logps(model, prompt: list[int], output: list[int]) -> float:
    """The slow path: the sequence alone, no padding, sum of log_softmax at the output tokens (EOS included)."""
    ids = torch.tensor([prompt + output])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)  # (T, V)
    return sum(float(logp[len(prompt) - 1 + j, tok]) for j, tok in enumerate(output))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_sequence_logps_matches_one_by_one(tiny_lm, reduction):
    batch = collate_sequences(PROMPTS, OUTPUTS, PAD)
    assert (batch["attention_mask"] == 0).any(), "the test needs right padding in the batch"
    with torch.no_grad():
        out = sequence_logps(tiny_lm, batch, reduction=reduction)
    ref = [_reference_logps(tiny_lm, p, o) for p, o in zip(PROMPTS, OUTPUTS, strict=True)]
    if reduction == "mean":
        ref = [v / len(o) for v, o in zip(ref, OUTPUTS, strict=True)]
    assert out["logps"].shape == (len(PROMPTS),)
    torch.testing.assert_close(
        out["logps"].double(), torch.tensor(ref, dtype=torch.float64), atol=1e-5, rtol=0
    )
    assert out["n_tokens"].tolist() == [len(o) for o in OUTPUTS]
    # No loss leaks onto prompt or padding positions.
    assert torch.equal(out["token_nll"] != 0, batch["labels"][:, 1:] != -100)
    # Guard against a vacuous comparison: the sequences must have clearly different log-probs.
    assert len({round(v, 2) for v in ref}) == len(ref)


def test_collate_sequences_layout():
    """Right padding; labels hold output tokens only, aligned with input_ids."""
    b = collate_sequences([[5, 6], [7]], [[8, EOS], [9, 10, EOS]], PAD)
    assert b["input_ids"].tolist() == [[5, 6, 8, EOS], [7, 9, 10, EOS]]
    b = collate_sequences([[5, 6, 7], [7]], [[8, EOS], [9]], PAD)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, EOS], [7, 9, PAD, PAD, PAD]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert b["labels"].tolist() == [[-100, -100, -100, 8, EOS], [-100, 9, -100, -100, -100]]


# ----------------------------------------------------------------------------------------------------------------
# plad methods on a tiny model


@pytest.mark.parametrize("logp", ["mean", "sum"])
def test_plad_rank_identical_pair_costs_beta(tiny_lm, logp):
    """chosen == rejected: equal log-probs, so the ranking loss is exactly beta for every pair."""
    beta = 0.3
    items = [Item(p, o, list(o)) for p, o in zip(PROMPTS, OUTPUTS, strict=True)]
    cfg = LossConfig(beta=beta, logp=logp, regularizer="chosen")
    batch = make_batch(items, None, PAD, cfg)
    with torch.no_grad():
        parts = METHODS["plad-rank"].loss(tiny_lm, batch, cfg)
    assert parts.metrics["calibration"] == pytest.approx(beta, abs=1e-6)
    assert float(parts.seq_sum) == pytest.approx(beta * len(items), abs=1e-5)
    assert parts.metrics["margin"] == pytest.approx(0.0, abs=1e-6)
    assert parts.metrics["rank_acc"] == 0.0
    # The chosen-CE regulariser sums the NLL of the chosen outputs' tokens.
    ref_sum = sum(_reference_logps(tiny_lm, p, o) for p, o in zip(PROMPTS, OUTPUTS, strict=True))
    assert float(parts.tok_sum) == pytest.approx(-ref_sum, abs=1e-4)
    assert batch["n_tokens"] == sum(len(o) for o in OUTPUTS)


def test_plad_margin_identical_pair_costs_beta_times_score_gap(tiny_lm):
    items = [Item([5, 6], [20, EOS], [20, EOS], 0.9, 0.4), Item([7], [21, 22, EOS], [21, 22, EOS], 0.5, 0.5)]
    cfg = LossConfig(beta=2.0, logp="sum", regularizer="none")
    with torch.no_grad():
        parts = METHODS["plad-margin"].loss(tiny_lm, make_batch(items, None, PAD, cfg), cfg)
    # per pair: 2 * (0.9 - 0.4) = 1.0 and 2 * (0.5 - 0.5) = 0 -> sum 1.0
    assert float(parts.seq_sum) == pytest.approx(1.0, abs=1e-5)
    assert parts.tok_sum is None


def test_plad_rank_sgd_step_raises_margin():
    """One SGD step on the ranking loss alone lowers the rejected log-prob relative to the chosen one.

    The log-probs are measured independently of the method (its own metrics could be mislabelled)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        )
    )
    prompt, chosen, rejected = [5, 6, 7], [20, 21, EOS], [22, 23, 24, EOS]

    def measured() -> tuple[float, float]:
        with torch.no_grad():
            return _reference_logps(model, prompt, chosen), _reference_logps(model, prompt, rejected)

    cfg = LossConfig(beta=10.0, logp="sum", regularizer="none")  # beta large: the hinge is active
    batch = make_batch([Item(prompt, chosen, rejected)], None, PAD, cfg)
    c0, r0 = measured()
    parts = METHODS["plad-rank"].loss(model, batch, cfg)
    assert parts.metrics["chosen_logps"] == pytest.approx(c0, abs=1e-4)
    assert parts.metrics["rejected_logps"] == pytest.approx(r0, abs=1e-4)
    assert float(parts.seq_sum.detach()) == pytest.approx(10.0 - c0 + r0, abs=1e-4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    parts.seq_sum.backward()
    opt.step()
    c1, r1 = measured()
    assert (c1 - r1) > (c0 - r0) + 1e-3  # the margin went up
    assert r1 < r0 and c1 > c0


def test_public_import_path_is_the_core_module():
    """`plad.losses` stays importable for users (the losses moved to plad.core.losses): the same functions."""
    import plad.core.losses as core
    import plad.losses as public

    for name in ("rank_calibration_loss", "margin_calibration_loss", "dpkd_sequence_loss", "generalized_jsd"):
        assert getattr(public, name) is getattr(core, name)
