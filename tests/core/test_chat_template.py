"""What a real chat model needs from plad's encoding and generation (README, "Quickstart with real models":
prompts are text or chat messages), on tokenizers built here like the real ones and saved/loaded like a user's
checkpoint:
- ChatML (SmolLM2-Instruct, Qwen2.5-Instruct): <|im_end|> ends a turn and is the EOS; base Qwen's tokenizer has
  the same template with EOS <|endoftext|>;
- Llama-3: the template writes <|begin_of_text|> and the tokenizer adds it too; <|eot_id|> ends a turn, EOS is
  <|end_of_text|>;
- Gemma: the template writes <bos> and the tokenizer adds it too; <end_of_turn> ends a turn, EOS is <eos>.
Chat prompts get exactly one BOS; every training output of a chat prompt ends with the end-of-turn token, found in
the template itself; generation stops there (and at EOS) with the token not in the text; `stop` strings end a row
and cut its text, as the vllm and openai backends do.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import main_inprocess, read_jsonl

from plad.config import DataOptions, SamplingConfig
from plad.core.batching import (
    Truncation,
    encode_output,
    encode_prompt,
    encode_prompts,
    end_id,
    end_of_turn_id,
    stop_ids,
)
from plad.core.data import Example
from plad.core.models import load_model_and_tokenizer, load_tokenizer
from plad.generation.hf import generate, to_sample

WORDS = ["user", "assistant", "model", "system", "count:", "a", "b", "c", "be", "brief"]

# name -> special tokens (the first ones in the vocabulary, in this order), BOS, EOS, the tokenizer adds BOS,
# and the chat template (as the model's tokenizer_config.json has it, shortened)
KINDS = {
    "chatml": (
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"],
        None,
        "<|im_end|>",
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    ),
    "llama3": (
        [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<pad>",
        ],
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
    ),
    "gemma": (
        ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
        "<bos>",
        "<eos>",
        "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
        "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
    ),
}
# base Qwen: the ChatML template, EOS <|endoftext|>; a template that ends answers with no special token
KINDS["qwen-base"] = (KINDS["chatml"][0], None, "<|endoftext|>", KINDS["chatml"][3])
KINDS["plain"] = (
    ["<eos>", "<pad>"],
    None,
    "<eos>",
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant{% endif %}",
)


def build_tokenizer(kind: str, folder: Path):
    """A word-level fast tokenizer (one token per word, so ids are known by hand) with the special tokens,
    BOS post-processor and chat template of `kind`, saved and loaded back like a user's checkpoint."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials, bos, eos, template = KINDS[kind]
    vocab = {t: i for i, t in enumerate([*specials, *WORDS, "<unk>"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(specials)
    if bos:  # the tokenizer adds BOS itself, as Llama-3's and Gemma's do
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, vocab[bos])]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token="<pad>",
        unk_token="<unk>",
        chat_template=template,
    )
    fast.save_pretrained(str(folder))
    return load_tokenizer(str(folder))


@pytest.fixture(scope="module")
def toks(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("chat-tokenizers")
    return {kind: build_tokenizer(kind, root / kind) for kind in KINDS}


def ids(tok, text: str) -> list[int]:
    """Ids of space-separated token strings, by hand (the vocabulary, not the tokenizer's encoding)."""
    vocab = tok.get_vocab()
    return [vocab[t] for t in text.split()]


MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "count: a b"}]
OPTS = DataOptions()

# the prompt ids of MESSAGES, by hand: exactly one BOS where the template has one, none where it has none
PROMPTS = {
    "chatml": "<|im_start|> system be brief <|im_end|> <|im_start|> user count: a b <|im_end|> <|im_start|> assistant",
    "llama3": "<|begin_of_text|> <|start_header_id|> system <|end_header_id|> be brief <|eot_id|> "
    "<|start_header_id|> user <|end_header_id|> count: a b <|eot_id|> <|start_header_id|> assistant <|end_header_id|>",
    "gemma": "<bos> <start_of_turn> system be brief <end_of_turn> <start_of_turn> user count: a b <end_of_turn> "
    "<start_of_turn> model",
}
END_OF_TURN = {
    "chatml": "<|im_end|>",
    "qwen-base": "<|im_end|>",
    "llama3": "<|eot_id|>",
    "gemma": "<end_of_turn>",
    "plain": "<eos>",  # no special token after the answer: EOS
}


