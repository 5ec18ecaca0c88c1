"""Every method of the table through the real `plad distill`, the pairs-store features they need (teacher log-probs,
real preference ranking), teacher/student with different tokenizers, and the batch-building helpers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import Bench, main_inprocess, make_pairs, read_jsonl

from plad.core.methods import METHODS

# --------------------------------------------------------------------------------------------------------------
# A scored pairs store with k = 2 student samples and the teacher's log-probs


_pairs = make_pairs


@pytest.fixture(scope="module")
def store(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _pairs(bench, tmp_path_factory.mktemp("methods") / "pairs", "--teacher_logprobs", "true")


def test_teacher_logprobs_stored_with_every_pair(bench: Bench, store: Path) -> None:
    """The teacher's summed log-prob of each output with its EOS, or without one for an output max_new_tokens cut
    (finish length: it did not end there; training reads it so too)."""
    from plad.core.models import load_model_and_tokenizer

    pairs = read_jsonl(store / "pairs.jsonl")
    assert len(pairs) == 12
    teacher, tok = load_model_and_tokenizer(str(bench.teacher))
    teacher.eval()
    finishes = set()
    for p in pairs:
        prompt = tok(p["prompt"]).input_ids
        for side in ("chosen", "rejected"):
            out = tok(p[side], add_special_tokens=False).input_ids
            finishes.add(p["meta"][f"{side}_finish"])
            if p["meta"][f"{side}_finish"] != "length" or not out:
                out.append(tok.eos_token_id)
            with torch.no_grad():
                logits = teacher(input_ids=torch.tensor([prompt + out])).logits[0, len(prompt) - 1 : -1]
            expected = float(torch.log_softmax(logits, -1).gather(-1, torch.tensor(out)[:, None]).sum())
            assert p["teacher_logps"][side] == pytest.approx(expected, abs=1e-4)
            assert p["teacher_logps"][f"{side}_tokens"] == len(out)
    assert finishes == {"eos", "length"}  # both cases checked
    # the k student samples of a prompt share the teacher output, hence its log-prob
    by_prompt = {}
    for p in pairs:
        by_prompt.setdefault(p["prompt_id"], set()).add(p["teacher_logps"]["chosen"])
    assert all(len(v) == 1 for v in by_prompt.values())


def test_a_cut_output_trains_without_an_end_token(bench: Bench, tmp_path: Path, capsys) -> None:
    """A pair output that max_new_tokens cut (meta finish length) is encoded without its end token, in pair and
    list items alike; an ended one, or one of a pairs file without finishes, keeps it. Teacher log-probs made when
    cut outputs were scored with an end token are refused by a method that reads them (dpkd), saying how to update
    them; plad-rank, which does not, trains."""
    from plad.config import DataOptions
    from plad.core.models import load_tokenizer
    from plad.train.stages import list_items, pair_items

    tok = load_tokenizer(str(bench.student))
    row = {"id": "a", "prompt": "count: 3", "chosen": "three things", "rejected": "thr",
           "meta": {"chosen_finish": "eos", "rejected_finish": "length"}}  # fmt: skip
    body = {k: tok(row[k], add_special_tokens=False).input_ids for k in ("chosen", "rejected")}
    (it,) = pair_items([row], tok, DataOptions(), "pairs.jsonl", "pairs")
    assert it.chosen == body["chosen"] + [tok.eos_token_id] and it.rejected == body["rejected"]
    (it,) = pair_items(
        [{k: v for k, v in row.items() if k != "meta"}], tok, DataOptions(), "pairs.jsonl", "pairs"
    )
    assert it.rejected == body["rejected"] + [tok.eos_token_id]  # no finish recorded: it ended
    (it,) = list_items([row], tok, DataOptions(), "pairs.jsonl")
    assert it.outputs == [body["chosen"] + [tok.eos_token_id], body["rejected"]]
    old = tmp_path / "old.jsonl"
    rows = [{**row, "id": str(i), "teacher_logps": {"chosen": -1.0, "rejected": -2.0}} for i in range(4)]
    old.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ("--model", bench.student, "--pairs_file", old, "--train.max_steps", 1, "--train.batch_size", 2)
    capsys.readouterr()
    assert main_inprocess("distill", "--method", "dpkd", "--output_dir", tmp_path / "d", *args) == 2
    assert "run the same `plad pairs` command again" in capsys.readouterr().err
    assert main_inprocess("distill", "--method", "plad-rank", "--output_dir", tmp_path / "r", *args) == 0
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps({**r, "teacher_logps": {**r["teacher_logps"], "cut_unended": True}}) + "\n"
                           for r in rows))  # fmt: skip
    assert main_inprocess("distill", "--method", "dpkd", "--output_dir", tmp_path / "n", *args[:3], new,
                          *args[4:]) == 0  # fmt: skip


def test_teacher_logprobs_resume_scores_only_what_is_missing(
    bench: Bench, store: Path, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "pairs"
    shutil.copytree(store, copy)
    path = copy / "teacher_logps.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:7]) + lines[7][:10])  # killed while writing row 8
    _pairs(bench, copy, "--teacher_logprobs", "true")
    rows = read_jsonl(path)
    keys = [(r["id"], r["side"], r["index"]) for r in rows]
    assert len(keys) == len(set(keys)) == 18  # 6 prompts x (1 teacher + 2 student samples), none twice
    assert (copy / "pairs.jsonl").read_text() == (store / "pairs.jsonl").read_text()


class _LengthScorer:
    """A stand-in judge of stored samples (scoring.samples.SampleScorer's interface): longer output = better (0.1 per
    character, capped at 1)."""

    name = "length"

    def score(self, ex, side: str, row: dict) -> float:
        return min(1.0, 0.1 * len(row["text"]))


def test_rank_by_orders_pairs_by_score_and_drops_ties() -> None:
    from plad.config import ModelSide, PairsConfig
    from plad.core.data import Example
    from plad.generation.pairs import _materialize

    cfg = PairsConfig(
        teacher=ModelSide(model="T"), student=ModelSide(model="S"), num_student_samples=2, rank_by="length"
    )
    assert cfg.scorer == "length"  # rank_by alone sets the scorer
    fps = {"teacher": "ft", "student": "fs"}
    texts = {("a", "teacher", 0): "xxx", ("a", "student", 0): "x", ("a", "student", 1): "xxxxx",
             ("b", "teacher", 0): "yy", ("b", "student", 0): "zz", ("b", "student", 1): "z"}  # fmt: skip
    done = {
        (i, side, j, fps[side]): {"text": t, "finish": "eos", "seed": 7, "index": j}
        for (i, side, j), t in texts.items()
    }
    logps = {(i, side, j): {"logp": -float(len(t)), "n_tokens": len(t)} for (i, side, j), t in texts.items()}
    examples = [Example("a", "pa"), Example("b", "pb")]
    pairs, stats = _materialize(examples, done, fps, cfg, _LengthScorer(), logps)
    got = {p["id"]: (p["chosen"], p["rejected"], p["meta"]["chosen_side"]) for p in pairs}
    # a#0: teacher longer -> kept; a#1: student longer -> swapped; b#0: tie -> dropped; b#1: teacher longer
    assert got == {
        "a#0": ("xxx", "x", "teacher"),
        "a#1": ("xxxxx", "xxx", "student"),
        "b#1": ("yy", "z", "teacher"),
    }
    swapped = next(p for p in pairs if p["id"] == "a#1")
    assert swapped["chosen_from"] == "S" and swapped["rejected_from"] == "T"
    assert swapped["scores"]["chosen"] > swapped["scores"]["rejected"]
    # teacher log-probs follow their texts
    assert swapped["teacher_logps"]["chosen"] == -5.0 and swapped["teacher_logps"]["rejected"] == -3.0
    assert stats["pairs_dropped_ties"] == 1 and stats["pairs_swapped"] == 1 and stats["ranked_by"] == "length"
    # pseudo pairs keep every pair, teacher first
    cfg.rank_by = ""
    pairs, stats = _materialize(examples, done, fps, cfg, _LengthScorer(), logps)
    assert len(pairs) == 4 and all(p["meta"]["chosen_side"] == "teacher" for p in pairs)
    assert "pairs_dropped_ties" not in stats


def test_rank_by_with_only_ties_fails_clearly(bench: Bench, tmp_path: Path, capsys) -> None:
    # untrained tiny models write junk that scores 0 on both sides: no real preference pair is left
    rc = main_inprocess(
        "pairs", "--prompts_file", bench.distill, "--teacher.model", bench.teacher, "--student.model",
        bench.student, "--output_dir", tmp_path / "p", "--rank_by", "count-summary", "--limit", 3,
        "--teacher.sampling.max_new_tokens", 8, "--student.sampling.max_new_tokens", 8,
    )  # fmt: skip
    assert rc == 2 and "every pair was a tie" in capsys.readouterr().err
    assert not (tmp_path / "p" / "pairs.jsonl").exists()


def test_rank_by_must_match_scorer(bench: Bench, tmp_path: Path, capsys) -> None:
    rc = main_inprocess(
        "pairs", "--prompts_file", bench.distill, "--teacher.model", bench.teacher, "--student.model",
        bench.student, "--output_dir", tmp_path / "p", "--scorer", "count-summary", "--rank_by", "sort-numbers",
    )  # fmt: skip
    assert rc == 2 and "rank_by" in capsys.readouterr().err and not (tmp_path / "p").exists()


# --------------------------------------------------------------------------------------------------------------
# Every method through `plad distill`


def _distill(bench: Bench, store: Path, out: Path, method: str, *extra: object) -> int:
    return main_inprocess(
        "distill",
        "--method", method,
        "--model", bench.student,
        "--teacher", bench.teacher,
        "--pairs_file", store / "pairs.jsonl",
        "--train_file", bench.sft,
        "--output_dir", out,
        "--train.max_steps", 2,
        "--train.batch_size", 4,
        "--train.log_every", 1,
        "--on_policy.max_new_tokens", 8,
        "--threads", 1,
        *extra,
    )  # fmt: skip


EXPECTED_METRICS = {
    "sft": {"ce"},
    "seqkd": {"ce"},
    "plad-rank": {"calibration", "margin", "rank_acc", "reg_ce"},
    "plad-margin": {"calibration", "margin", "rank_acc", "reg_ce"},
    "plad-rank-div": {"calibration", "margin", "rank_acc", "reg_ce"},
    "plad-margin-div": {"calibration", "margin", "rank_acc", "reg_ce"},
    "plad-list": {"calibration", "rank_acc", "reg_ce"},
    "dpkd": {"calibration", "reward_margin", "rank_acc", "reg_ce"},
}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_and_saves(bench: Bench, store: Path, tmp_path: Path, method: str) -> None:
    from conftest import load_safetensors
    from transformers import AutoModelForCausalLM

    out = tmp_path / method
    assert _distill(bench, store, out, method) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["method"] == method and summary["steps"] == 2
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    expected = EXPECTED_METRICS.get(method, {"divergence", "ce"})
    for r in rows:
        assert expected | {"loss", "grad_norm"} <= r.keys(), r.keys()
        assert all(v == v for v in r.values()), r  # no NaN
    before, after = (
        load_safetensors(bench.student / "model.safetensors"),
        load_safetensors(out / "model.safetensors"),
    )
    assert any(not torch.equal(before[k], after[k]) for k in before)
    AutoModelForCausalLM.from_pretrained(out)


def test_kl_init_regulariser(bench: Bench, store: Path, tmp_path: Path) -> None:
    out = tmp_path / "kl"
    assert _distill(bench, store, out, "plad-rank", "--loss.regularizer", "kl-init") == 0
    rows = read_jsonl(out / "metrics.jsonl")
    # step 1 runs on the initial weights: the KL to the initial student is exactly 0 there, then it grows
    assert rows[0]["reg_kl"] == pytest.approx(0.0, abs=1e-6)
    assert rows[1]["reg_kl"] > 0


def test_dpkd_needs_teacher_logprobs(bench: Bench, tmp_path: Path, capsys) -> None:
    plain = _pairs(bench, tmp_path / "plain")
    rc = _distill(bench, plain, tmp_path / "out", "dpkd")
    err = capsys.readouterr().err
    assert rc == 2 and "teacher_logprobs" in err and f"{plain / 'pairs.jsonl'}:1" in err
    assert not (tmp_path / "out").exists()


def test_token_method_needs_teacher(bench: Bench, store: Path, tmp_path: Path, capsys) -> None:
    rc = main_inprocess(
        "distill", "--method", "kd", "--model", bench.student, "--train_file", bench.sft,
        "--output_dir", tmp_path / "out",
    )  # fmt: skip
    assert rc == 2 and "teacher" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# A teacher with another tokenizer: every text-only method works, token-level methods are refused clearly


@pytest.fixture(scope="module")
def other_vocab_teacher(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from plad.benchmark.build import build_model, build_tokenizer

    root = tmp_path_factory.mktemp("other-vocab")
    texts = [r["prompt"] + r["target"] for r in read_jsonl(bench.sft)]
    tok = build_tokenizer(texts, root / "tokenizer", 268)  # fewer merges than the student's
    build_model("tiny", tok, root / "teacher", seed=5)
    return root / "teacher"


def test_different_tokenizers(bench: Bench, other_vocab_teacher: Path, tmp_path: Path, capsys) -> None:
    from transformers import AutoTokenizer

    t_tok, s_tok = (
        AutoTokenizer.from_pretrained(other_vocab_teacher),
        AutoTokenizer.from_pretrained(bench.student),
    )
    assert len(t_tok) != len(s_tok)
    store = _pairs(bench, tmp_path / "pairs", "--teacher_logprobs", "true", teacher=other_vocab_teacher)
    pairs = read_jsonl(store / "pairs.jsonl")
    # teacher log-probs are counted in the teacher's tokens (with the end token of an output that ended)
    p = pairs[0]
    end = 1 if p["meta"]["chosen_finish"] != "length" else 0
    assert (
        p["teacher_logps"]["chosen_tokens"]
        == len(t_tok(p["chosen"], add_special_tokens=False).input_ids) + end
    )
    for method in (
        "seqkd",
        "plad-rank",
        "plad-margin",
        "plad-list",
        "plad-rank-div",
        "plad-margin-div",
        "dpkd",
    ):
        assert _distill(bench, store, tmp_path / method, method) == 0, method
    capsys.readouterr()
    rc = main_inprocess(
        "distill", "--method", "kd", "--model", bench.student, "--teacher", other_vocab_teacher,
        "--train_file", bench.sft, "--output_dir", tmp_path / "kd",
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and f"{len(s_tok)} tokens" in err and f"has {len(t_tok)}" in err
    assert not (tmp_path / "kd" / "train_summary.json").exists()


# --------------------------------------------------------------------------------------------------------------
# Batch building


def test_divergence_labels() -> None:
    from plad.core.methods import divergence_labels

    prompt_len = 2
    a, b = [5, 6, 7, 8, 2], [5, 6, 9, 2]
    labels = torch.tensor([-100, -100] + a)
    divergence_labels(labels, prompt_len, a, b, window=0)
    assert labels.tolist() == [-100, -100, -100, -100, 7, 8, 2]
    labels = torch.tensor([-100, -100] + a)
    divergence_labels(labels, prompt_len, a, b, window=2)
    assert labels.tolist() == [-100, -100, -100, -100, 7, 8, -100]
    labels = torch.tensor([-100, -100] + a)
    divergence_labels(labels, prompt_len, a, list(a), window=0)  # identical outputs count nothing
    assert labels.tolist() == [-100] * 7
    labels = torch.tensor([-100] + b)
    divergence_labels(labels, 1, b, [1, 2], window=0)  # differ at the first token: everything counts
    assert labels.tolist() == [-100] + b


def test_list_items_ranks(bench: Bench) -> None:
    from transformers import AutoTokenizer

    from plad.config import DataOptions
    from plad.train.stages import list_items

    tok = AutoTokenizer.from_pretrained(bench.student)

    def row(j: int, student: str, s_score: float, meta: dict | None = None) -> dict:
        return {
            "id": f"p#{j}", "prompt_id": "p", "prompt": "abc", "chosen": "T", "rejected": student,
            "scores": {"chosen": 0.9, "rejected": s_score}, "meta": meta or {},
        }  # fmt: skip

    rows = [row(0, "a", 0.2), row(1, "b", 0.5), row(2, "c", 0.2)]
    (item,) = list_items(rows, tok, DataOptions(), "f")
    enc = lambda t: tok(t, add_special_tokens=False).input_ids + [tok.eos_token_id]  # noqa: E731
    assert item.outputs == [enc("T"), enc("b"), enc("a"), enc("c")] and item.ranks == [0, 1, 2, 2]
    assert item.chosen == enc("T")
    unscored = [{k: v for k, v in r.items() if k != "scores"} for r in rows]
    (item,) = list_items(unscored, tok, DataOptions(), "f")
    assert item.ranks == [0, 1, 1, 1]  # without scores the students tie
    # real preference pairs: every output by score, the teacher's included
    real = [
        {**row(0, "a", 0.2), "meta": {"ranked_by": "s", "chosen_side": "teacher"}},
        {
            **row(1, "b", 0.5), "chosen": "b", "rejected": "T", "scores": {"chosen": 0.95, "rejected": 0.9},
            "meta": {"ranked_by": "s", "chosen_side": "student"},
        },
    ]  # fmt: skip
    (item,) = list_items(real, tok, DataOptions(), "f")
    assert item.outputs == [enc("b"), enc("T"), enc("a")] and item.ranks == [0, 1, 2]


def test_list_batch_layout() -> None:
    from plad.config import LossConfig
    from plad.core.methods import Item, make_batch

    items = [
        Item([1, 2], [3, 9], outputs=[[3, 9], [4, 9], [5, 9]], ranks=[0, 1, 1]),
        Item([6], [7, 9], outputs=[[7, 9], [8, 9]], ranks=[0, 1]),
    ]
    batch = make_batch(items, None, 0, LossConfig())
    main = batch["main"]
    assert main["list_mask"].tolist() == [[True, True, True], [True, True, False]]
    assert main["list_ranks"].tolist() == [[0, 1, 1], [0, 1, 0]]
    # row k*B + b holds output k of prompt b
    assert main["input_ids"][1, :3].tolist() == [6, 7, 9] and main["input_ids"][2, :4].tolist() == [
        1,
        2,
        4,
        9,
    ]
    assert batch["n_tokens"] == 4 and batch["n_examples"] == 2


def test_on_policy_is_deterministic_per_micro_batch(bench: Bench) -> None:
    from plad.config import DistillConfig, LossConfig, SamplingConfig
    from plad.core.methods import Item
    from plad.core.models import load_model_and_tokenizer
    from plad.train.stages import make_on_policy

    model, tok = load_model_and_tokenizer(str(bench.student))
    items = [Item(tok("abc").input_ids, [5, tok.eos_token_id]) for _ in range(3)]
    cfg = DistillConfig(
        loss=LossConfig(on_policy_frac=0.5), on_policy=SamplingConfig(temperature=1.0, max_new_tokens=6)
    )
    fn = make_on_policy(cfg, tok)
    runs = [[fn(model, items, g) for g in range(12)] for _ in range(2)]
    assert [[it.chosen for it in b] for b in runs[0]] == [[it.chosen for it in b] for b in runs[1]]
    replaced = sum(b[0].chosen != items[0].chosen for b in runs[0])
    assert 2 <= replaced <= 10  # about half of the micro-batches are on-policy
    never = make_on_policy(DistillConfig(loss=LossConfig(on_policy_frac=0.0)), tok)
    assert all(never(model, items, g) is items for g in range(5))


def test_method_names_have_one_source_without_torch() -> None:
    """The method names come from plad.config.method_specs alone, which imports no torch (configs and `plad methods`
    read it); plad.core.methods gives each of them its loss, and adds no method of its own."""
    from plad.config import ALL_METHODS, METHOD_SPECS

    assert list(METHODS) == ALL_METHODS == list(METHOD_SPECS)
    for name, spec in METHOD_SPECS.items():
        assert METHODS[name].summary == spec.summary and METHODS[name].source == spec.source
        assert callable(METHODS[name].loss)
    probe = "import sys, plad.config, plad.config.method_specs; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
        == "False\n"
    )


# --------------------------------------------------------------------------------------------------------------
# Iterated PLaD


@pytest.mark.parametrize("method", ["plad-rank", "plad-list"])
def test_rounds_regenerate_student_samples(bench: Bench, store: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / method
    args = ["--rounds", 2, "--scorer", "count-summary", "--train.max_steps", 4, "--train.save_every", 1]
    assert _distill(bench, store, out, method, *args) == 0
    rows = read_jsonl(out / "rounds" / "round-1.jsonl")
    pairs = read_jsonl(store / "pairs.jsonl")
    n_items = len(pairs) if method == "plad-rank" else len({p["prompt_id"] for p in pairs})
    per_item = 1 if method == "plad-rank" else 2  # plad-list: k = 2 fresh samples per prompt
    assert [r["item"] for r in rows] == list(range(n_items))
    assert all(len(r["samples"]) == per_item and r["samples"][0]["ids"] for r in rows)
    assert all(isinstance(s["score"], float) for r in rows for s in r["samples"])
    assert not (out / "rounds" / "round-0.jsonl").exists()  # round 0 trains on the stored pairs
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 4


def test_rounds_need_a_pair_method_and_a_scorer(bench: Bench, store: Path, tmp_path: Path, capsys) -> None:
    assert _distill(bench, store, tmp_path / "a", "dpkd", "--rounds", 2) == 2
    assert "plad-* methods" in capsys.readouterr().err
    assert _distill(bench, store, tmp_path / "b", "plad-margin", "--rounds", 2) == 2
    assert "set scorer" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_data_fraction_keeps_whole_prompts_in_file_order() -> None:
    from plad.core.data import Example
    from plad.train.stages import _fraction

    pairs = [{"id": f"{p}#{j}", "prompt_id": p} for p in "abcde" for j in range(2)]
    assert [r["id"] for r in _fraction(pairs, 0.4)] == ["a#0", "a#1", "b#0", "b#1"]
    assert [r["id"] for r in _fraction(pairs, 0.5)] == ["a#0", "a#1", "b#0", "b#1", "c#0", "c#1"]  # ceil
    examples = [Example(str(i), "p") for i in range(10)]
    assert [e.id for e in _fraction(examples, 0.25)] == ["0", "1", "2"]
    assert _fraction(examples, 1.0) == examples


def test_divergence_labels_built_only_for_the_methods_that_read_them() -> None:
    """make_batch loops over the pairs for divergence-aware labels only when asked; the training loop asks for the
    methods whose spec says from_divergence, which are exactly the -div methods (their losses read the labels)."""
    from plad.config import LossConfig
    from plad.core.methods import METHODS, Item, make_batch

    assert {n for n, m in METHODS.items() if m.from_divergence} == {"plad-rank-div", "plad-margin-div"}
    items = [Item([1, 2], [3, 4, 9], [3, 5, 9]), Item([6], [7, 9], [8, 9])]
    assert "divergence_labels" not in make_batch(items, None, 0, LossConfig())["main"]
    div = make_batch(items, None, 0, LossConfig(), divergence=True)["main"]["divergence_labels"]
    assert (div[0] != -100).sum() == 2 and (
        div[1] != -100
    ).sum() == 2  # from the first differing token, EOS too
