"""Two processes through `accelerate launch` on CPU (gloo), with configs/accelerate/ddp.yaml: each run equals the
single-process run with the same global batch (2 processes x batch 2 against 1 process x batch 2 x grad_accum 2),
in the saved weights and in every metrics row. Measured on this
machine the two are equal bit for bit; the tolerance below (1e-6) leaves room for another all-reduce order.

Covered: sft, plad-rank, dpkd, kd (a frozen teacher), gkd with on-policy samples drawn on every process, and
iterated PLaD's rounds (sampled by the main process, read by all), under DDP. FSDP (configs/accelerate/fsdp.yaml)
runs in test_fsdp.py; DeepSpeed is refused; the start-up check that refuses what plad does not run is tested on
its own."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import (
    Bench,
    complete_lines,
    kill_point,
    load_safetensors,
    main_inprocess,
    make_pairs,
    read_jsonl,
    subprocess_env,
)
from servers import free_port

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
FSDP_ON_CPU = Path(__file__).resolve().parents[1] / "fsdp_on_cpu.py"
ATOL = 1e-6

CASES = {
    "sft": ("sft",),
    "plad-rank": ("plad-rank",),
    "dpkd": ("dpkd",),
    "kd": ("kd",),
    "gkd-on-policy": ("gkd", "--loss.on_policy_frac", 0.8),
    "plad-rank-rounds": ("plad-rank", "--rounds", 2),
}


def on_policy_coins(frac: float, micro_batches: int) -> list[bool]:
    """Which micro-batches gkd samples at loss.on_policy_frac `frac` (train.seed 0), as make_on_policy draws."""
    from plad.utils.seeds import derive_seed

    draw = [torch.Generator().manual_seed(derive_seed(0, "on-policy", g)) for g in range(micro_batches)]
    return [float(torch.rand((), generator=gen)) < frac for gen in draw]


def test_the_on_policy_case_samples_some_micro_batches_and_not_others() -> None:
    """The gkd-on-policy runs (3 steps x 2 micro-batches) sample in some micro-batches and keep the dataset's
    outputs in others, and in one window one process samples while the other does not (under FSDP it samples
    anyway, in step, and keeps nothing): the cases stay meaningful."""
    coins = on_policy_coins(0.8, 6)
    assert any(coins) and not all(coins)
    assert any(coins[i] != coins[i + 1] for i in range(0, 6, 2))


@pytest.fixture(scope="module", name="store")
def store_fixture(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pairs(bench, tmp_path_factory.mktemp("multiprocess") / "pairs", "--teacher_logprobs", "true")


def _args(bench: Bench, store: Path, out: Path, method: str, *extra: object) -> list[object]:
    common = ["--model", bench.student, "--output_dir", out, "--train.max_steps", 3, "--train.log_every", 1]
    common += ["--train.batch_size", 2, "--train.lr", 1e-2, "--threads", 1, *extra]
    if method == "sft":
        return ["sft", "--train_file", bench.sft, *common]
    return [
        "distill", "--method", method, "--pairs_file", store / "pairs.jsonl", "--teacher", bench.teacher,
        "--train_file", bench.sft, "--on_policy.max_new_tokens", 6, *common,
    ]  # fmt: skip


def _launch_cmd(config: str | Path, args: list[object]) -> tuple[list[str], dict[str, str]]:
    """`accelerate launch --config_file configs/accelerate/CONFIG -m plad.cli ARGS` with 2 CPU processes (CONFIG
    may be a path of its own); an FSDP config through tests/fsdp_on_cpu.py, which gives accelerate's FSDP path to
    CPU processes (test_fsdp.py)."""
    entry = [FSDP_ON_CPU] if "fsdp" in Path(config).name else ["-m", "plad.cli"]
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", CONFIGS / config,
        "--num_processes", 2, "--main_process_port", free_port(), *entry, *args,
    ]  # fmt: skip
    return list(map(str, cmd)), dict(subprocess_env(), ACCELERATE_USE_CPU="true", OMP_WAIT_POLICY="PASSIVE")


def _launch(config: str | Path, args: list[object]) -> subprocess.CompletedProcess:
    cmd, env = _launch_cmd(config, args)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _assert_same_run(got: Path, want: Path, steps: int = 3, rel: float = 1e-5) -> None:
    a, b = load_safetensors(got / "model.safetensors"), load_safetensors(want / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= ATOL, f"weights differ by up to {worst}"
    assert any(not torch.equal(a[k], v) for k, v in load_safetensors(got.parent / "untrained.st").items())
    rows_a, rows_b = read_jsonl(got / "metrics.jsonl"), read_jsonl(want / "metrics.jsonl")
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == list(range(1, steps + 1))
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra.keys() == rb.keys()
        for k in ra.keys() - {"tokens_per_s"}:
            assert ra[k] == pytest.approx(rb[k], rel=rel, abs=ATOL), (k, ra["step"])
    summary = json.loads((got / "train_summary.json").read_text())
    assert summary["final_loss"] == pytest.approx(
        json.loads((want / "train_summary.json").read_text())["final_loss"], rel=rel
    )  # as the metrics rows: FSDP's gradient norm over shards differs from one process's in the 7th digit


@pytest.fixture(name="untrained")
def untrained_fixture(bench: Bench, tmp_path: Path) -> None:
    """The student's initial weights beside the runs: a run that trained nothing would equal its twin too."""
    (tmp_path / "untrained.st").write_bytes((bench.student / "model.safetensors").read_bytes())