@pytest.mark.parametrize("kind", ["chatml", "llama3", "gemma"])
def test_chat_prompt_ids_by_hand_with_one_bos(toks: dict, kind: str) -> None:
    tok = toks[kind]
    got = encode_prompt(tok, MESSAGES, OPTS, Truncation())
    assert got == ids(tok, PROMPTS[kind])
    if tok.bos_token_id is not None:
        assert tok("a").input_ids[0] == tok.bos_token_id  # the tokenizer adds BOS itself ...
        assert (
            got.count(tok.bos_token_id) == 1 and got[0] == tok.bos_token_id
        )  # ... but not to the template's
    # raw text keeps the tokenizer's own special tokens (BOS where it adds one), as before
    want = ([tok.bos_token] if tok.bos_token_id is not None else []) + ["count:", "a"]
    assert encode_prompt(tok, "count: a", OPTS, Truncation()) == ids(tok, " ".join(want))
    examples = [Example("1", MESSAGES), Example("2", "count: a")]
    assert encode_prompts(tok, examples, OPTS, "f.jsonl") == [got, ids(tok, " ".join(want))]


@pytest.mark.parametrize("kind", ["chatml", "llama3", "gemma"])
def test_an_overlong_chat_prompt_loses_the_middle_of_its_longest_message(toks: dict, kind: str) -> None:
    """Cut to data.max_prompt_tokens inside the longest message: the template's headers, the system message and
    the generation prompt stay whole, and the message keeps its start ("count:") and its end ("c"); a text
    prompt keeps its end and its BOS. Both are counted as truncated."""
    tok = toks[kind]
    long = [MESSAGES[0], {"role": "user", "content": "count: " + "a b " * 40 + "c"}]
    full = encode_prompt(tok, long, OPTS, Truncation())
    stats, limit = Truncation(), len(full) - 30
    got = encode_prompt(tok, long, DataOptions(max_prompt_tokens=limit), stats)
    assert (
        stats.prompts == 1 and limit - 1 <= len(got) <= limit
    )  # characters, not tokens, are cut: one may be left
    head = full.index(ids(tok, "count:")[0])
    tail = full.index(ids(tok, "c")[0])
    assert got[: head + 1] == full[: head + 1] and got[-(len(full) - tail) :] == full[tail:]
    text = "count: " + "a b " * 40
    stats = Truncation()
    got = encode_prompt(tok, text, DataOptions(max_prompt_tokens=10), stats)
    want = encode_prompt(tok, text, OPTS, Truncation())
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    assert stats.prompts == 1 and got == bos + want[-(10 - len(bos)) :]


def test_a_text_prompt_for_a_chat_model_is_said_once(toks: dict, caplog: pytest.LogCaptureFixture) -> None:
    """A text prompt is used as it is, without the chat template: said once per tokenizer (a file may mix text
    and chat rows), never for chat messages, nor for a tokenizer without a template."""
    import copy

    tok = copy.deepcopy(toks["chatml"])  # a tokenizer not warned about by an earlier test
    with caplog.at_level("WARNING", logger="plad"):
        encode_prompt(tok, MESSAGES, OPTS, Truncation(), "f.jsonl id 1")
        assert not caplog.messages
        encode_prompt(tok, "count: a", OPTS, Truncation(), "f.jsonl id 2")
        encode_prompt(tok, "count: b", OPTS, Truncation(), "f.jsonl id 3")
        no_template = copy.deepcopy(toks["chatml"])
        no_template.chat_template = None
        encode_prompt(no_template, "count: a", OPTS, Truncation(), "f.jsonl id 4")
    assert len(caplog.messages) == 1 and caplog.messages[0].startswith("f.jsonl id 2: a text prompt for ")
    assert "without the template" in caplog.messages[0]


