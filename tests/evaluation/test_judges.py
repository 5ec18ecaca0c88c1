"""Judges of `plad eval`: verdict parsing and combination by hand, length buckets, the reward-model judge on a tiny
sequence classifier built here, the LLM judge over a real HTTP server (the official client, cache, both orders,
position bias, parse failures, an endpoint that fails midway), calibration, and bad input."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import Bench, main_inprocess, read_jsonl
from servers import RuleJudgeServer, TransformersServer, free_port

from plad.benchmark.tasks import get_task
from plad.evaluation.judges import TEMPLATES, combine, parse_verdict
from plad.evaluation.winrate import bucket_labels, by_bucket, quantile_edges, summarise_outcomes

TASK = get_task("count-summary")

# -------------------------------------------------------------------------------------------------------------
# By hand


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("Comparison: A is shorter.\nPreferred: A", "A"),
        ('Comparison: B covers more.\nMore helpful: "B"', "B"),
        ("**Preferred:** B", "B"),
        ("Preferred: A\n...on reflection...\nPreferred: B", "B"),  # the last verdict counts
        ("Verdict: tie", "tie"),
        ("Verdict: a tie", "tie"),  # the article 'a' is not verdict A
        ("Answer: a close call, B", None),
        ("B", "B"),
        (" 'A'. ", "A"),
        ("Both are fine.", None),
        ("Preferred: neither", None),
        ("", None),
        (None, None),
        ("Comparison: Summary A is better than B", None),  # names A, but gives no verdict line
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_parse_verdict_custom_regex():
    assert parse_verdict("[[A]] then [[B]]", r"\[\[(A|B|tie)\]\]") == "B"
    assert parse_verdict("Preferred: A", r"\[\[(A|B)\]\]") is None  # a custom pattern replaces the default


def test_combine_both_orders():
    # (verdict with the system as A, verdict with the system as B) -> (outcome for the system, orders agree)
    assert combine("A", "B") == (1.0, True)  # the system wins in both positions
    assert combine("B", "A") == (0.0, True)  # the reference wins in both
    assert combine("A", "A") == (0.5, False)  # always the first position: position bias, a tie
    assert combine("B", "B") == (0.5, False)
    assert combine("tie", "tie") == (0.5, True)
    assert combine("A", "tie") == (0.5, False)
    o, agree = combine(None, "B")
    assert math.isnan(o) and agree is None


def test_outcome_summary_and_buckets_by_hand():
    o = [1, 0.5, 0, math.nan, 1, 1]
    s = summarise_outcomes(o, 200, 0)
    # 5 verdicts: (1 + 0.5 + 0 + 1 + 1) / 5 = 0.7; the NaN is counted, not dropped silently
    assert s["value"] == pytest.approx(0.7) and s["n"] == 5 and s["no_verdict"] == 1
    assert (s["wins"], s["ties"], s["losses"]) == (3, 1, 1)
    lengths = [1, 2, 3, 4, 5, 6]
    assert quantile_edges(lengths, 2) == [3.5]
    assert quantile_edges([5, 5, 5, 5], 3) == [5.0]  # equal quantiles merge
    assert bucket_labels([2, 4]) == ["<= 2", "2-4", "> 4"]
    b = by_bucket(o, lengths, [2, 4], 200, 0)
    # lengths 1,2 -> "<= 2": outcomes 1, 0.5 -> 0.75; 3,4 -> "2-4": 0, NaN -> 0; 5,6 -> "> 4": 1, 1 -> 1
    assert [x["bucket"] for x in b] == ["<= 2", "2-4", "> 4"]
    assert [x["size"] for x in b] == [2, 2, 2]
    assert [x["value"] for x in b] == [0.75, 0.0, 1.0]
    assert [x["no_verdict"] for x in b] == [0, 1, 0]


# -------------------------------------------------------------------------------------------------------------
# Outputs to judge: graded variants of the targets, so the judges have something to decide


def gold(prompt: str) -> str:
    letters = prompt.split("\n")[0].removeprefix("count:").split()
    counts = Counter(letters)
    return " " + " ".join(f"{c}:{n}" for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def variant(i: int, row: dict) -> str:
    return [row["target"], row["target"][:-3], gold(row["prompt"]), ""][i % 4]


@pytest.fixture(scope="module")
def outputs(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("judged")
    tests = read_jsonl(bench.test)
    files = {}
    for name, shift in (("system", 0), ("other", 1)):
        rows = [{"id": r["id"], "output": variant(i + shift, r)} for i, r in enumerate(tests)]
        files[name] = root / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


def tldr_split(text: str) -> tuple[str, str, str]:
    m = re.search(r"Post:\n(.*)\n\nSummary A:\n(.*)\n\nSummary B:\n(.*)\n\nFIRST provide", text, re.S)
    assert m, text
    return m.group(1), m.group(2), m.group(3)


def by_task_score(prompt: str, a: str, b: str) -> str:
    """A judge that knows the task: prefers the higher-scoring summary, says tie when equal."""
    sa, sb = TASK.score(prompt, a), TASK.score(prompt, b)
    verdict = "A" if sa > sb else "B" if sb > sa else "tie"
    return f"Comparison: one summary counts better than the other.\nPreferred: {verdict}"


def judge_args(bench: Bench, out: Path, outputs: Path, base_url: str, *extra: object) -> list[object]:
    return [
        "eval", "--test_file", bench.test, "--outputs_file", outputs, "--output_dir", out,
        "--judge", "task,llm,rouge", "--scorer", "count-summary", "--llm_judge.model", "rule-judge",
        "--llm_judge.api.base_url", base_url,
        "--llm_judge.api.api_key_env", "", "--llm_judge.api.backoff_base", 0.01, "--llm_judge.api.timeout", 10,
        "--bootstrap_samples", 200, *extra,
    ]  # fmt: skip


def differs(bench: Bench, outputs: dict) -> list[bool]:
    """Per test prompt: is the system's output not the target itself (identical texts are a tie, not asked)?"""
    mine = read_jsonl(outputs["system"])
    return [
        m["output"].strip() != t["target"].strip() for t, m in zip(read_jsonl(bench.test), mine, strict=True)
    ]


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


