"""Bad input gets a clear error naming the file, the row and the field, before any model is loaded or any file
is written (README, "Interrupts, a full disk, two processes, exit codes"); JSONL IO survives torn writes; models
and tokenizers are checked on load."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from plad.config import DataOptions
from plad.core.batching import Truncation, encode_output, encode_prompt, format_prompt
from plad.core.data import load_examples, load_pairs
from plad.core.models import load_causal_lm, load_model_and_tokenizer, load_tokenizer
from plad.utils.errors import ConfigError, DataError, ModelError
from plad.utils.io import append_jsonl, read_jsonl, repair_torn_tail, write_jsonl_atomic

WORDS = [*"abcdefghijklmnopqrstuvwxyz", "count:", "summary:"]


def make_tokenizer(eos: bool = True, pad: bool = True):
    """A whitespace word-level fast tokenizer: one token per word, so token counts are known by hand."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "<pad>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    kwargs = {"unk_token": "<unk>"}
    if eos:
        kwargs["eos_token"] = "<eos>"
    if pad:
        kwargs["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tok):
    """A randomly initialised tiny Llama + its tokenizer, saved like a user's checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def write_lines(path: Path, lines: list[str | dict], end: str = "\n") -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + end)
    return path


GOOD = [
    {"id": "a", "prompt": "count: a b", "target": "a b"},
    {"id": "b", "prompt": "count: c", "target": "c"},
]


# ----------------------------------------------------------------------------------------------------------------
# JSONL reading and writing


def test_read_jsonl_malformed_line_names_file_and_line(tmp_path):
    p = write_lines(tmp_path / "d.jsonl", [GOOD[0], "", '{"id": "x", "prompt": ', GOOD[1]])
    with pytest.raises(DataError, match=rf"{p}:3: not valid JSON"):
        read_jsonl(p)


def test_read_jsonl_non_object_line(tmp_path):
    p = write_lines(tmp_path / "d.jsonl", [GOOD[0], "[1, 2]"])
    with pytest.raises(DataError, match=rf"{p}:2: each line must be a JSON object, got list"):
        read_jsonl(p)


def test_read_jsonl_tolerates_only_an_unterminated_last_line(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text(json.dumps(GOOD[0]) + "\n" + json.dumps(GOOD[1]) + "\n" + '{"id": "c", "pro')
    assert read_jsonl(p, tolerate_torn_tail=True) == GOOD
    with pytest.raises(DataError, match=rf"{p}:3"):
        read_jsonl(p)  # without the flag a torn line is an error like any other
    # A torn multi-byte character is torn too.
    p.write_bytes(json.dumps(GOOD[0]).encode() + b'\n{"id": "\xc3')
    assert read_jsonl(p, tolerate_torn_tail=True) == [GOOD[0]]
    # A bad line that *was* terminated is corruption, not a torn append: still an error.
    p.write_text(json.dumps(GOOD[0]) + "\n{oops\n")
    with pytest.raises(DataError, match=rf"{p}:2"):
        read_jsonl(p, tolerate_torn_tail=True)
    # ... and so is a bad line in the middle.
    p.write_text("{oops\n" + json.dumps(GOOD[0]))
    with pytest.raises(DataError, match=rf"{p}:1"):
        read_jsonl(p, tolerate_torn_tail=True)


def test_repair_torn_tail(tmp_path):
    p = tmp_path / "s.jsonl"
    head = json.dumps(GOOD[0]) + "\n"
    torn = '{"id": "c", "pro'
    p.write_text(head + torn)
    assert repair_torn_tail(p) == len(torn.encode())
    assert p.read_text() == head
    assert repair_torn_tail(p) == 0 and p.read_text() == head  # a clean file is left alone
    append_jsonl(p, [GOOD[1]])  # the next append starts on a clean line
    assert read_jsonl(p) == GOOD
    assert repair_torn_tail(tmp_path / "missing.jsonl") == 0
    (tmp_path / "empty.jsonl").write_text("")
    assert repair_torn_tail(tmp_path / "empty.jsonl") == 0
    only_torn = tmp_path / "only.jsonl"
    only_torn.write_text(torn)
    assert repair_torn_tail(only_torn) == len(torn) and only_torn.read_bytes() == b""


def test_append_and_atomic_write_round_trip(tmp_path):
    rows = [{"id": 1, "text": "héllo ✓"}, {"id": 2, "nested": {"a": [1, 2]}}]
    p = tmp_path / "a.jsonl"
    append_jsonl(p, rows[:1])
    append_jsonl(p, rows[1:])
    append_jsonl(p, [])  # nothing to add: no empty line
    assert read_jsonl(p) == rows
    assert p.read_text(encoding="utf-8").count("\n") == 2 and "héllo ✓" in p.read_text(encoding="utf-8")
    q = tmp_path / "sub" / "w.jsonl"
    write_jsonl_atomic(q, rows)
    assert read_jsonl(q) == rows
    write_jsonl_atomic(q, rows[1:])  # replaced, not appended
    assert read_jsonl(q) == rows[1:]
    assert [x.name for x in q.parent.iterdir()] == ["w.jsonl"]  # no temp file left behind


# ----------------------------------------------------------------------------------------------------------------
# loading examples


def test_load_examples_good_file_and_column_map(tmp_path):
    p = write_lines(tmp_path / "d.jsonl", [{"q": "count: a", "a": "a"}, {"q": "count: b", "a": "b"}])
    opts = DataOptions(prompt_field="q", target_field="a")
    exs = load_examples(str(p), opts, need_target=True)
    assert [(e.id, e.prompt, e.target) for e in exs] == [("0", "count: a", "a"), ("1", "count: b", "b")]


def test_load_examples_missing_prompt_names_field_and_row(tmp_path):
    p = write_lines(tmp_path / "d.jsonl", [GOOD[0], {"id": "b", "question": "x", "target": "y"}])
    with pytest.raises(DataError) as e:
        load_examples(str(p), DataOptions(), need_target=False)
    msg = str(e.value)
    assert f"{p}:2" in msg and "missing prompt field 'prompt'" in msg and "question" in msg
    assert "data.prompt_field" in msg  # says what to change


def test_load_examples_empty(tmp_path):
    for text in ("", "\n\n  \n"):
        p = tmp_path / "e.jsonl"
        p.write_text(text)
        with pytest.raises(DataError, match=rf"{p}: the training data is empty"):
            load_examples(str(p), DataOptions(), need_target=True, what="training data")
    with pytest.raises(DataError, match="does not exist"):
        load_examples(str(tmp_path / "nope.jsonl"), DataOptions(), need_target=True)


def test_load_examples_missing_target_only_when_needed(tmp_path):
    p = write_lines(
        tmp_path / "d.jsonl", [GOOD[0], {"id": "b", "prompt": "count: c"}, {"id": "c", "prompt": "x"}]
    )
    with pytest.raises(DataError, match=rf"{p}:2: missing or empty target field 'target'"):
        load_examples(str(p), DataOptions(), need_target=True)
    exs = load_examples(str(p), DataOptions(), need_target=False)  # prompts-only data is fine for pairs
    assert [e.target for e in exs] == ["a b", None, None]
    q = write_lines(tmp_path / "blank.jsonl", [{"id": "b", "prompt": "count: c", "target": "  "}])
    with pytest.raises(DataError, match=rf"{q}:1: missing or empty target"):
        load_examples(str(q), DataOptions(), need_target=True)


def test_load_examples_duplicate_ids(tmp_path):
    rows = [GOOD[0], GOOD[1], {"id": "a", "prompt": "count: z", "target": "z"}]
    p = write_lines(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=rf"{p}:3: duplicate id 'a' in field 'id'"):
        load_examples(str(p), DataOptions(), need_target=True)


@pytest.mark.parametrize(
    "prompt",
    [
        [{"role": "user"}],  # no content
        [{"role": "user", "content": "hi"}, "and then"],  # a bare string among messages
        "   ",
        5,
        {"role": "user", "content": "hi"},  # one message, not a list
    ],
)
def test_load_examples_bad_prompts(tmp_path, prompt):
    p = write_lines(tmp_path / "d.jsonl", [GOOD[0], {"id": "x", "prompt": prompt, "target": "t"}])
    with pytest.raises(DataError, match=rf"{p}:2: field 'prompt' must be"):
        load_examples(str(p), DataOptions(), need_target=True)


def test_chat_prompts(tmp_path, tok):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "count: a"}]
    p = write_lines(tmp_path / "d.jsonl", [{"id": "c", "prompt": msgs, "target": "a"}])
    (ex,) = load_examples(str(p), DataOptions(), need_target=True)
    assert ex.prompt == msgs
    with pytest.raises(DataError, match="no chat template"):
        format_prompt(tok, msgs)  # this tokenizer has none
    chat_tok = make_tokenizer()
    chat_tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}summary:"
    assert format_prompt(chat_tok, msgs) == "be brief count: a summary:"
    assert format_prompt(tok, "count: a") == "count: a"


def test_load_pairs_validation(tmp_path):
    pair = {"id": "1", "prompt": "p", "chosen": "c", "rejected": "r"}
    p = write_lines(tmp_path / "pairs.jsonl", [pair, {k: v for k, v in pair.items() if k != "rejected"}])
    with pytest.raises(DataError, match=rf"{p}:2: missing field 'rejected'"):
        load_pairs(str(p))
    q = write_lines(
        tmp_path / "p2.jsonl", [{**pair, "scores": {"chosen": 1.0, "rejected": 0.5}}, {**pair, "id": "2"}]
    )
    assert len(load_pairs(str(q))) == 2
    with pytest.raises(DataError, match=rf"{q}:2: this method needs scores.*--scorer teacher-logp"):
        load_pairs(str(q), need_scores=True)
    with pytest.raises(DataError, match="run `plad pairs` first"):
        load_pairs(str(tmp_path / "none.jsonl"))


def test_load_pairs_repeated_and_conflicting_rows(tmp_path, caplog):
    """A row repeated exactly (e.g. a file appended to itself) is used once, with a warning naming its lines;
    one id with two different contents is an error naming both lines (distill once trained on 161 of 160 pairs)."""
    pairs = [{"id": str(i), "prompt": f"p{i}", "chosen": "c", "rejected": "r"} for i in range(3)]
    p = write_lines(tmp_path / "pairs.jsonl", [*pairs, pairs[1], pairs[2]])
    with caplog.at_level(logging.WARNING, logger="plad"):
        rows = load_pairs(str(p))
    assert rows == pairs
    assert "2 rows repeat an earlier row exactly (lines 4, 5)" in caplog.text
    q = write_lines(tmp_path / "joined.jsonl", [*pairs, {**pairs[1], "chosen": "other"}])
    with pytest.raises(DataError, match=rf"{q}:4: pair id '1' already used on line 2 with other content"):
        load_pairs(str(q))


# ----------------------------------------------------------------------------------------------------------------
# length limits


def test_encode_prompt_overlong(tok):
    text = "count: a b c d"  # 5 words -> 5 tokens
    ids = tok(text).input_ids
    assert len(ids) == 5
    stats = Truncation()
    kept = encode_prompt(tok, text, DataOptions(max_prompt_tokens=3), stats, "f.jsonl id 7")
    assert kept == ids[-3:] == tok("b c d").input_ids  # the end of the prompt is kept
    assert stats.prompts == 1
    assert encode_prompt(tok, text, DataOptions(max_prompt_tokens=5), stats, "x") == ids  # at the limit: kept
    assert stats.prompts == 1
    opts = DataOptions(max_prompt_tokens=3, overlong="error")
    with pytest.raises(
        DataError, match=r"f\.jsonl id 7: prompt has 5 tokens, over data\.max_prompt_tokens=3"
    ):
        encode_prompt(tok, text, opts, Truncation(), "f.jsonl id 7")


def test_encode_output_overlong_keeps_start_and_eos(tok):
    stats = Truncation()
    ids = encode_output(tok, "a b c", DataOptions(max_target_tokens=8), stats)
    assert ids == [*tok("a b c").input_ids, tok.eos_token_id] and stats.targets == 0
    assert encode_output(tok, "a b c", DataOptions(max_target_tokens=2), stats) == tok("a b").input_ids
    assert stats.targets == 1
    with pytest.raises(DataError, match=r"id 3: output has 4 tokens, over data\.max_target_tokens=3"):
        encode_output(tok, "a b c", DataOptions(max_target_tokens=3, overlong="error"), Truncation(), "id 3")


def test_stage_encoding_names_the_overlong_row(tmp_path, tok):
    from plad.train.stages import encode_targets

    p = write_lines(
        tmp_path / "d.jsonl", [GOOD[0], {"id": "long", "prompt": "count: a b c d e f", "target": "a"}]
    )
    opts = DataOptions(max_prompt_tokens=4, overlong="error")
    exs = load_examples(str(p), opts, need_target=True)
    with pytest.raises(DataError, match=rf"{p} id long: prompt has 7 tokens"):
        encode_targets(exs, tok, opts, str(p))
    items = encode_targets(exs, tok, DataOptions(max_prompt_tokens=4), str(p))
    assert items[1].prompt == tok("c d e f").input_ids and items[0].prompt == tok("count: a b").input_ids


# ----------------------------------------------------------------------------------------------------------------
# models and tokenizers


def test_load_causal_lm_missing_folder(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_causal_lm(str(tmp_path / "nothing-here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="empty is empty; give a folder that a model was saved to"):
        load_causal_lm(str(tmp_path / "empty"))
    (tmp_path / "empty" / "README.md").write_text("a model card, no model")
    with pytest.raises(ModelError, match="config.json"):
        load_causal_lm(str(tmp_path / "empty"))


def test_load_causal_lm_rejects_non_causal_model(tmp_path):
    from transformers import DistilBertConfig, DistilBertModel

    cfg = DistilBertConfig(
        vocab_size=32, dim=16, hidden_dim=32, n_layers=1, n_heads=2, max_position_embeddings=16
    )
    DistilBertModel(cfg).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelError, match=r"distilbert.*not a language model that generates text"):
        load_causal_lm(str(tmp_path / "bert"))


def test_load_causal_lm_and_tokenizer_ok(tiny_model_dir):
    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    assert model.config.model_type == "llama" and tok.pad_token == "<pad>" and tok.eos_token == "<eos>"


def test_load_tokenizer_without_pad_falls_back_to_eos(tmp_path, caplog):
    make_tokenizer(pad=False).save_pretrained(tmp_path / "nopad")
    with caplog.at_level(logging.WARNING, logger="plad"):
        t = load_tokenizer(str(tmp_path / "nopad"))
    assert t.pad_token_id == t.eos_token_id == 0
    assert any("no pad token" in r.getMessage() and "<eos>" in r.getMessage() for r in caplog.records)


def test_load_tokenizer_without_eos_fails(tmp_path):
    make_tokenizer(eos=False).save_pretrained(tmp_path / "noeos")
    with pytest.raises(ModelError, match=r"has no EOS token.*eos_token"):
        load_tokenizer(str(tmp_path / "noeos"))
    with pytest.raises(ModelError, match="tokenizer folder .*none does not exist"):
        load_tokenizer(str(tmp_path / "none"))
    with pytest.raises(
        ModelError, match="^model folder .*none does not exist"
    ):  # read from the model's folder
        load_model_and_tokenizer(str(tmp_path / "none"))


def test_tokenizer_bigger_than_model_vocab(tmp_path, tiny_model_dir):
    """A tokenizer with more tokens than the model embeds does not belong to it."""
    import shutil

    from transformers import AutoTokenizer

    big = AutoTokenizer.from_pretrained(tiny_model_dir)
    big.add_tokens([f"extra{i}" for i in range(10)])
    big.save_pretrained(tmp_path / "big")
    shutil.copytree(tiny_model_dir, tmp_path / "m", dirs_exist_ok=True)
    with pytest.raises(ModelError, match="do not belong together"):
        load_model_and_tokenizer(str(tmp_path / "m"), str(tmp_path / "big"))


# ----------------------------------------------------------------------------------------------------------------
# output folders


def _unwritable_dir(tmp_path: Path) -> Path:
    """A folder the test process cannot write to: chmod 0o500, or (as root, who ignores modes) a path under a
    regular file, which can never be created."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if not os.access(locked, os.W_OK):
        return locked / "out"
    locked.chmod(0o700)
    (tmp_path / "afile").write_text("not a folder")
    return tmp_path / "afile" / "out"


def test_check_output_dir_not_writable(tmp_path):
    from plad.utils.outputs import check_output_dir

    out = _unwritable_dir(tmp_path)
    try:
        with pytest.raises(ConfigError, match=rf"output_dir {out} is not writable"):
            check_output_dir(out, resume=False)
    finally:
        (tmp_path / "locked").chmod(0o700)


def test_check_output_dir_refuses_a_previous_run(tmp_path):
    from plad.utils.outputs import SUMMARY_FILE, check_output_dir

    check_output_dir(tmp_path / "fresh", resume=False)  # creates it
    assert (tmp_path / "fresh").is_dir() and not any((tmp_path / "fresh").iterdir())
    ckpt = tmp_path / "ckpt" / "checkpoints" / "step-0000002"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a training run; pass --resume"):
        check_output_dir(tmp_path / "ckpt", resume=False)
    check_output_dir(tmp_path / "ckpt", resume=True)
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / SUMMARY_FILE).write_text("{}")
    with pytest.raises(ConfigError, match="already holds a training run"):
        check_output_dir(tmp_path / "done", resume=False)