@pytest.mark.parametrize("kind", list(END_OF_TURN))
def test_end_of_turn_found_in_the_template(toks: dict, kind: str) -> None:
    tok = toks[kind]
    eot = tok.convert_tokens_to_ids(END_OF_TURN[kind])
    assert end_of_turn_id(tok) == eot
    assert end_id(tok, MESSAGES) == eot and end_id(tok, "count: a") == tok.eos_token_id
    assert stop_ids(tok) == ([tok.eos_token_id] if eot == tok.eos_token_id else [tok.eos_token_id, eot])
    # outputs of chat prompts end with the end-of-turn token, outputs of text prompts with EOS
    assert encode_output(tok, "a b", OPTS, Truncation(), "", MESSAGES) == ids(tok, f"a b {END_OF_TURN[kind]}")
    assert encode_output(tok, "a b", OPTS, Truncation(), "", "count: a b") == [
        *ids(tok, "a b"),
        tok.eos_token_id,
    ]


def test_end_of_turn_follows_the_template_and_falls_back_to_eos(tmp_path: Path, caplog) -> None:
    tok = build_tokenizer("llama3", tmp_path / "t")
    assert end_of_turn_id(tok) == tok.convert_tokens_to_ids("<|eot_id|>")
    tok.chat_template = KINDS["plain"][3]  # a changed template is read again, not taken from a cache
    assert end_of_turn_id(tok) == tok.eos_token_id
    tok.chat_template = "{{ raise_exception('only user messages') }}"
    with caplog.at_level(logging.WARNING, logger="plad"):
        assert end_of_turn_id(tok) == tok.eos_token_id
    assert "cannot render" in caplog.text
    tok.chat_template = None
    assert end_of_turn_id(tok) == tok.eos_token_id


def test_training_items_of_chat_prompts_end_with_end_of_turn(toks: dict, tmp_path: Path, monkeypatch) -> None:
    """sft / targets, seqkd (teacher outputs), pairs and lists, calibration: one encoding everywhere."""
    from plad.evaluation import calibration
    from plad.train.stages import encode_targets, list_items, pair_items

    tok = toks["llama3"]
    eot, eos = tok.convert_tokens_to_ids("<|eot_id|>"), tok.eos_token_id
    prompt = ids(tok, PROMPTS["llama3"])
    examples = [Example("1", MESSAGES, "a b"), Example("2", "count: a", "a")]
    (chat, text) = encode_targets(examples, tok, OPTS, "train.jsonl")
    assert (chat.prompt, chat.chosen) == (prompt, ids(tok, "a b <|eot_id|>"))
    assert text.prompt == ids(tok, "<|begin_of_text|> count: a") and text.chosen == [*ids(tok, "a"), eos]

    pairs = [
        {"id": f"1-{j}", "prompt_id": "1", "prompt": MESSAGES, "chosen": "a b", "rejected": r, "scores": s}
        for j, (r, s) in enumerate(
            [("c", {"chosen": 1, "rejected": 0}), ("b", {"chosen": 1, "rejected": 0.5})]
        )
    ]
    for it in pair_items(pairs, tok, OPTS, "pairs.jsonl", "pairs"):
        assert it.prompt == prompt and it.chosen[-1] == eot and it.rejected[-1] == eot
    (teacher,) = pair_items(pairs, tok, OPTS, "pairs.jsonl", "teacher")
    assert teacher.chosen == ids(tok, "a b <|eot_id|>")
    (ranked,) = list_items(pairs, tok, OPTS, "pairs.jsonl")
    assert ranked.prompt == prompt and [o[-1] for o in ranked.outputs] == [eot] * 3

    seen = {}

    def fake_score(model, pad_id, prompts, outputs, batch_size):
        seen.update(prompts=prompts, outputs=outputs)
        return [(-1.0, len(o)) for o in outputs]

    monkeypatch.setattr(calibration, "score_outputs", fake_score)
    calibration.calibration(None, tok, pairs[:1], OPTS, "cal.jsonl", n_resamples=100)
    assert seen["prompts"] == [prompt, prompt]
    assert seen["outputs"] == [ids(tok, "a b <|eot_id|>"), ids(tok, "c <|eot_id|>")]


# --------------------------------------------------------------------------------------------------------------
# generation


