"""`plad pairs --export DIR`: the pairs store as a `datasets` data set in TRL's preference columns (README, "What
the stages write"), through the real CLI in this process. The stores are written by hand in the row format of
pairs.jsonl (generation/pairs.py `_pair_row`), so no model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import main_inprocess

FPS = {"teacher": "t0", "student": "s0"}


def pair(i: int, prompt: object, scores: bool = True, logps: bool = True) -> dict:
    row = {
        "id": f"q{i}#{i % 2}",
        "prompt_id": f"q{i}",
        "prompt": prompt,
        "chosen": f"teacher says {i}",
        "rejected": f"student says {i}",
        "chosen_from": "models/teacher",
        "rejected_from": "models/student",
        "meta": {
            "sample_index": i % 2,
            "chosen_side": "teacher",
            "rejected_side": "student",
            "chosen_finish": "eos",
            "rejected_finish": "length",
            "chosen_seed": 1,
            "rejected_seed": 2,
            "ranked_by": None,
            "fingerprints": FPS,
        },
    }
    if scores:
        row["scores"] = {"chosen": 0.5 + i, "rejected": 0.25 * i, "scorer": "count-summary"}
    if logps:
        row["teacher_logps"] = {
            "chosen": -1.5 * i,
            "rejected": -3.0 * i,
            "chosen_tokens": 4 + i,
            "rejected_tokens": 6,
            "model": "models/teacher",
        }
    return row


def store(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def export(st: Path, dest: Path) -> int:
    return main_inprocess("-q", "pairs", "--output_dir", st, "--export", dest)


def test_text_prompts_export_in_trl_standard_format(tmp_path: Path, capsys) -> None:
    from datasets import Value, load_from_disk

    rows = [pair(i, f"count: {'a ' * i}\nsummary:") for i in range(3)]
    st = store(tmp_path / "store", rows)
    capsys.readouterr()
    assert export(st, tmp_path / "ds") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows"] == 3 and printed["format"] == "standard"
    ds = load_from_disk(str(tmp_path / "ds"))
    # TRL's standard preference format: the three columns, each a string (DPOTrainer's documented input)
    assert ds.column_names[:3] == ["prompt", "chosen", "rejected"]
    for column in ("prompt", "chosen", "rejected"):
        assert ds.features[column] == Value("string")
    assert ds["prompt"] == [r["prompt"] for r in rows]
    assert ds["chosen"] == [r["chosen"] for r in rows]
    assert ds["rejected"] == [r["rejected"] for r in rows]
    # plad's columns: ids, where each output came from, scores and the teacher's log-probs
    assert ds["id"] == [r["id"] for r in rows] and ds["prompt_id"] == ["q0", "q1", "q2"]
    assert ds["chosen_from"] == ["models/teacher"] * 3 and ds["rejected_side"] == ["student"] * 3
    assert ds["rejected_finish"] == ["length"] * 3 and ds["sample_index"] == [0, 1, 0]
    assert ds["score_chosen"] == [0.5, 1.5, 2.5] and ds["score_rejected"] == [0.0, 0.25, 0.5]
    assert ds["scorer"] == ["count-summary"] * 3
    assert ds["teacher_logp_chosen"] == [0.0, -1.5, -3.0] and ds["teacher_tokens_chosen"] == [4, 5, 6]
    assert "plad pairs export" in ds.info.description


def test_chat_prompts_export_in_trl_conversational_format(tmp_path: Path) -> None:
    from datasets import load_from_disk

    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "count: a a"}]
    st = store(tmp_path / "store", [pair(0, chat, scores=False, logps=False)])
    assert export(st, tmp_path / "ds") == 0
    ds = load_from_disk(str(tmp_path / "ds"))
    row = ds[0]
    # TRL's conversational format: the prompt's messages, each output one assistant message
    assert row["prompt"] == chat
    assert row["chosen"] == [{"role": "assistant", "content": "teacher says 0"}]
    assert row["rejected"] == [{"role": "assistant", "content": "student says 0"}]
    assert "score_chosen" not in ds.column_names and "teacher_logp_chosen" not in ds.column_names


def test_pairs_with_and_without_scores_share_one_schema(tmp_path: Path) -> None:
    from datasets import load_from_disk

    st = store(tmp_path / "store", [pair(1, "p1", scores=False), pair(2, "p2")])
    assert export(st, tmp_path / "ds") == 0
    ds = load_from_disk(str(tmp_path / "ds"))
    assert ds["score_chosen"] == [None, 2.5]


def test_export_replaces_its_own_export_and_refuses_other_folders(tmp_path: Path, capsys) -> None:
    from datasets import load_from_disk

    st = store(tmp_path / "store", [pair(i, f"p{i}") for i in range(2)])
    dest = tmp_path / "ds"
    assert export(st, dest) == 0
    store(st, [pair(i, f"p{i}") for i in range(4)])  # more pairs later: the export is replaced
    assert export(st, dest) == 0
    assert load_from_disk(str(dest)).num_rows == 4
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert export(st, other) == 2
    err = capsys.readouterr().err
    assert f"--export {other} holds files that are not a plad pairs export" in err
    assert (other / "notes.txt").read_text() == "keep me" and len(list(other.iterdir())) == 1


@pytest.mark.parametrize(
    "rows, expected",
    [
        (None, "holds no pairs.jsonl; run `plad pairs` with it first"),
        (
            [pair(0, "text"), pair(1, [{"role": "user", "content": "hi"}])],
            "has a chat prompt, the first pair a text",
        ),
        ([{"id": "x", "prompt": "p", "chosen": "c"}], "missing field 'rejected'"),
    ],
    ids=["no-store", "mixed-prompts", "bad-row"],
)
def test_export_errors_are_one_line_and_write_nothing(tmp_path: Path, capsys, rows, expected) -> None:
    st = store(tmp_path / "store", rows) if rows is not None else tmp_path / "store"
    capsys.readouterr()
    assert export(st, tmp_path / "ds") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("plad pairs: error:") and expected in err[0], err
    assert not (tmp_path / "ds").exists()


def test_status_and_export_are_exclusive(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main_inprocess("pairs", "--output_dir", tmp_path, "--status", "--export", tmp_path / "ds")
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_trl_reads_both_formats_when_installed(tmp_path: Path) -> None:
    """TRL is not a dependency: with it installed (its DPOTrainer also trained a step on both exports by hand),
    its own format check tells the standard export from the conversational one."""
    data_utils = pytest.importorskip("trl.data_utils")
    from datasets import load_from_disk

    chat = [{"role": "user", "content": "count: a"}]
    for name, prompt, conversational in [("text", "count: a", False), ("chat", chat, True)]:
        assert export(store(tmp_path / name, [pair(0, prompt)]), tmp_path / f"ds-{name}") == 0
        row = load_from_disk(str(tmp_path / f"ds-{name}"))[0]
        assert data_utils.is_conversational(row) is conversational