def test_sft_cli_unwritable_output_dir(tmp_path, capsys):
    from plad.cli import main

    train = write_lines(tmp_path / "train.jsonl", GOOD)
    out = _unwritable_dir(tmp_path)
    try:
        rc = main(
            [
                "-q",
                "sft",
                "--model",
                str(tmp_path / "no-model"),
                "--train_file",
                str(train),
                "--output_dir",
                str(out),
            ]
        )
    finally:
        (tmp_path / "locked").chmod(0o700)
    assert rc == 2
    assert "is not writable" in capsys.readouterr().err


def test_second_sft_into_finished_output_dir_is_refused(tmp_path, tiny_model_dir, capsys):
    """A finished run is never overwritten by accident: without --resume the second `plad sft` stops before
    loading the model, and the first run's files are untouched."""
    from plad.cli import main

    train = write_lines(tmp_path / "train.jsonl", GOOD)
    out = tmp_path / "sft"
    args = ["-q", "sft", "--model", str(tiny_model_dir), "--train_file", str(train), "--output_dir", str(out)]
    assert (
        main([*args, "--train.max_steps", "1", "--train.batch_size", "2", "--train.warmup_steps", "0"]) == 0
    )
    capsys.readouterr()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert "train_summary.json" in before and "model.safetensors" in before
    assert main([*args, "--train.max_steps", "1"]) == 2
    err = capsys.readouterr().err
    assert f"output_dir {out} already holds a training run" in err and "--resume" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
