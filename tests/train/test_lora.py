"""LoRA students (`lora.*`) through the real `plad sft` / `plad distill`: every method trains its adapters only, the
merged folder computes what base + adapters compute, an interrupted run resumes to the uninterrupted one's adapters
bit for bit, and kl-init's reference is the base with its adapters off, not a copy."""

from __future__ import annotations

import json
import signal
import types
from pathlib import Path

import pytest
import torch
from conftest import Bench, load_safetensors, main_inprocess, make_pairs, read_jsonl

from plad.core.methods import METHODS
from plad.train import lora
from plad.train.loop import Trainer


@pytest.fixture(scope="module")
def store(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pairs(bench, tmp_path_factory.mktemp("lora") / "pairs", "--teacher_logprobs", "true")


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
        "--train.lr", 1e-2,
        "--on_policy.max_new_tokens", 6,
        "--lora.r", 4,
        "--threads", 1,
        *extra,
    )  # fmt: skip


@pytest.fixture
def saved_state(monkeypatch: pytest.MonkeyPatch) -> dict:
    """The trained model's weights as lora.save receives them (before the merge), by parameter name."""
    seen: dict = {}
    real = lora.save

    def spy(model, tokenizer, output_dir, merge, sharded_state=None):
        seen.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, tokenizer, output_dir, merge, sharded_state)

    monkeypatch.setattr(lora, "save", spy)
    return seen


def _base_name(key: str) -> str:
    """A peft state-dict key -> the base model's key (base_model.model.X.base_layer.weight -> X.weight)."""
    return key.removeprefix("base_model.model.").replace(".base_layer.", ".")


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_only_its_adapters(
    bench: Bench, store: Path, tmp_path: Path, method: str, saved_state: dict
) -> None:
    out = tmp_path / method
    # gkd: every micro-batch on fresh samples of the LoRA student (generate through the peft model)
    extra = ("--loss.on_policy_frac", 1) if method == "gkd" else ()
    assert _distill(bench, store, out, method, *extra) == 0
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 2
    assert all(v == v for r in read_jsonl(out / "metrics.jsonl") for v in r.values())  # no NaN
    base = load_safetensors(bench.student / "model.safetensors")
    adapters = {k: v for k, v in saved_state.items() if "lora_" in k}
    frozen = {_base_name(k): v for k, v in saved_state.items() if "lora_" not in k}
    assert adapters and frozen.keys() - base.keys() <= {
        "lm_head.weight"
    }  # tied to the embeddings: not stored
    assert all(torch.equal(frozen[k], base[k]) for k in base)  # bitwise: the base never trained
    assert any(v.abs().sum() > 0 for k, v in adapters.items() if "lora_B" in k)  # B starts at 0: it trained
    saved = load_safetensors(out / "adapter" / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)  # the adapter file holds the adapters only
    assert (out / "model.safetensors").is_file() and (out / "adapter" / "adapter_config.json").is_file()