def bigram_model(tok, transitions: dict[str, str], folder: Path | None = None):
    """A tiny Llama whose next token depends only on the current one (embeddings one-hot, the layer's outputs
    zeroed, lm_head the transition table): greedy decoding follows `transitions`; any other token goes to EOS."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = tok.get_vocab()
    V = len(tok)
    config = LlamaConfig(
        vocab_size=V,
        hidden_size=V + (V % 2),
        intermediate_size=4,
        num_hidden_layers=1,
        num_attention_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_tokens.weight[:, :V] = torch.eye(V)
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight[tok.eos_token_id, :V] = 1.0
        for cur, nxt in transitions.items():
            model.lm_head.weight[tok.eos_token_id, vocab[cur]] = 0.0
            model.lm_head.weight[vocab[nxt], vocab[cur]] = 1.0
    if folder is not None:
        model.save_pretrained(str(folder))
        tok.save_pretrained(str(folder))
    return model.eval()


@pytest.mark.parametrize("kind", ["llama3", "gemma"])
def test_plad_eval_stops_at_end_of_turn(toks: dict, tmp_path: Path, kind: str) -> None:
    """After the generation prompt the model says "a b", then the end-of-turn token, then (were it not stopped)
    "c" and EOS: the output is "a b", its 3 tokens end with end-of-turn; a text prompt ending in "a" stops there
    too (an end-of-turn token ends any row)."""
    tok = toks[kind]
    eot = END_OF_TURN[kind]
    opener = ids(tok, PROMPTS[kind])[-1]
    start = tok.convert_ids_to_tokens(opener)
    bigram_model(tok, {start: "a", "a": "b", "b": eot, eot: "c"}, tmp_path / "model")
    test = tmp_path / "test.jsonl"
    rows = [
        {"id": "chat", "prompt": MESSAGES, "target": "a b"},
        {"id": "text", "prompt": "count: a", "target": "b"},
    ]
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    rc = main_inprocess(
        "eval", "--model", tmp_path / "model", "--test_file", test, "--output_dir", out, "--scorer", "",
        "--judge", "exact-match", "--generation.max_new_tokens", 8, "--bootstrap_samples", 100,
    )  # fmt: skip
    assert rc == 0
    got = {r["id"]: (r["output"], r["n_tokens"], r["finish"]) for r in read_jsonl(out / "outputs.jsonl")}
    assert got == {"chat": ("a b", 3, "eos"), "text": ("b", 2, "eos")}
    results = json.loads((out / "results.json").read_text())
    assert results["exact_match_squad"]["value"] == 1.0  # both outputs equal their targets


def test_generation_without_end_of_turn_runs_on(toks: dict, tmp_path: Path) -> None:
    """The same model with a template that has no end marker: only EOS ends a row, so "c" follows."""
    tok = toks["plain"]
    model = bigram_model(tok, {"assistant": "a", "a": "b", "b": "c"})
    prompt = encode_prompt(tok, MESSAGES, OPTS, Truncation())
    (s,) = generate(model, tok, [prompt], SamplingConfig(temperature=0, max_new_tokens=8))[0]
    assert (s.text, s.n_tokens, s.finish, s.ids) == ("a b c", 4, "eos", ids(tok, "a b c <eos>"))


# --------------------------------------------------------------------------------------------------------------
# stop strings


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory: pytest.TempPathFactory):
    """A byte-level BPE (as SmolLM2's, Llama-3's, Qwen's) whose vocabulary also holds the merged token "r\\n", and
    a bigram model: x -> a b \\n c EOS; z -> q "r\\n" s EOS; anything else -> EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab["rĊ"] = len(vocab)  # "r\n" as one token
    raw = Tokenizer(models.BPE(vocab, [("r", "Ċ")]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.add_special_tokens(["<|endoftext|>", "<pad>"])
    folder = tmp_path_factory.mktemp("byte-level")
    PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<pad>"
    ).save_pretrained(str(folder))
    tok = load_tokenizer(str(folder))
    nl = "Ċ"
    model = bigram_model(tok, {"x": "a", "a": "b", "b": nl, nl: "c", "z": "q", "q": "rĊ", "rĊ": "s"}, folder)
    model, tok = load_model_and_tokenizer(str(folder))
    return model.eval(), tok


@pytest.mark.parametrize(
    "stop, x_row, z_row",
    [
        ([], ("ab\nc", 5, "eos"), ("qr\ns", 4, "eos")),
        (["\n"], ("ab", 3, "stop"), ("qr", 2, "stop")),  # z: the stop string sits inside the token "r\n"
        (["b\nc"], ("a", 4, "stop"), ("qr\ns", 4, "eos")),  # a stop string over three tokens
        (["c", "\n", "zz"], ("ab", 3, "stop"), ("qr", 2, "stop")),  # the earliest stop string cuts
        (["s"], ("ab\nc", 5, "eos"), ("qr\n", 3, "stop")),
    ],
)
def test_stop_strings_end_a_row_and_cut_its_text(byte_level, stop, x_row, z_row) -> None:
    """Rows of one batch stop on their own (left padding, different lengths), as the openai backend's cut_at_stop
    and vLLM's `stop` do: the text ends where the stop string starts."""
    from plad.endpoint.client import cut_at_stop

    model, tok = byte_level
    prompts = [tok("x").input_ids, tok("zz z").input_ids]
    sampling = SamplingConfig(temperature=0, max_new_tokens=10, stop=stop)
    (x,), (z,) = generate(model, tok, prompts, sampling)
    assert (x.text, x.n_tokens, x.finish) == x_row and (z.text, z.n_tokens, z.finish) == z_row
    assert len(x.ids) == x.n_tokens and len(z.ids) == z.n_tokens
    full = {"x": "ab\nc", "z": "qr\ns"}  # what the rows say without stop strings
    assert x.text == cut_at_stop(full["x"], stop)[0] and z.text == cut_at_stop(full["z"], stop)[0]


def test_generation_ends_at_the_stop_string(byte_level, monkeypatch) -> None:
    """transformers stops the row (no tokens are spent past the stop), not only plad's cut of the text."""
    model, tok = byte_level
    new_tokens = []
    real = model.generate

    def spy(**kw):
        out = real(**kw)
        new_tokens.append(out.shape[1] - kw["input_ids"].shape[1])
        return out

    monkeypatch.setattr(model, "generate", spy)
    for stop in (["\n"], []):
        generate(
            model, tok, [tok("x").input_ids], SamplingConfig(temperature=0, max_new_tokens=10, stop=stop)
        )
    assert new_tokens == [3, 5]  # a b \n | a b \n c EOS


def test_vllm_rows_read_like_hf_rows(byte_level) -> None:
    """vLLM returns the token ids through the end token (or through the token that completed a stop string), with
    no padding; read through the same to_sample they give the hf backend's rows. Its SamplingParams carry the
    end-of-turn token and the stop strings."""
    from types import SimpleNamespace

    from plad.generation.vllm import sampling_params

    model, tok = byte_level
    ends = stop_ids(tok)
    for stop in ([], ["\n"], ["b\nc"]):
        (hf,) = generate(
            model, tok, [tok("x").input_ids], SamplingConfig(temperature=0, max_new_tokens=10, stop=stop)
        )[0]
        vllm_ids = hf.ids  # what vLLM returns: the generated ids, no padding after them
        assert to_sample(tok, vllm_ids, ends, stop) == hf
    fake = SimpleNamespace(SamplingParams=lambda **kw: kw)
    params = sampling_params(fake, SamplingConfig(stop=["\n"]), 2, 7, [tok.eos_token_id, 5])
    assert params["stop"] == ["\n"] and params["stop_token_ids"] == [tok.eos_token_id, 5]
    assert "stop" not in sampling_params(fake, SamplingConfig(), 2, 7, [tok.eos_token_id])


def test_stop_setting_reaches_every_backend() -> None:
    from plad.config import ApiConfig
    from plad.endpoint.client import Endpoint
    from plad.utils.errors import ConfigError

    ep = Endpoint(ApiConfig(base_url="http://x/v1", api_key_env="", stop=["END"]), "m", "teacher")
    params = ep.request_params("p", SamplingConfig(stop=["\n", "END"]), 1, None, 8)
    assert params["stop"] == ["END", "\n"]  # api.stop and sampling.stop, each once
    assert "stop" not in Endpoint(ApiConfig(base_url="http://x/v1", api_key_env=""), "m", "t").request_params(
        "p", SamplingConfig(), 1, None, 8
    )
    with pytest.raises(ConfigError, match="stop strings must be non-empty"):
        SamplingConfig(stop=[""])