# -------------------------------------------------------------------------------------------------------------
# The LLM judge over HTTP


def test_llm_judge_agrees_with_the_rule_it_follows(bench: Bench, outputs: dict, tmp_path: Path) -> None:
    """A judge following the task score gives, through plad's client, both orders and parsing, exactly the task
    judge's outcomes; the cache makes a second run free; the verdict regex is applied on reading."""
    n = len(read_jsonl(bench.test))
    identical = n - sum(differs(bench, outputs))  # the target itself: a tie without a request
    with RuleJudgeServer(tldr_split, by_task_score) as server:
        args = judge_args(
            bench, tmp_path / "e", outputs["system"], server.base_url, "--compare_to", outputs["other"]
        )
        assert main_inprocess(*args) == 0
        res = results(tmp_path / "e")
        llm, task = res["judges"]["llm"], res["judges"]["task"]
        # one request per distinct (prompt, A, B): vs target and head-to-head share those where other == target
        tests, mine, theirs = (
            read_jsonl(bench.test),
            read_jsonl(outputs["system"]),
            read_jsonl(outputs["other"]),
        )
        asked = {
            (t["prompt"], *order)
            for t, m, o in zip(tests, mine, theirs, strict=True)
            for b in (t["target"], o["output"])
            if m["output"] != b
            for order in ((m["output"], b), (b, m["output"]))
        }
        assert server.requests == len(asked) < 2 * (n - identical) + 2 * n
        assert llm["win_rate_vs_target"]["value"] == pytest.approx(task["win_rate_vs_target"]["value"])
        for key in ("wins", "ties", "losses", "n"):
            assert llm["win_rate_vs_target"][key] == task["win_rate_vs_target"][key], key
            assert llm["head_to_head"][key] == task["head_to_head"][key], key
        assert llm["win_rate_vs_target"]["position_consistency"] == 1.0
        assert llm["win_rate_vs_target"]["identical"] == identical
        assert llm["win_rate_vs_target"]["unparsed_replies"] == 0
        rows = read_jsonl(tmp_path / "e" / "outputs.jsonl")
        for r in rows:
            expected = (
                1.0 if r["score"] > r["target_score"] else 0.0 if r["score"] < r["target_score"] else 0.5
            )
            assert r["llm_vs_target"] == expected, r
        assert res["judge"] == "task" and res["win_rate_vs_target"] == task["win_rate_vs_target"]
        assert [b["size"] for b in llm["by_length"]] == res["length_buckets"]["sizes"]
        assert sum(res["length_buckets"]["sizes"]) == n
        assert llm["usage_this_run"]["requests"] == server.requests

        # the same command again: every verdict from the cache, nothing asked
        before = server.requests
        assert main_inprocess(*args) == 0
        assert server.requests == before
        again = results(tmp_path / "e")["judges"]["llm"]
        assert again["win_rate_vs_target"] == llm["win_rate_vs_target"]
        assert again["requests_this_run"] == 0
        assert again["cached_verdicts_used"] == llm["requests_this_run"] + llm["cached_verdicts_used"]
        # a verdict pattern that matches nothing: replies are re-parsed from the cache, all counted unparsed
        assert main_inprocess(*args, "--llm_judge.verdict_regex", r"Winner=(A|B)") == 0
        assert server.requests == before
        w = results(tmp_path / "e")["judges"]["llm"]["win_rate_vs_target"]
        assert w["unparsed_replies"] == 2 * (n - identical) and w["no_verdict"] == n - identical
        assert w["n"] == identical  # only the identical pairs have an outcome