def test_merged_folder_is_base_plus_adapters(bench: Bench, tmp_path: Path) -> None:
    """The merged model at OUTPUT/ (a plain folder, loaded through the Auto class) gives the logits of the base with
    OUTPUT/adapter/ on it; lora.config's JSON sets the adapters (here: attention's q and v only, rank 2)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = tmp_path / "lora.json"
    config.write_text(json.dumps({"r": 2, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}))
    out = tmp_path / "sft"
    rc = main_inprocess(
        "sft", "--model", bench.student, "--train_file", bench.sft, "--output_dir", out, "--train.max_steps", 3,
        "--train.batch_size", 4, "--train.lr", 3e-2, "--train.warmup_steps", 0, "--lora.config", config,
        "--threads", 1,
    )  # fmt: skip
    assert rc == 0
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 2 and set(adapter_cfg["target_modules"]) == {"q_proj", "v_proj"}
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(merged).__name__ == "LlamaForCausalLM"
    with lora.quiet_peft():
        with_adapter = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(bench.student), out / "adapter"
        )
    base = AutoModelForCausalLM.from_pretrained(bench.student).eval()
    ids = torch.randint(0, merged.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = merged(input_ids=ids).logits, with_adapter.eval()(input_ids=ids).logits
        assert torch.allclose(got, want, atol=1e-5, rtol=0)
        assert (got - base(input_ids=ids).logits).abs().max() > 1e-3  # the adapters changed the model


def test_adapter_only_without_merge(
    bench: Bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """lora.merge false writes the adapter and the tokenizer, no model; the adapter names its base by an absolute
    path (here given relative), so peft's AutoPeftModel loads it from anywhere; a stage given the folder as a model
    says it holds only an adapter and what to do."""
    from peft import AutoPeftModelForCausalLM

    monkeypatch.chdir(bench.student.parent)
    out = tmp_path / "sft"
    rc = main_inprocess(
        "sft", "--model", bench.student.name, "--train_file", bench.sft, "--output_dir", out,
        "--train.max_steps", 1, "--train.batch_size", 2, "--lora.r", 2, "--lora.merge", "false", "--threads", 1,
    )  # fmt: skip
    assert rc == 0
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    recorded = json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(bench.student.resolve())
    monkeypatch.chdir(tmp_path)
    assert AutoPeftModelForCausalLM.from_pretrained(str(out / "adapter")) is not None
    capsys.readouterr()
    assert (
        main_inprocess("eval", "--model", out, "--test_file", bench.test, "--output_dir", tmp_path / "ev")
        == 2
    )
    assert "holds only a LoRA adapter" in capsys.readouterr().err


def test_kl_init_uses_the_base_with_adapters_off(
    bench: Bench, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No second copy of the student (copy.deepcopy would fail here); the KL to the initial student is 0 on the
    first step (the adapters start as a no-op) and grows once they trained."""
    import plad.train.stages as stages

    def no_copy(obj):
        raise AssertionError("kl-init with LoRA copied the student")

    monkeypatch.setattr(stages, "copy", types.SimpleNamespace(deepcopy=no_copy))
    out = tmp_path / "kl"
    assert _distill(bench, store, out, "plad-rank", "--loss.regularizer", "kl-init") == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert rows[0]["reg_kl"] == pytest.approx(0.0, abs=1e-6)
    assert rows[1]["reg_kl"] > 1e-6


def _stopped_after(step: int, monkeypatch: pytest.MonkeyPatch, *distill_args: object) -> int:
    """_distill(*distill_args) sent SIGTERM once step `step` is logged (what a scheduler does); its exit code."""
    real_log = Trainer.log

    def log_then_stop(self: Trainer) -> None:
        real_log(self)
        if self.step == step:
            signal.raise_signal(signal.SIGTERM)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "log", log_then_stop)
        return _distill(*distill_args)