def two_equal_one(
    bench: Bench, store: Path, tmp_path: Path, config: str | Path, method: str, *extra: object
) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """One process at grad_accum 2 (tmp_path/one) and two through `accelerate launch` with `config` (tmp_path/two):
    the same run, asserted. Returns both folders and the launch."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert main_inprocess(*_args(bench, store, one, method, "--train.grad_accum", 2, *extra)) == 0
    done = _launch(config, _args(bench, store, two, method, *extra))
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_run(two, one)
    return one, two, done


@pytest.mark.parametrize("case", list(CASES))
def test_ddp_two_processes_equal_one_with_the_same_global_batch(
    bench: Bench, store: Path, tmp_path: Path, case: str, untrained: None
) -> None:
    method, *extra = CASES[case]
    one, two, _ = two_equal_one(bench, store, tmp_path, "ddp.yaml", method, *extra)
    if (
        case == "plad-rank-rounds"
    ):  # round 2's samples: drawn once, by the main process, from the same student
        assert (two / "rounds" / "round-1.jsonl").read_text() == (
            one / "rounds" / "round-1.jsonl"
        ).read_text()


@pytest.mark.parametrize(("config", "lora"), [("ddp.yaml", False), ("fsdp.yaml", False), ("ddp.yaml", True)])
def test_run_stopped_by_sigterm_resumes_to_the_single_process_result(
    bench: Bench, store: Path, tmp_path: Path, untrained: None, config: str, lora: bool
) -> None:
    """SIGTERM to the launcher (what a scheduler sends) at a seeded step: torchrun passes it to both processes,
    which write one checkpoint of that step and stop; `--resume` in 2 processes then ends where one process with
    the same global batch ends, uninterrupted (bit for bit here, asserted to 1e-6).

    Under FSDP the checkpoint holds each process's shards (fsdp.yaml: SHARDED_STATE_DICT), and the resumed run
    equals the uninterrupted FSDP run to 1e-6. That one is not bit-equal to one process: the gradient norm is
    summed over shards, so clipping scales by a factor that differs in the 7th digit; through AdamW that drift
    reaches 3e-5 (relative) in the gradient norm by step 24, with the weights still within 1e-6.

    A LoRA student under DDP: the checkpoint holds the adapters only (each process's state dict carries DDP's
    `module.` prefix), and the resumed run's merged model equals one process's."""
    steps, stop_at = 30, kill_point("ddp-sigterm", 6, 14)
    args = ("--train.max_steps", steps, "--train.save_every", 5, *(("--lora.r", 4) if lora else ()))
    one, two = tmp_path / "one", tmp_path / "two"
    assert main_inprocess(*_args(bench, store, one, "plad-rank", "--train.grad_accum", 2, *args)) == 0
    cmd, env = _launch_cmd(config, _args(bench, store, two, "plad-rank", *args))
    with (tmp_path / "launch.log").open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while complete_lines(two / "metrics.jsonl") < stop_at:
        assert proc.poll() is None, (tmp_path / "launch.log").read_text()[-3000:]
        assert time.monotonic() < deadline, (tmp_path / "launch.log").read_text()[-3000:]
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    log_text = (tmp_path / "launch.log").read_text()
    assert log_text.count("plad: stopped at step") == 2, log_text[-3000:]  # each process, at the same step
    assert not (two / "train_summary.json").exists() and list((two / "checkpoints").glob("step-*"))
    if lora:
        held = load_safetensors(sorted((two / "checkpoints").glob("step-*"))[-1] / "model.safetensors")
        assert held and all("lora_" in k for k in held), sorted(held)[:3]
    done = _launch(config, [*_args(bench, store, two, "plad-rank", *args), "--resume"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "plad: resumed from" in done.stderr
    if config == "ddp.yaml":
        _assert_same_run(two, one, steps)
        return
    whole = tmp_path / "whole"
    done = _launch(config, _args(bench, store, whole, "plad-rank", *args))
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_run(two, whole, steps)
    _assert_same_run(whole, one, steps, rel=1e-4)


@pytest.mark.parametrize("config", ["ddp.yaml", "fsdp.yaml"])
def test_heal_in_two_processes_equals_one(bench: Bench, tmp_path: Path, untrained: None, config: str) -> None:
    """`plad heal` (objective kd: the teacher frozen, sharded under FSDP) trains through the same loop: 2 processes
    equal 1 with the same global batch, and every process measures the same held-out NLL before and after (each
    writes heal.json: atomic, the same content)."""
    from plad.utils.io import write_jsonl_atomic

    texts = tmp_path / "texts.jsonl"
    write_jsonl_atomic(texts, [{"text": r["prompt"] + r["target"]} for r in read_jsonl(bench.sft)[:40]])

    def heal(out: Path, *extra: object) -> list[object]:
        return [
            "heal", "--model", bench.student, "--teacher", bench.teacher, "--objective", "kd", "--text_file", texts,
            "--output_dir", out, "--max_tokens", 32, "--val_texts", 4, "--train.max_steps", 3,
            "--train.batch_size", 2, "--train.lr", 1e-2, "--train.log_every", 1, "--threads", 1, *extra,
        ]  # fmt: skip

    one, two = tmp_path / "one", tmp_path / "two"
    assert main_inprocess(*heal(one, "--train.grad_accum", 2)) == 0
    done = _launch(config, heal(two))
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_run(two, one)
    a, b = (json.loads((d / "heal.json").read_text()) for d in (two, one))
    for key in ("heldout_nll_before", "heldout_nll_after", "teacher_heldout_nll", "train_rows"):
        assert a[key] == pytest.approx(b[key], abs=1e-4), key


def _fake_accelerator(kind: str, fsdp2: bool = True) -> SimpleNamespace:
    from accelerate.utils import DistributedType

    return SimpleNamespace(distributed_type=DistributedType[kind], is_fsdp2=kind == "FSDP" and fsdp2)


def test_sharded_and_deepspeed_runs_refuse_what_plad_does_not_run(bench: Bench) -> None:
    """The start-up check on its own: DDP and FSDP version 2 take everything (run in test_fsdp.py); FSDP version 1
    refuses frozen models and sampling during training, naming each; DeepSpeed is refused outright."""
    from plad.core.methods import NO_FROZEN, Frozen, Item
    from plad.train.batches import TrainData
    from plad.train.distributed import check_sharding
    from plad.utils.errors import ConfigError

    teacher, items = torch.nn.Linear(2, 2), [Item([1, 2], [3])]
    everything = (Frozen(teacher, teacher), TrainData(items, 2, 0, None, lambda *a: [], lambda *a: None))
    plain = (NO_FROZEN, TrainData(items, 2, 0))
    for kind in ("MULTI_GPU", "MULTI_CPU", "NO", "FSDP"):
        check_sharding(_fake_accelerator(kind), *everything)
    check_sharding(_fake_accelerator("FSDP", fsdp2=False), *plain)  # the student alone: runs
    with pytest.raises(ConfigError) as e:
        check_sharding(_fake_accelerator("FSDP", fsdp2=False), *everything)
    msg = str(e.value)
    assert msg.startswith("FSDP version 1 shards the student alone")
    for setting in (
        "frozen teacher",
        "loss.regularizer",
        "loss.on_policy_frac",
        "rounds > 1",
        "fsdp_version: 2",
    ):
        assert setting in msg, setting
    with pytest.raises(ConfigError, match="DeepSpeed mode is not supported.*ddp.yaml"):
        check_sharding(_fake_accelerator("DEEPSPEED"), *plain)


def test_shipped_launch_configs_load_in_accelerate() -> None:
    """What `accelerate launch --config_file` reads: the DDP config (run above) and the FSDP one (run in test_fsdp.py)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == ["ddp.yaml", "fsdp.yaml"]
    ddp, fsdp = (load_config_from_file(str(CONFIGS / n)) for n in ("ddp.yaml", "fsdp.yaml"))
    assert ddp.distributed_type == DistributedType.MULTI_GPU and ddp.num_processes == 2
    assert fsdp.distributed_type == DistributedType.FSDP and fsdp.fsdp_config["fsdp_version"] == 2


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp2", "fsdp2-lora"])
def test_wrapped_model_gathers_and_shares_the_prompt_inside_its_forward(wrapper: str) -> None:
    """A model wrapped in DistributedDataParallel, or sharded with fully_shard as accelerate's fsdp2_prepare_model
    does (each decoder layer, the output layer with the final norm, then the root; with LoRA the root is the peft
    model), runs its body inside its own forward (where DDP prepares the all-reduce and FSDP gathers the
    parameters), with the output layer at the labelled positions only and each prompt once: the same loss and
    gradients as the bare model, the wrapper's forward called once per loss, the body reading prompts and outputs
    apart."""
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
            if wrapper == "fsdp2-lora":
                from peft import LoraConfig, get_peft_model

                from plad.train.lora import quiet_peft

                lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
                with quiet_peft():
                    model = get_peft_model(base, lora)
                for n, p in model.named_parameters():  # B != 0: the adapters change the forward
                    if "lora_B" in n:
                        torch.nn.init.normal_(p)
            net = model
            if wrap and wrapper == "ddp":
                net = torch.nn.parallel.DistributedDataParallel(model)
            elif wrap:
                for layer in base.model.layers:
                    fully_shard(layer, mesh=mesh)
                fully_shard([base.model.norm, base.lm_head], mesh=mesh, reshard_after_forward=False)
                fully_shard(model, mesh=mesh)
            calls: list[int] = []
            net.register_forward_pre_hook(lambda m, a, c=calls: c.append(1))
            parts = METHODS["plad-rank"].loss(net, batch, loss_cfg)
            (parts.seq_sum + parts.tok_weight * parts.tok_sum).backward()
            grads = {
                n: getattr(
                    p.grad, "full_tensor", lambda g=p.grad: g
                )()  # FSDP2: a DTensor of the whole gradient
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
        assert w_tokens == tokens == [rows["ids"].numel()]
        assert (calls, w_calls) == ([], [1])  # the bare model's own forward never runs; the wrapper's once
    finally:
        dist.destroy_process_group()