def test_llm_judge_position_bias_and_parse_failures(bench: Bench, outputs: dict, tmp_path: Path) -> None:
    n = len(read_jsonl(bench.test))
    identical = n - sum(differs(bench, outputs))

    def always_first(prompt: str, a: str, b: str) -> str:
        return "Comparison: the first one.\nPreferred: A"

    with RuleJudgeServer(tldr_split, always_first) as server:
        assert main_inprocess(*judge_args(bench, tmp_path / "bias", outputs["system"], server.base_url)) == 0
    w = results(tmp_path / "bias")["judges"]["llm"]["win_rate_vs_target"]
    # every comparison flips with the order: all ties, no agreement, the first position always chosen
    assert w["value"] == 0.5 and w["ties"] == n and w["position_consistency"] == 0.0
    assert w["first_position_rate"] == 1.0

    def mumbles(prompt: str, a: str, b: str) -> str:  # no verdict when the post mentions 'a'
        return "Hard to say." if " a " in f" {prompt} " else by_task_score(prompt, a, b)

    tests = read_jsonl(bench.test)
    mumbled = sum(
        d and " a " in f" {r['prompt']} " for d, r in zip(differs(bench, outputs), tests, strict=True)
    )
    assert 0 < mumbled < n - identical
    with RuleJudgeServer(tldr_split, mumbles) as server:
        assert main_inprocess(*judge_args(bench, tmp_path / "m", outputs["system"], server.base_url)) == 0
    w = results(tmp_path / "m")["judges"]["llm"]["win_rate_vs_target"]
    assert w["unparsed_replies"] == 2 * mumbled and w["no_verdict"] == mumbled and w["n"] == n - mumbled
    rows = read_jsonl(tmp_path / "m" / "outputs.jsonl")
    assert sum(r["llm_vs_target"] is None for r in rows) == mumbled


def test_llm_judge_endpoint_failing_midway_resumes(bench: Bench, outputs: dict, tmp_path: Path) -> None:
    need = 2 * sum(differs(bench, outputs))
    out = tmp_path / "e"
    with RuleJudgeServer(tldr_split, by_task_score, fail_after=5) as server:
        args = judge_args(bench, out, outputs["system"], server.base_url, "--llm_judge.api.max_retries", 1)
        assert main_inprocess(*args, "--llm_judge.api.concurrency", 1) == 3
    assert not (out / "results.json").exists()
    assert len(read_jsonl(out / "llm_verdicts.jsonl")) == 5  # every verdict paid for is kept
    # the server comes back elsewhere (another port: the cache is keyed by the request, not the address)
    with RuleJudgeServer(tldr_split, by_task_score) as server:
        args = judge_args(bench, out, outputs["system"], server.base_url)
        assert main_inprocess(*args) == 0
        assert server.requests == need - 5
    w = results(out)["judges"]["llm"]
    assert w["cached_verdicts_used"] == 5 and w["requests_this_run"] == need - 5
    assert len(read_jsonl(out / "llm_verdicts.jsonl")) == need