def test_interrupted_lora_run_resumes_exactly(
    bench: Bench, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM after step 2 of 4 (the checkpoint of that step goes through accelerate's save_state with the peft
    model), then --resume: the adapters equal an uninterrupted run's bit for bit. Iterated PLaD samples its round-2
    negatives from the LoRA student after the resume, and kl-init's reference is the base with adapters off."""
    args = ("--loss.regularizer", "kl-init", "--rounds", 2, "--train.max_steps", 4, "--lora.dropout", 0.1)
    assert _distill(bench, store, tmp_path / "reference", "plad-rank", *args) == 0

    out = tmp_path / "run"
    assert _stopped_after(2, monkeypatch, bench, store, out, "plad-rank", *args) == 128 + signal.SIGTERM
    assert (out / "checkpoints" / "step-0000002").is_dir() and not (out / "train_summary.json").exists()
    # the checkpoint holds the adapters only; the frozen base is read from the model folder on --resume
    held = load_safetensors(out / "checkpoints" / "step-0000002" / "model.safetensors")
    assert held and all("lora_" in k for k in held), sorted(held)[:3]
    assert _distill(bench, store, out, "plad-rank", *args, "--resume") == 0
    want = load_safetensors(tmp_path / "reference" / "adapter" / "adapter_model.safetensors")
    got = load_safetensors(out / "adapter" / "adapter_model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]


def test_resume_from_a_checkpoint_without_the_adapters_is_refused(
    bench: Bench, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A LoRA checkpoint is loaded without strictness (it holds the adapters, not the base), so a checkpoint that
    lacks a trained parameter (made for another adapter layout, e.g. an edited lora.config file) is refused,
    naming it, instead of resuming with that adapter at its initial value."""
    from safetensors.torch import save_file

    out = tmp_path / "run"
    assert _stopped_after(1, monkeypatch, bench, store, out, "plad-rank") == 128 + signal.SIGTERM
    path = out / "checkpoints" / "step-0000001" / "model.safetensors"
    held = load_safetensors(path)
    dropped = sorted(held)[0]
    save_file({k: v for k, v in held.items() if k != dropped}, str(path), metadata={"format": "pt"})
    capsys.readouterr()
    assert _distill(bench, store, out, "plad-rank", "--resume") != 0
    err = capsys.readouterr().err
    assert "lacks 1 of the trained parameters" in err and dropped in err and "Traceback" not in err


def test_lora_model_computes_only_the_labelled_logits(bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    """A LoRA student takes logprobs' gathered path (the output layer on the labelled positions only) through its
    base, and gets the full forward's log-probs and adapter gradients."""
    from transformers import AutoModelForCausalLM

    from plad.config import LoraOptions, LossConfig
    from plad.core import logprobs
    from plad.core.methods import Item, make_batch

    model = lora.add_adapters(
        AutoModelForCausalLM.from_pretrained(bench.student), LoraOptions(r=4), "s", seed=0
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))  # adapters that act
    gen = torch.Generator().manual_seed(0)
    items = [
        Item(torch.randint(3, model.config.vocab_size, (9,), generator=gen).tolist(), [5, 6, 7, 8][: 2 + i])
        for i in range(3)
    ]
    batch = make_batch(items, None, 0, LossConfig())["main"]
    assert logprobs.gathered_output_layer(model) is not None
    shapes = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, a, o: shapes.append(a[0].shape))

    def logps_and_grads() -> tuple[torch.Tensor, dict]:
        model.zero_grad(set_to_none=True)
        out = logprobs.sequence_logps(model, batch)["logps"]
        out.sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    fast, fast_grads = logps_and_grads()
    monkeypatch.setattr(logprobs, "gathered_output_layer", lambda m: None)
    full, full_grads = logps_and_grads()
    hook.remove()
    assert len(shapes[0]) == 2 and len(shapes[1]) == 3  # (M, H) gathered, then (N, T, H) in the full forward
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    assert all(torch.allclose(fast_grads[n], full_grads[n], atol=1e-6, rtol=1e-4) for n in full_grads)


def test_save_plain_writes_a_merged_copy_and_keeps_the_adapters(bench: Bench, tmp_path: Path) -> None:
    """What vLLM's rounds load from a LoRA student: a plain folder whose logits are base + adapters, while the
    training model keeps its adapters (unmerged, unchanged)."""
    from transformers import AutoModelForCausalLM

    from plad.config import LoraOptions

    model = lora.add_adapters(
        AutoModelForCausalLM.from_pretrained(bench.student), LoraOptions(r=2), str(bench.student), 0
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora.save_plain(model, tmp_path / "plain")
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain").eval()
    ids = torch.randint(0, plain.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model.eval()(input_ids=ids).logits
        assert torch.allclose(plain(input_ids=ids).logits, want, atol=1e-5, rtol=0)
        base = AutoModelForCausalLM.from_pretrained(bench.student).eval()
        assert (want - base(input_ids=ids).logits).abs().max() > 1e-3
