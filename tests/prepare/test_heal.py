"""`plad heal` (plad.prepare.heal): texts packed into rows by hand, a pruned model healed (held-out NLL down) by
LM or KD training through plad's training loop, heal.json, and --resume of a finished heal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import Bench, main_inprocess, read_jsonl

from plad.core.methods import Item
from plad.prepare.heal import pack, text_items
from plad.utils.errors import DataError
from plad.utils.io import write_jsonl_atomic


def test_pack_by_hand():
    # the stream 1 2 3 EOS 4 5 EOS (EOS = 0), cut into rows of 3: [1 2 3] [0 4 5] [0]; a row's first token is its
    # prompt, and a row of one token predicts nothing, so it is dropped
    assert pack([[1, 2, 3], [4, 5]], 0, 3) == [Item([1], [2, 3]), Item([0], [4, 5])]
    # rows of 4: [1 2 3 0] [4 5 0]
    assert pack([[1, 2, 3], [4, 5]], 0, 4) == [Item([1], [2, 3, 0]), Item([4], [5, 0])]
    # one long text: every token predicted except each row's first
    assert pack([list(range(1, 8))], 9, 2) == [Item([1], [2]), Item([3], [4]), Item([5], [6]), Item([7], [9])]


class WordTok:
    """A tokenizer of one id per word (enough for text_items)."""

    def __call__(self, text: str, add_special_tokens: bool = True):
        return type("Enc", (), {"input_ids": [len(w) for w in text.split()]})()


def test_text_items_and_its_errors(tmp_path):
    path = tmp_path / "texts.jsonl"
    write_jsonl_atomic(path, [{"text": "a bb ccc"}, {"text": "  "}, {"text": "dddd"}])
    assert text_items(str(path), "text", WordTok()) == [
        [1, 2, 3],
        [4],
    ]  # blank texts skipped, file order kept
    write_jsonl_atomic(path, [{"text": "a"}, {"id": 1, "body": "b"}])
    with pytest.raises(DataError, match=r"texts.jsonl:2: field 'text' must be text \(has id, body\)"):
        text_items(str(path), "text", WordTok())
    write_jsonl_atomic(path, [{"text": ""}])
    with pytest.raises(DataError, match="no text in field 'text'"):
        text_items(str(path), "text", WordTok())
    with pytest.raises(DataError, match="text_file .*missing.jsonl does not exist"):
        text_items(str(tmp_path / "missing.jsonl"), "text", WordTok())


# --------------------------------------------------------------------------------------------------------------
# Healing a pruned model


@pytest.fixture(scope="module")
def parts(tmp_path_factory, bench: Bench) -> dict[str, Path]:
    """A 4-layer tiny Llama (the "teacher"), a 2-layer model pruned from it, and 40 texts of the bench's task."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from plad.config import PruneConfig
    from plad.prepare.prune import run_prune

    root = tmp_path_factory.mktemp("heal")
    tok = AutoTokenizer.from_pretrained(bench.tokenizer)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        max_position_embeddings=64, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    run_prune(
        PruneConfig(model=str(root / "teacher"), output_dir=str(root / "pruned"), keep_layers=["0", "3"])
    )
    rows = read_jsonl(bench.sft)[:40]
    write_jsonl_atomic(root / "texts.jsonl", [{"text": r["prompt"] + r["target"]} for r in rows])
    return {
        "root": root,
        "teacher": root / "teacher",
        "pruned": root / "pruned",
        "texts": root / "texts.jsonl",
    }


def heal_args(parts: dict, out: Path, *extra: object) -> list:
    return [
        "heal", "--model", parts["pruned"], "--text_file", parts["texts"], "--output_dir", out,
        "--max_tokens", 32, "--val_texts", 4, "--train.max_steps", 8, "--train.batch_size", 4, "--train.lr", 3e-3,
        "--threads", 1, *extra,
    ]  # fmt: skip


