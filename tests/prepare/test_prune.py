"""`plad prune` (plad.prepare.prune): the kept layers' weights copied exactly, the config's per-layer lists cut,
the pruned model equal to the original run through the kept layers only; bad settings refused before any weight
is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import Bench, main_inprocess

from plad.config import PruneConfig
from plad.prepare.prune import evenly_spaced, layers_to_keep, pruned_config
from plad.utils.errors import ConfigError


def test_evenly_spaced_by_hand():
    # i * (n - 1) / (k - 1), rounded: the first and the last layer always kept
    assert evenly_spaced(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]  # 0, 3.2, 6.4, 9.7, 12.9, ...
    assert evenly_spaced(4, 2) == [0, 3]
    assert evenly_spaced(5, 3) == [0, 2, 4]
    assert evenly_spaced(6, 4) == [0, 2, 3, 5]  # 0, 1.67, 3.33, 5
    assert evenly_spaced(4, 3) == [0, 2, 3]  # 0, 1.5 (rounds to even: 2), 3
    assert evenly_spaced(9, 1) == [0]
    for n in range(2, 12):
        for k in range(1, n + 1):
            keep = evenly_spaced(n, k)
            assert len(keep) == k and keep == sorted(set(keep)) and keep[-1] == (n - 1 if k > 1 else 0)


def test_layers_to_keep():
    assert layers_to_keep(PruneConfig(num_layers=3), 4, "m") == [0, 2, 3]
    assert layers_to_keep(PruneConfig(keep_layers=["1", "3"], num_layers=99), 4, "m") == [1, 3]  # list wins


def test_pruned_config_cuts_per_layer_lists_only():
    from transformers import LlamaConfig

    config = LlamaConfig(num_hidden_layers=3, eos_token_id=[5, 6, 7], hidden_size=32, num_attention_heads=2)
    config.layer_types = ["full_attention", "sliding_attention", "full_attention"]
    new = pruned_config(config, [0, 2])
    assert new.num_hidden_layers == 2 and new.layer_types == ["full_attention", "full_attention"]
    assert new.eos_token_id == [5, 6, 7]  # three EOS ids of a three-layer model are not per-layer
    assert config.num_hidden_layers == 3 and len(config.layer_types) == 3  # the original is untouched


# --------------------------------------------------------------------------------------------------------------
# Three families: Llama, Qwen2 (sliding layers), Gemma-3 (layer_types, tied embeddings, q/k norms)

FULL, SLIDING = "full_attention", "sliding_attention"


def family_config(family: str, tok):
    import transformers as tf

    ids = dict(
        vocab_size=len(tok),
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    small = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    if family == "llama":
        return tf.LlamaConfig(max_position_embeddings=64, tie_word_embeddings=False, **small, **ids)
    if family == "qwen2":  # the first max_window_layers layers attend fully, the later ones in a window of 4
        return tf.Qwen2Config(
            max_position_embeddings=64,
            use_sliding_window=True,
            sliding_window=4,
            max_window_layers=2,
            **small,
            **ids,
        )
    if family == "gemma3":
        return tf.Gemma3TextConfig(
            max_position_embeddings=64, head_dim=8, sliding_window=4, layer_types=[SLIDING, FULL, SLIDING, FULL],
            **small, **ids,
        )  # fmt: skip
    raise ValueError(family)


def save_family(family: str, tok, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(family_config(family, tok))
    model.generation_config.max_length = 33  # a decoding default of the original, kept by the pruned model
    model.save_pretrained(out)
    tok.save_pretrained(out)


def through_kept_layers(model, keep: list[int]):
    """The original model, run through the kept layers only (surgery on the module, not on the weights)."""
    layers = model.model.layers
    model.model.layers = torch.nn.ModuleList([layers[i] for i in keep])
    for new, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    return model


@pytest.mark.parametrize(
    "family,keep,layer_types",
    [("llama", [0, 3], None), ("qwen2", [1, 2], [FULL, SLIDING]), ("gemma3", [1, 2], [FULL, SLIDING])],
)
def test_prune_family(family, keep, layer_types, bench: Bench, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bench.tokenizer)
    save_family(family, tok, tmp_path / "full")
    out = tmp_path / "pruned"
    assert (
        main_inprocess(
            "prune",
            "--model",
            tmp_path / "full",
            "--output_dir",
            out,
            "--keep_layers",
            ",".join(map(str, keep)),
        )
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert info["kept_layers"] == keep and info["layers"] == "2 of 4"
    assert info["parameters"] < info["teacher_parameters"]

    full = AutoModelForCausalLM.from_pretrained(tmp_path / "full").eval()
    small = AutoModelForCausalLM.from_pretrained(out).eval()  # a plain model folder
    assert type(small) is type(full) and small.config.num_hidden_layers == 2
    assert getattr(small.config, "layer_types", None) == (
        layer_types or getattr(small.config, "layer_types", None)
    )
    if family == "qwen2":
        assert small.config.max_window_layers == 1  # of the kept layers 1 and 2, only layer 1 is below 2
    assert [layer.self_attn.layer_idx for layer in small.model.layers] == [0, 1]
    assert small.generation_config.max_length == 33
    assert AutoTokenizer.from_pretrained(out).get_vocab() == tok.get_vocab()

    # the kept layers' weights exactly, renumbered; everything outside the layer list as it was
    full_state, small_state = full.state_dict(), small.state_dict()
    assert len(small_state) == len(full_state) - 2 * sum(k.startswith("model.layers.0.") for k in full_state)
    for key, value in small_state.items():
        if key.startswith("model.layers."):
            new, rest = key[len("model.layers.") :].split(".", 1)
            source = f"model.layers.{keep[int(new)]}.{rest}"
        else:
            source = key
        assert torch.equal(value, full_state[source]), key
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(small_state[name], full_state[name])
    if small.config.tie_word_embeddings:
        assert small.lm_head.weight.data_ptr() == small.model.embed_tokens.weight.data_ptr()

    # the pruned model = the original run through the kept layers (10 tokens: past the window of 4)
    ids = torch.tensor([tok("count the words of this sentence please").input_ids[:10]])
    assert ids.shape[1] == 10
    reference = through_kept_layers(full, keep)
    with torch.no_grad():
        torch.testing.assert_close(small(ids, use_cache=False).logits, reference(ids, use_cache=False).logits)
        kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        generated = small.generate(ids, **kwargs)
        assert generated.shape == (1, 16)
        assert torch.equal(generated, reference.generate(ids, **kwargs))


def test_prune_by_count_evenly_spaced(bench: Bench, tmp_path):
    from transformers import AutoTokenizer

    from plad.prepare.prune import run_prune

    tok = AutoTokenizer.from_pretrained(bench.tokenizer)
    save_family("llama", tok, tmp_path / "full")
    info = run_prune(
        PruneConfig(model=str(tmp_path / "full"), output_dir=str(tmp_path / "out"), num_layers=3)
    )
    assert info["kept_layers"] == [0, 2, 3] and info["layers"] == "3 of 4"


# --------------------------------------------------------------------------------------------------------------
# Bad settings: one line, exit code 2, before any weight is read, nothing written


@pytest.fixture(scope="module")
def llama4(tmp_path_factory, bench: Bench) -> Path:
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("prune") / "llama4"
    save_family("llama", AutoTokenizer.from_pretrained(bench.tokenizer), out)
    return out


@pytest.fixture
def no_weights(monkeypatch) -> None:
    """Reading a model's weights fails the test: the settings must be checked before."""
    from transformers import AutoModelForCausalLM

    def refuse(*a, **k):
        raise AssertionError("weights read before the settings were checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.mark.parametrize(
    "keep,num,message",
    [
        (["0", "4"], 2, "keep_layers: layer 4 is out of range; {model} has layers 0..3"),
        (["-1", "2"], 2, "keep_layers: layer -1 is out of range"),
        (["2", "1"], 2, "keep_layers must increase without repeats (got 2,1)"),
        (["1", "1"], 2, "keep_layers must increase without repeats (got 1,1)"),
        (["one", "two"], 2, "keep_layers must be layer numbers, got one,two"),
        (["0", "1", "2", "3"], 2, "keeping 4 of 4 layers is not a smaller student; keep fewer layers"),
        ([], 4, "keeping 4 of 4 layers is not a smaller student"),
        ([], 0, "num_layers must be in 1..4 ({model} has 4 layers)"),
    ],
)
def test_bad_layers(keep, num, message, llama4: Path, tmp_path, no_weights):
    from plad.prepare.prune import run_prune

    out = tmp_path / "out"
    with pytest.raises(ConfigError) as e:
        run_prune(PruneConfig(model=str(llama4), output_dir=str(out), keep_layers=keep, num_layers=num))
    assert message.format(model=llama4) in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()