@pytest.mark.parametrize("client", ["openai", "lean"])
def test_llm_judge_request_errors_and_unwritable_cache(
    bench: Bench, outputs: dict, tmp_path: Path, capsys, client: str
):
    """A request the judge refuses (HTTP 400: e.g. over its context) is no verdict, kept and counted, and the run
    goes on; a cache that cannot be written is refused before any request. Through both HTTP clients."""
    tests = read_jsonl(bench.test)
    refused = sum(
        d and " b " in f" {t['prompt']} " for d, t in zip(differs(bench, outputs), tests, strict=True)
    )
    assert refused > 0

    def refuses_b(prompt: str, a: str, b: str):
        return 400 if " b " in f" {prompt} " else by_task_score(prompt, a, b)

    with RuleJudgeServer(tldr_split, refuses_b) as server:
        args = judge_args(
            bench, tmp_path / "e", outputs["system"], server.base_url, "--llm_judge.api.client", client
        )
        assert main_inprocess(*args) == 0
        w = results(tmp_path / "e")["judges"]["llm"]["win_rate_vs_target"]
        assert w["request_errors"] == 2 * refused and w["no_verdict"] == refused
        errors = [r for r in read_jsonl(tmp_path / "e" / "llm_verdicts.jsonl") if "error" in r]
        assert len(errors) == 2 * refused and all("HTTP 400" in r["error"] for r in errors)
        # the same command again asks only the refused requests (a refusal is not a paid verdict)
        asked = server.requests
        assert main_inprocess(*args) == 0
        assert server.requests == asked + 2 * refused
        blocked = tmp_path / "file"
        blocked.write_text("")
        before = server.requests
        args = judge_args(
            bench, tmp_path / "e2", outputs["system"], server.base_url, "--llm_judge.api.client", client
        )
        assert main_inprocess(*args, "--llm_judge.cache", blocked / "cache.jsonl") == 2
        assert "cannot be written" in capsys.readouterr().err and server.requests == before


def test_llm_judge_refusing_everything_stops(bench: Bench, outputs: dict, tmp_path: Path, capsys) -> None:
    with RuleJudgeServer(tldr_split, lambda *texts: 400) as server:
        assert main_inprocess(*judge_args(bench, tmp_path / "e", outputs["system"], server.base_url)) == 3
    err = capsys.readouterr().err
    assert "refused every request" in err and "HTTP 400" in err
    assert not (tmp_path / "e" / "results.json").exists()


def test_llm_judge_endpoint_down_before_work(bench: Bench, outputs: dict, tmp_path: Path, capsys) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    args = judge_args(bench, tmp_path / "e", outputs["system"], url, "--model", bench.student)
    assert main_inprocess(*args) == 3
    err = capsys.readouterr().err
    assert "llm judge endpoint" in err and "cannot be reached" in err and "Nothing was asked yet" in err
    assert not (tmp_path / "e" / "outputs.jsonl").exists()  # stopped before the model generated anything


@pytest.mark.slow
def test_llm_judge_against_transformers_serve(bench: Bench, outputs: dict, tmp_path: Path) -> None:
    """The real server path: a tiny random model as the judge (completions mode) rarely writes a verdict; every
    reply is stored and each unreadable one counted, none dropped."""
    model = tmp_path / "judge"
    shutil.copytree(bench.teacher, model)
    n = len(read_jsonl(bench.test))
    asked = 2 * sum(differs(bench, outputs))
    with TransformersServer(model, tmp_path / "server.log") as server:
        args = judge_args(
            bench, tmp_path / "e", outputs["system"], server.base_url, "--llm_judge.model", str(model),
            "--llm_judge.api.mode", "completions", "--llm_judge.template", "hh", "--llm_judge.max_tokens", 4,
        )  # fmt: skip
        assert main_inprocess(*args) == 0
    w = results(tmp_path / "e")["judges"]["llm"]["win_rate_vs_target"]
    cache = read_jsonl(tmp_path / "e" / "llm_verdicts.jsonl")
    assert len(cache) == asked and all(isinstance(r["reply"], str) for r in cache)
    parsed = sum(parse_verdict(r["reply"]) is not None for r in cache)
    assert w["unparsed_replies"] == asked - parsed and w["replies"] == asked
    assert w["n"] + w["no_verdict"] == n


