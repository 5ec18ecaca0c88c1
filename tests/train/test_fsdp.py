"""FSDP (version 2, configs/accelerate/fsdp.yaml) in two CPU processes over gloo: each run equals the
single-process run with the same global batch (2 processes x batch 2 against 1 process x batch 2 x grad_accum 2)
in the saved weights and every metrics row, to the tolerance of the DDP tests (1e-6).

accelerate picks FSDP on accelerator devices only, so the runs go through tests/fsdp_on_cpu.py, which sets the
distributed type accelerate would set on GPUs; everything after that (prepare, the sharded forward and backward,
clipping, the gathered state dict, save) is accelerate's and PyTorch's own code. Covered: sft, plad-rank, dpkd,
kd (its frozen teacher sharded too), plad-rank under gradient checkpointing, gkd with on-policy samples (drawn by
both processes in step), iterated rounds (sampled by the main process from the gathered student), kl-init (its
frozen reference sharded too), and a LoRA student with kl-init (the reference is the base with the adapters off;
the adapter and the merged model are written from the gathered state); a run stopped by SIGTERM and resumed in
test_multiprocess.py. Not covered: FSDP on GPUs (NCCL), FSDP version 1, CPU offload, mixed precision (bf16 runs,
its values unasserted)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import Bench, load_safetensors, main_inprocess, make_pairs
from servers import free_port
from test_multiprocess import CONFIGS, _args, _assert_same_run, _launch

CASES = {
    "sft": ("sft",),
    "plad-rank": ("plad-rank",),
    "dpkd": ("dpkd",),
    "kd": ("kd",),
    "kl-init": ("plad-rank", "--loss.regularizer", "kl-init"),
    "checkpointing": ("plad-rank", "--train.gradient_checkpointing", "true"),
    "gkd-on-policy": ("gkd", "--loss.on_policy_frac", 0.8),  # samples drawn in step (test_multiprocess.py)
    "plad-rank-rounds": ("plad-rank", "--rounds", 2),
    "lora-kl-init": ("plad-rank", "--loss.regularizer", "kl-init", "--lora.r", 4),  # reference: adapters off
}


@pytest.fixture(scope="module")
def store(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pairs(bench, tmp_path_factory.mktemp("fsdp") / "pairs", "--teacher_logprobs", "true")


@pytest.fixture
def untrained(bench: Bench, tmp_path: Path) -> None:
    (tmp_path / "untrained.st").write_bytes((bench.student / "model.safetensors").read_bytes())


@pytest.mark.parametrize("case", list(CASES))
def test_fsdp_two_processes_equal_one_with_the_same_global_batch(
    bench: Bench, store: Path, tmp_path: Path, case: str, untrained: None
) -> None:
    method, *extra = CASES[case]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main_inprocess(*_args(bench, store, one, method, "--train.grad_accum", 2, *extra)) == 0
    done = _launch("fsdp.yaml", _args(bench, store, two, method, *extra))
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_run(two, one)
    if "--rounds" in extra:  # round 2's samples: drawn by the main process from the gathered student
        assert (two / "rounds" / "round-1.jsonl").read_text() == (
            one / "rounds" / "round-1.jsonl"
        ).read_text()
    if "--lora.r" in extra:  # the adapter, read from the gathered state, and the merged model (above)
        a, b = (load_safetensors(d / "adapter" / "adapter_model.safetensors") for d in (two, one))
        assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() <= 1e-6 for k in a)
    frozen = {"kd": "teacher", "gkd-on-policy": "teacher", "kl-init": "reference"}.get(case)
    sharded = [line for line in done.stderr.splitlines() if "FSDP: the frozen" in line]
    if frozen is None:
        assert not sharded
    else:  # each process holds about half of the frozen model
        assert len(sharded) == 2 and all(f"frozen {frozen}'s parameters sharded" in s for s in sharded), (
            sharded
        )
        held = [line.split("sharded, ")[1].split(" on this")[0].split(" of ") for line in sharded]
        assert sum(int(a) for a, _ in held) == int(held[0][1]) == int(held[1][1])
        assert all(int(a) < int(b) for a, b in held)


def test_cpu_ram_efficient_loading_trains_the_same(
    bench: Bench, store: Path, tmp_path: Path, untrained: None
) -> None:
    """fsdp.yaml with fsdp_cpu_ram_efficient_loading true: accelerate's fsdp2_prepare_model then sends the main
    process's weights to the others. plad loads its models before the process group exists, so transformers'
    rank-0-only loading (weights on the meta device elsewhere) does not apply and every process still reads whole
    models; the run equals one process (kd: the frozen teacher prepared the same way). Tried once by hand with the
    process group started before loading: every run came out different from one process (weights off by up to
    0.04), so this test also guards against starting it early."""
    config = tmp_path / "fsdp-efficient-loading.yaml"
    text = (CONFIGS / "fsdp.yaml").read_text()
    assert "fsdp_cpu_ram_efficient_loading: false" in text
    config.write_text(
        text.replace("fsdp_cpu_ram_efficient_loading: false", "fsdp_cpu_ram_efficient_loading: true")
    )
    one, two = tmp_path / "one", tmp_path / "two"
    assert main_inprocess(*_args(bench, store, one, "kd", "--train.grad_accum", 2)) == 0
    done = _launch(config, _args(bench, store, two, "kd"))
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_run(two, one)


@pytest.mark.parametrize("lora", [False, True])
def test_fsdp2_model_gathers_and_shares_the_prompt_inside_its_forward(lora: bool) -> None:
    """A model sharded with fully_shard (as accelerate's fsdp2_prepare_model does: each decoder layer, the output
    layer with the final norm, then the root; with LoRA the root is the peft model) runs its body inside its own
    forward, with the output layer at the labelled positions only and each prompt once: the same loss and
    gradients as the bare model, its forward called once per loss, the body reading prompts and outputs apart."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import LlamaConfig, LlamaForCausalLM

    from plad.config import LossConfig
    from plad.core.methods import METHODS, Item, make_batch

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=1)  # fmt: skip
    items = [Item([5, 6, 7], [8, 9, 1], [10, 1]), Item([11, 12, 13, 14, 15, 16], [17, 1], [18, 19, 20, 1])]
    loss_cfg = LossConfig(regularizer="chosen")
    batch = make_batch(items, None, 0, loss_cfg, None, False, True)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        results = []
        for wrap in (False, True):
            torch.manual_seed(0)
            model = base = LlamaForCausalLM(config)
            tokens: list[int] = []
            base.model.embed_tokens.register_forward_hook(lambda m, a, o, t=tokens: t.append(a[0].numel()))
            if lora:
                from peft import LoraConfig, get_peft_model

                model = get_peft_model(
                    base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
                )
                for n, p in model.named_parameters():  # B != 0: the adapters change the forward
                    if "lora_B" in n:
                        torch.nn.init.normal_(p)
            if wrap:
                for layer in base.model.layers:
                    fully_shard(layer, mesh=mesh)
                fully_shard([base.model.norm, base.lm_head], mesh=mesh, reshard_after_forward=False)
                fully_shard(model, mesh=mesh)
            calls: list[int] = []
            model.register_forward_pre_hook(lambda m, a, c=calls: c.append(1))
            parts = METHODS["plad-rank"].loss(model, batch, loss_cfg)
            (parts.seq_sum + parts.tok_weight * parts.tok_sum).backward()
            grads = {
                n: getattr(p.grad, "full_tensor", lambda g=p.grad: g)()
                for n, p in model.named_parameters()
                if p.requires_grad
            }
            results.append((parts.seq_sum.detach(), grads, tokens, calls))
        (loss, grads, tokens, calls), (w_loss, w_grads, w_tokens, w_calls) = results
        torch.testing.assert_close(w_loss, loss)
        assert w_grads.keys() == grads.keys()
        for name, g in grads.items():
            torch.testing.assert_close(w_grads[name], g)
        rows = batch["main"]["shared_prompt"]
        assert w_tokens == tokens == [rows["prompt_ids"].numel(), rows["output_ids"].numel()]
        # the bare model's own forward never runs; the sharded one's once
        assert (calls, w_calls) == ([], [1])
    finally:
        dist.destroy_process_group()