def test_heal_lm_lowers_heldout_nll_and_resume_of_a_finished_heal(parts, tmp_path, capsys, monkeypatch):
    from transformers import AutoTokenizer

    out = tmp_path / "healed"
    assert main_inprocess(*heal_args(parts, out)) == 0
    info = json.loads((out / "heal.json").read_text())
    assert json.loads(capsys.readouterr().out) == info
    assert info["heldout_nll_after"] < info["heldout_nll_before"]
    assert info["objective"] == "lm" and info["method"] == "sft" and info["steps"] == 8
    assert info["heldout_texts"] == 4 and info["train_texts"] == 36
    card = (out / "README.md").read_text()  # the model card, with what healing did
    assert "- plad\n- heal\n- heal-lm\n" in card
    assert f"held-out NLL {info['heldout_nll_before']} before, {info['heldout_nll_after']} after" in card
    # the 36 training texts joined by EOS into one stream, cut into rows of 32: each row's first token only a prompt
    tok = AutoTokenizer.from_pretrained(parts["pruned"])
    texts = [r["text"] for r in read_jsonl(parts["texts"])[:36]]
    stream = sum(len(tok(t, add_special_tokens=False).input_ids) + 1 for t in texts)
    last_alone = stream % 32 == 1  # a last row of one token predicts nothing: dropped
    rows = -(-stream // 32) - last_alone
    assert info["train_rows"] == rows and info["tokens_per_epoch"] == stream - last_alone - rows
    assert "teacher_heldout_nll" not in info

    # --resume of the finished heal: the summary back, no model loaded, nothing trained or written
    import plad.prepare.heal as heal_module

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded to resume a finished heal")

    monkeypatch.setattr(heal_module, "load_model_and_tokenizer", no_model)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main_inprocess(*heal_args(parts, out, "--resume")) == 0
    assert json.loads(capsys.readouterr().out) == info
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # without --resume: refused, the heal is kept
    assert main_inprocess(*heal_args(parts, out)) == 2
    assert "already holds a training run; pass --resume" in capsys.readouterr().err
    # --resume with other settings: refused
    assert main_inprocess(*heal_args(parts, out, "--resume", "--train.lr", 1e-3)) == 2
    assert "was made with a different config" in capsys.readouterr().err


def test_heal_kd_from_the_teacher(parts, tmp_path, capsys):
    out = tmp_path / "kd"
    args = heal_args(parts, out, "--objective", "kd", "--teacher", parts["teacher"], "--train.max_steps", 3)
    assert main_inprocess(*args) == 0
    info = json.loads((out / "heal.json").read_text())
    assert info["objective"] == "kd" and info["method"] == "kd" and info["steps"] == 3
    assert info["teacher_heldout_nll"] > 0
    # the objective: forward KL(teacher || student) per token on the held-out texts, down (the teacher is random,
    # so its NLL says nothing)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(parts["teacher"])
    texts = [r["text"] for r in read_jsonl(parts["texts"])[-4:]]

    def kl_to_teacher(student_dir: Path) -> float:
        models = [AutoModelForCausalLM.from_pretrained(d).eval() for d in (parts["teacher"], student_dir)]
        total = n = 0.0
        with torch.no_grad():
            for text in texts:
                ids = torch.tensor([tok(text, add_special_tokens=False).input_ids])
                t, s = (torch.log_softmax(m(ids).logits[0], -1) for m in models)
                total += float((t.exp() * (t - s)).sum())
                n += ids.shape[1]
        return total / n

    assert kl_to_teacher(out) < kl_to_teacher(parts["pruned"])


def test_heal_with_lora_trains_adapters_and_measures_the_merged_model(parts, tmp_path, capsys):
    """`plad heal --lora.r 4`: adapters over the pruned model, the merged folder at OUTPUT (what prepare's later
    stages load) and the held-out NLL after healing measured on it (not on the base alone)."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    assert main_inprocess(*heal_args(parts, out, "--lora.r", 4, "--train.lr", 1e-2)) == 0
    info = json.loads(capsys.readouterr().out)
    assert info == json.loads((out / "heal.json").read_text()) and info["steps"] == 8
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(parts["pruned"])
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert changed and all("proj" in k for k in changed)  # only the adapted projections moved
    assert info["heldout_nll_after"] < info["heldout_nll_before"]
