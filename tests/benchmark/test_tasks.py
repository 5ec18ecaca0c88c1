"""Generated benchmark tasks: hand-checked scorer values, gold/corrupt invariants and split generation."""

from __future__ import annotations

import random

import pytest

from plad.benchmark import tasks
from plad.benchmark.tasks import NEAR_MISS_CAP, TASKS, generate_splits, get_task

CS_PROMPT = "count: b a c a b a\nsummary:"  # gold " a:3 b:2 c:1"
SN_PROMPT = "sort: 42 17 93 5\nsorted:"  # gold " 5 17 42 93"


class TinyTask(tasks.SortNumbers):
    """A task with only three possible prompts, to exercise the too-small-input-space error."""

    name = "tiny"

    def make_prompt(self, rng: random.Random) -> str:
        return f"sort: {rng.randint(1, 3)} 9\nsorted:"


def test_count_summary_solve() -> None:
    assert get_task("count-summary").solve(CS_PROMPT) == " a:3 b:2 c:1"
    # ties broken alphabetically
    assert get_task("count-summary").solve("count: c b a d d\nsummary:") == " d:2 a:1 b:1 c:1"


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (" a:3 b:2 c:1", 1.0),
        ("a:3 b:2 c:1\n", 1.0),  # surrounding whitespace is stripped
        ("", 0.0),
        ("hello world", 0.0),
        (" a:1 b:1 c:2", 0.0),  # letters right, every count wrong: tp = 0
        # one count wrong of 3: tp=2, F1 = 2*2/(3+3) = 2/3; matched a,b in gold order -> factor 1
        (" a:3 b:2 c:2", 2 / 3),
        # one pair missing: tp=2, F1 = 2*2/(2+3) = 0.8, order factor 1
        (" a:3 b:2", 0.8),
        # one extra pair: tp=3, F1 = 2*3/(4+3) = 6/7
        (" a:3 b:2 c:1 d:1", 6 / 7),
        # all right, ranks [1, 0, 2]: 1 of 2 adjacent pairs in order -> factor 0.8 + 0.2*0.5 = 0.9
        (" b:2 a:3 c:1", 0.9),
        # fully reversed: 0 of 2 adjacent pairs in order -> factor 0.8
        (" c:1 b:2 a:3", 0.8),
        # one wrong and out of order: tp=2 (b, a), F1=2/3, ranks [1, 0] -> factor 0.8 -> 0.8 * 2/3
        (" b:2 a:3 c:5", 0.8 * 2 / 3),
        # right content, not the exact text: capped
        (" a:3, b:2, c:1", NEAR_MISS_CAP),
        (" a:03 b:2 c:1", NEAR_MISS_CAP),
        # duplicated letter counts once (the first, a:3): content 1.0 but not exact -> cap
        (" a:3 a:1 b:2 c:1", NEAR_MISS_CAP),
        # duplicated letter whose first occurrence is wrong: pred {a:1, b:2, c:1}, tp=2, F1 = 4/6
        (" a:1 a:3 b:2 c:1", 2 / 3),
    ],
)
def test_count_summary_score(output: str, expected: float) -> None:
    assert get_task("count-summary").score(CS_PROMPT, output) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (" 5 17 42 93", 1.0),
        ("5 17 42 93 ", 1.0),
        ("", 0.0),
        ("no numbers here", 0.0),
        (" 1 2 3 4", 0.0),  # no common number: LCS 0
        (" 5 42 17 93", 3 / 4),  # LCS 3 (5 17 93) / max(4, 4)
        (" 5 17 42", 3 / 4),  # LCS 3 / max(4, 3)
        (" 5 17 42 93 93", 4 / 5),  # LCS 4 / max(4, 5)
        (" 93 42 17 5", 1 / 4),  # reversed: LCS 1
        (" 5 17 43 93", 3 / 4),  # one number off by one
        (" 5, 17, 42, 93", NEAR_MISS_CAP),  # right numbers, not the exact text
        (" 05 17 42 93", NEAR_MISS_CAP),
    ],
)
def test_sort_numbers_score(output: str, expected: float) -> None:
    assert get_task("sort-numbers").score(SN_PROMPT, output) == pytest.approx(expected)


def test_corrupt_hand_cases() -> None:
    cs, sn = get_task("count-summary"), get_task("sort-numbers")
    for seed in range(50):
        bad = cs.corrupt(CS_PROMPT, " a:3 b:2 c:1", random.Random(seed))
        # off by one -> tp=2 of 3 -> 2/3; dropped pair -> F1 = 2*2/(2+3) = 0.8
        assert cs.score(CS_PROMPT, bad) in (pytest.approx(2 / 3), pytest.approx(0.8))
        assert ":0" not in bad
        bad = sn.corrupt(SN_PROMPT, " 5 17 42 93", random.Random(seed))
        assert sn.score(SN_PROMPT, bad) == pytest.approx(3 / 4)  # swap or +-1: LCS 3 of 4


@pytest.mark.parametrize("name", sorted(TASKS))
def test_gold_scores_one_and_corrupt_is_close_but_wrong(name: str) -> None:
    task = get_task(name)
    rng = random.Random(0)
    for _ in range(500):
        prompt = task.make_prompt(rng)
        gold = task.solve(prompt)
        assert gold.startswith(" ")
        assert task.score(prompt, gold) == 1.0
        bad = task.corrupt(prompt, gold, rng)
        assert bad != gold
        assert bad.startswith(" ")
        assert 0.0 < task.score(prompt, bad) < 1.0