def test_shipped_templates_name_their_slots():
    for text in TEMPLATES.values():
        assert all(k in text for k in ("{prompt}", "{a}", "{b}"))


# -------------------------------------------------------------------------------------------------------------
# The reward-model judge


def build_reward_model(bench: Bench, out: Path, num_labels: int = 1) -> Path:
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(bench.tokenizer)
    cfg = AutoConfig.from_pretrained(bench.student)
    cfg.num_labels, cfg.pad_token_id = num_labels, tok.pad_token_id
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_reward_model_judge(bench: Bench, outputs: dict, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm = build_reward_model(bench, tmp_path / "rm")
    args = [
        "eval", "--test_file", bench.test, "--outputs_file", outputs["system"], "--output_dir", tmp_path / "e",
        "--judge", "reward-model,task", "--scorer", "count-summary", "--reward_model.model", rm,
        "--reward_model.batch_size", 3,
        "--compare_to", outputs["other"], "--bootstrap_samples", 200,
    ]  # fmt: skip
    assert main_inprocess(*args) == 0
    res = results(tmp_path / "e")
    assert list(res["judges"]) == ["reward-model", "task"]
    assert res["judge"] == "task"  # the task judge heads the table whenever it runs
    rows = read_jsonl(tmp_path / "e" / "outputs.jsonl")
    # each score is the classifier's logit on prompt + text alone (no padding): batching changed nothing
    model = AutoModelForSequenceClassification.from_pretrained(rm).eval()
    tok = AutoTokenizer.from_pretrained(rm)
    for r in rows:
        for text, key in ((r["output"], "rm_score"), (r["target"], "rm_target_score")):
            ids = tok(r["prompt"] + text, return_tensors="pt")
            with torch.no_grad():
                want = model(**ids).logits[0, 0].item()
            assert r[key] == pytest.approx(want, abs=1e-4), (r["id"], key)
    rmj = res["judges"]["reward-model"]
    o = np.sign(np.array([r["rm_score"] - r["rm_target_score"] for r in rows]))
    assert rmj["win_rate_vs_target"]["wins"] == int((o > 0).sum())
    assert rmj["win_rate_vs_target"]["losses"] == int((o < 0).sum())
    assert rmj["mean_score"]["value"] == pytest.approx(np.mean([r["rm_score"] for r in rows]))
    assert rmj["head_to_head"]["n"] == len(rows) and rmj["model"] == str(rm)


@pytest.mark.parametrize("what", ["causal-lm", "two-labels", "missing"])
def test_reward_model_folder_checked_before_work(bench: Bench, outputs: dict, tmp_path: Path, what, capsys):
    folder = {
        "causal-lm": bench.student,
        "two-labels": tmp_path / "rm2",
        "missing": tmp_path / "nowhere",
    }[what]
    if what == "two-labels":
        build_reward_model(bench, folder, num_labels=2)
    args = [
        "eval", "--test_file", bench.test, "--model", bench.student, "--output_dir", tmp_path / "e",
        "--judge", "reward-model", "--reward_model.model", folder,
    ]  # fmt: skip
    assert main_inprocess(*args) == 2
    err = capsys.readouterr().err
    assert str(folder) in err
    assert {
        "causal-lm": "is not a sequence classifier (architectures: LlamaForCausalLM)",
        "two-labels": "has 2 outputs",
        "missing": "does not exist",
    }[what] in err
    assert not (tmp_path / "e" / "outputs.jsonl").exists()


# -------------------------------------------------------------------------------------------------------------
# Bad input, length buckets, calibration


def test_length_edges_and_word_lengths(bench: Bench, outputs: dict, tmp_path: Path) -> None:
    args = [
        "eval", "--test_file", bench.test, "--outputs_file", outputs["system"], "--output_dir", tmp_path / "e",
        "--length_edges", "3,4", "--bootstrap_samples", 200, "--scorer", "count-summary",
    ]  # fmt: skip
    assert main_inprocess(*args) == 0
    res = results(tmp_path / "e")
    lengths = [len(r["target"].split()) for r in read_jsonl(bench.test)]  # no tokenizer given: words
    assert res["length_buckets"]["unit"] == "words"
    assert res["length_buckets"]["sizes"] == [
        sum(n <= 3 for n in lengths),
        sum(3 < n <= 4 for n in lengths),
        sum(n > 4 for n in lengths),
    ]
    assert list(res["judges"]) == ["task", "rouge", "exact-match"]  # the default judges with a scorer
    assert main_inprocess(*args, "--length_by", "output", "--output_dir", tmp_path / "o") == 0
    by_output = results(tmp_path / "o")["length_buckets"]
    words = [len(r["output"].split()) for r in read_jsonl(outputs["system"])]
    assert by_output["by"] == "output length" and by_output["sizes"] == [
        sum(n <= 3 for n in words),
        sum(3 < n <= 4 for n in words),
        sum(n > 4 for n in words),
    ]
    assert res["judges"]["rouge"]["mean"] == res["rouge_l"]


def test_calibration_by_hand(bench: Bench, tmp_path: Path) -> None:
    """The ranking rate equals a direct computation with one unpadded forward per text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tests = read_jsonl(bench.test)
    pairs = [
        {"prompt": r["prompt"], "chosen": gold(r["prompt"]), "rejected": r["target"][:-3] if i % 2 else ""}
        for i, r in enumerate(tests)
    ] + [{"prompt": tests[0]["prompt"], "chosen": " a:1", "rejected": " a:1"}]  # equal texts: a tie
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))

    def evaluate(pairs_file: Path, out: Path) -> dict:
        args = [
            "eval", "--test_file", bench.test, "--model", bench.student, "--output_dir", out,
            "--calibration_file", pairs_file, "--generation.max_new_tokens", 4, "--bootstrap_samples", 200,
        ]  # fmt: skip
        assert main_inprocess(*args) == 0
        return results(out)["calibration"]

    cal = evaluate(path, tmp_path / "e")

    model = AutoModelForCausalLM.from_pretrained(bench.student).eval()
    tok = AutoTokenizer.from_pretrained(bench.student)

    def logp(prompt: str, text: str) -> tuple[float, int]:
        p = tok(prompt).input_ids
        o = tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([p + o])).logits[0].float(), -1)
        return sum(lp[len(p) - 1 + t, o[t]].item() for t in range(len(o))), len(o)

    summed, mean = [], []
    for p in pairs:
        (c, nc), (r, nr) = logp(p["prompt"], p["chosen"]), logp(p["prompt"], p["rejected"])
        summed.append(1.0 if c > r + 1e-5 else 0.0 if c < r - 1e-5 else 0.5)
        mean.append(1.0 if c / nc > r / nr + 1e-5 else 0.0 if c / nc < r / nr - 1e-5 else 0.5)
    assert cal["pairs"] == len(pairs)
    assert cal["summed"]["value"] == pytest.approx(np.mean(summed))
    assert cal["per_token"]["value"] == pytest.approx(np.mean(mean))
    assert cal["summed"]["ties"] >= 1

    # swapping chosen and rejected gives the complement
    flipped = tmp_path / "flipped.jsonl"
    flipped.write_text(
        "".join(json.dumps({**p, "chosen": p["rejected"], "rejected": p["chosen"]}) + "\n" for p in pairs)
    )
    assert evaluate(flipped, tmp_path / "f")["summed"]["value"] == pytest.approx(1 - np.mean(summed))


def test_report_over_eval_results(bench: Bench, outputs: dict, tmp_path: Path, capsys) -> None:
    for name in ("system", "other"):
        args = [
            "eval", "--test_file", bench.test, "--outputs_file", outputs[name], "--output_dir", tmp_path / name,
            "--bootstrap_samples", 200, "--scorer", "count-summary",
        ]  # fmt: skip
        assert main_inprocess(*args) == 0
    out = tmp_path / "report"
    assert main_inprocess("report", tmp_path / "system", tmp_path / "other", "--output_dir", out) == 0
    md = (out / "report.md").read_text()
    assert "| system | task | rouge | exact-match |" in md  # one table for both systems
    assert md.count("\n| system | 0.") == 2 and md.count("\n| other | 0.") == 2  # main table + judge table
    assert "## plad eval: system, other" in md
    assert (out / "length_buckets.png").is_file() and (out / "win_rates.png").is_file()

    # systems judged on another test set are not put in one table
    fewer = tmp_path / "fewer.jsonl"
    fewer.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(bench.test)[:6]))
    subset = tmp_path / "subset.jsonl"
    subset.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(outputs["system"])[:6]))
    args = ["eval", "--test_file", fewer, "--outputs_file", subset, "--output_dir", tmp_path / "few"]
    assert main_inprocess(*args, "--bootstrap_samples", 200) == 0
    assert (
        main_inprocess("report", tmp_path / "system", tmp_path / "few", "--output_dir", tmp_path / "r2") == 2
    )
    assert "made on different test sets" in capsys.readouterr().err


def test_rouge_headline_without_a_task_scorer(bench: Bench, outputs: dict, tmp_path: Path) -> None:
    """A user's task has no scorer: ROUGE-L is the headline: its mean, a head-to-head decided by the higher ROUGE-L
    (equal values tie), the per-row value as `score`, and no win rate over targets (a reference scores 1 against
    itself)."""
    from plad.scoring.metrics import rouge_l

    args = [
        "eval", "--test_file", bench.test, "--outputs_file", outputs["system"], "--output_dir", tmp_path / "e",
        "--scorer", "", "--compare_to", outputs["other"], "--bootstrap_samples", 200,
    ]  # fmt: skip
    assert main_inprocess(*args) == 0
    res = results(tmp_path / "e")
    assert res["judge"] == "rouge" and list(res["judges"]) == ["rouge", "exact-match"]
    assert "win_rate_vs_target" not in res and res["mean_score"] == res["rouge_l"]
    tests = read_jsonl(bench.test)
    mine = [
        rouge_l(r["output"], t["target"]) for r, t in zip(read_jsonl(outputs["system"]), tests, strict=True)
    ]
    theirs = [
        rouge_l(r["output"], t["target"]) for r, t in zip(read_jsonl(outputs["other"]), tests, strict=True)
    ]
    h2h = res["head_to_head"]
    assert (h2h["wins"], h2h["ties"], h2h["losses"]) == (
        sum(a > b for a, b in zip(mine, theirs, strict=True)),
        sum(a == b for a, b in zip(mine, theirs, strict=True)),
        sum(a < b for a, b in zip(mine, theirs, strict=True)),
    )
    assert h2h["value"] == pytest.approx((h2h["wins"] + 0.5 * h2h["ties"]) / len(tests))
    assert [r["score"] for r in read_jsonl(tmp_path / "e" / "outputs.jsonl")] == pytest.approx(mine)
    by_length = res["judges"]["rouge"]["by_length"]
    assert sum(c["size"] for c in by_length) == len(tests) and "wins" not in by_length[0]


def test_generation_cache_shared_across_output_folders(bench: Bench, tmp_path: Path) -> None:
    """Outputs made by the same model, prompts and decoding come from eval.generation_cache instead of being
    generated again (plad bench's fixed teacher across seeds); another model's are not taken."""
    common = ["eval", "--test_file", bench.test, "--generation_cache", tmp_path / "cache", "--bootstrap_samples", 200,
              "--generation.max_new_tokens", 8]  # fmt: skip
    assert main_inprocess(*common, "--model", bench.student, "--output_dir", tmp_path / "a") == 0
    assert len(list((tmp_path / "cache").glob("*.jsonl"))) == 1
    assert main_inprocess(*common, "--model", bench.student, "--output_dir", tmp_path / "b") == 0
    a, b = results(tmp_path / "a"), results(tmp_path / "b")
    assert a["generation_seconds"] > 0 and b["generation_seconds"] == 0
    assert read_jsonl(tmp_path / "a" / "outputs.jsonl") == read_jsonl(tmp_path / "b" / "outputs.jsonl")
    assert main_inprocess(*common, "--model", bench.teacher, "--output_dir", tmp_path / "c") == 0
    assert results(tmp_path / "c")["generation_seconds"] > 0
    assert len(list((tmp_path / "cache").glob("*.jsonl"))) == 2