def test_count_summary_prompt_shape() -> None:
    task = get_task("count-summary")
    rng = random.Random(1)
    n_pairs = set()
    for _ in range(500):
        prompt = task.make_prompt(rng)
        letters = prompt.removeprefix("count: ").removesuffix("\nsummary:").split(" ")
        assert 6 <= len(letters) <= 14
        assert set(letters) <= set("abcdefgh")
        n_pairs.add(len(set(letters)))
    assert min(n_pairs) == 2 and max(n_pairs) >= 7


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize(
    "output",
    [
        "",
        " ",
        "a:",
        ":3",
        "zz:99",
        "a:3:4 b::2",
        "🙂 ünïcödé a:３ 日本語",
        "\x00\n\t",
        "9" * 10_000,
        "a:" + "9" * 10_000,
        " a:3 b:2" * 20_000,
        "1 " * 50_000,
    ],
)
def test_score_never_raises(name: str, output: str) -> None:
    task = get_task(name)
    prompt = task.make_prompt(random.Random(3))
    assert 0.0 <= task.score(prompt, output) < 1.0


def test_get_task_unknown_name_suggests() -> None:
    with pytest.raises(ValueError, match="count-sumary") as info:
        get_task("count-sumary")
    assert "Did you mean 'count-summary'" in str(info.value)
    assert "sort-numbers" in str(info.value)


def test_generate_splits_shapes_and_uniqueness() -> None:
    sizes = {"sft": 200, "val": 30, "distill": 150, "test": 40}
    splits = generate_splits("count-summary", sizes, corrupt_frac=0.25, seed=7)
    assert set(splits) == set(sizes)
    assert {k: len(v) for k, v in splits.items()} == sizes
    rows = [row for split in splits.values() for row in split]
    assert len({row["id"] for row in rows}) == len(rows)
    assert len({row["prompt"] for row in rows}) == len(rows)
    assert splits["test"][3]["id"] == "count-summary-test-00003"
    task = get_task("count-summary")
    for row in splits["distill"]:
        assert set(row) == {"id", "prompt"}
    for name in ("sft", "val", "test"):
        flagged = [row for row in splits[name] if row["meta"]["corrupted"]]
        assert len(flagged) == round(0.25 * sizes[name])
        for row in splits[name]:
            assert set(row) == {"id", "prompt", "target", "meta"}
            assert (task.score(row["prompt"], row["target"]) < 1.0) == row["meta"]["corrupted"]


@pytest.mark.parametrize("frac", [0.0, 0.5, 1.0])
def test_generate_splits_corrupted_count(frac: float) -> None:
    splits = generate_splits("sort-numbers", {"sft": 11, "test": 5}, corrupt_frac=frac, seed=1)
    for name, n in (("sft", 11), ("test", 5)):
        assert sum(row["meta"]["corrupted"] for row in splits[name]) == round(frac * n)


def test_generate_splits_deterministic() -> None:
    sizes = {"sft": 50, "val": 10, "distill": 20, "test": 10}
    a = generate_splits("sort-numbers", sizes, 0.3, seed=5)
    assert a == generate_splits("sort-numbers", sizes, 0.3, seed=5)
    assert a != generate_splits("sort-numbers", sizes, 0.3, seed=6)
    # the corruption fraction does not change which prompts are drawn
    b = generate_splits("sort-numbers", sizes, 0.0, seed=5)
    assert [r["prompt"] for r in a["test"]] == [r["prompt"] for r in b["test"]]
    # test prompts stay the same when the training sets grow
    c = generate_splits("sort-numbers", {**sizes, "sft": 80, "distill": 0}, 0.3, seed=5)
    assert [r["prompt"] for r in a["test"]] == [r["prompt"] for r in c["test"]]


def test_generate_splits_subset_and_empty() -> None:
    splits = generate_splits("count-summary", {"distill": 3, "val": 0}, 0.5, seed=0)
    assert set(splits) == {"distill", "val"}
    assert splits["val"] == [] and len(splits["distill"]) == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "sort-number"}, "Did you mean 'sort-numbers'"),
        ({"sizes": {"train": 3}}, "unknown split"),
        ({"sizes": {"sft": -1}}, "non-negative"),
        ({"sizes": {"sft": 2.5}}, "non-negative integer"),
        ({"corrupt_frac": 1.5}, "corrupt_frac"),
        ({"corrupt_frac": -0.1}, "corrupt_frac"),
        ({"corrupt_frac": float("nan")}, "corrupt_frac"),
    ],
)
def test_generate_splits_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"task": "count-summary", "sizes": {"sft": 3}, "corrupt_frac": 0.1, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate_splits(**args)


def test_generate_splits_input_space_too_small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TASKS, "tiny", TinyTask())
    assert len(generate_splits("tiny", {"sft": 2, "test": 1}, 0.0, seed=0)["sft"]) == 2
    with pytest.raises(ValueError, match="input space is too small"):
        generate_splits("tiny", {"sft": 3, "test": 1}, 0.0, seed=0)
