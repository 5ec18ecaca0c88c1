"""Real OpenAI-compatible servers on 127.0.0.1 for the API tests, and a fault-injecting proxy to put in front.

- `TransformersServer`: `transformers serve MODEL_DIR` in a subprocess (a real server: FastAPI + uvicorn; it
  ignores `n`, `logprobs` and `echo`, and keeps stop strings in its output).
- `LlamaCppServer`: llama-cpp-python's server on a GGUF file written by `write_gguf` (returns completion
  log-probs with echo; ignores n > 1). Needs the `servers` extra (`make test-servers`).
- `FaultProxy`: a loopback HTTP proxy that answers a set fraction of requests with 429 + Retry-After, 500, 503,
  a stall past the client's timeout, a connection reset, or a truncated JSON body (after the upstream did the
  work), and records every request by a hash of its body, so the tests can count what was paid for.
- `RuleJudgeServer`: an OpenAI-compatible chat server whose verdicts come from a rule (the LLM judge's tests).
- `ScriptedServer`: an OpenAI-compatible completions/chat server whose replies come from a function, sent whole
  or trickled a byte at a time (deadlines, oversized or odd replies).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class QuietHTTPServer(ThreadingHTTPServer):
    """A test server whose handler threads may outlive a client that gave up (a timeout under test): their
    broken-pipe / reset errors are not printed, where they would land in a later test's captured stderr and read as
    a traceback of plad's. Any other error is printed as usual."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError | ConnectionResetError | ConnectionAbortedError):
            return
        super().handle_error(request, client_address)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(
    url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}:\n{log.read_text()[-3000:] if log else ''}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException):
            pass
        time.sleep(0.25)
    raise RuntimeError(
        f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:] if log else ''}"
    )


class _Subprocess:
    """A server process with its output in a log file; stopped (and reaped) on exit."""

    proc: subprocess.Popen
    log: Path

    def _start(self, cmd: list[str], log: Path, health: str, timeout: float, env: dict | None = None) -> None:
        self.log = log
        fh = log.open("w")
        try:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        finally:
            fh.close()
        try:
            wait_http(health, timeout, self.proc, log)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TransformersServer(_Subprocess):
    def __init__(self, model_dir: Path, log: Path, timeout: float = 120):
        self.port = free_port()
        self.model = str(model_dir)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        cli = Path(sys.executable).parent / "transformers"
        cmd = [
            str(cli),
            "serve",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--device",
            "cpu",
        ]
        env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        self._start(cmd, log, f"http://127.0.0.1:{self.port}/health", timeout, env)


class LlamaCppServer(_Subprocess):
    def __init__(self, gguf: Path, log: Path, timeout: float = 120, n_ctx: int = 512):
        self.port = free_port()
        self.model = "tiny"
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", self.model,
            "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(n_ctx), "--n_threads", "1",
            "--logits_all", "true",
        ]  # fmt: skip
        self._start(cmd, log, f"http://127.0.0.1:{self.port}/v1/models", timeout)


# --------------------------------------------------------------------------------------------------------------
# The fault-injecting proxy

FAULTS = ("429", "500", "503", "timeout", "reset", "truncated")


class FaultProxy:
    """Loopback proxy to `upstream` (http://127.0.0.1:PORT) that fails `rate` of the requests, each fault kind
    equally likely (seeded). `events` holds one dict per request: body hash, outcome, seed, time."""

    def __init__(
        self,
        upstream: str,
        rate: float = 0.3,
        seed: int = 0,
        stall: float = 3.0,
        retry_after: str = "1",
        faults: tuple[str, ...] = FAULTS,
    ):
        self.upstream = upstream.rstrip("/")
        self.rate, self.stall, self.retry_after, self.faults = rate, stall, retry_after, faults
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.events: list[dict] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                status, headers, body = proxy._forward("GET", self.path, None, dict(self.headers))
                self._reply(status, body, headers.get("Content-Type", "application/json"))

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy._handle(self, body)

            def _reply(
                self, status: int, body: bytes, ctype: str = "application/json", extra: dict | None = None
            ):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:  # injected resets are expected
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- what happened ---------------------------------------------------------------------------------------
    def outcomes(self, kind: str | None = None) -> list[dict]:
        with self.lock:
            return [e for e in self.events if kind is None or e["outcome"] == kind]

    def delivered(self) -> dict[str, int]:
        """How often each distinct request body got a complete 200 reply (a paid, usable answer)."""
        counts: dict[str, int] = {}
        for e in self.outcomes("ok"):
            counts[e["hash"]] = counts.get(e["hash"], 0) + 1
        return counts

    # -- the proxying ------------------------------------------------------------------------------------------
    def _forward(self, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, dict, bytes]:
        url = self.upstream + path
        keep = {k: v for k, v in headers.items() if k.lower() in ("content-type", "authorization", "accept")}
        req = urllib.request.Request(url, data=body, method=method, headers=keep)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def _handle(self, h: Any, body: bytes) -> None:
        digest = hashlib.sha256(body).hexdigest()[:16]
        try:
            parsed = json.loads(body)
        except json.JSONDecodeError:
            parsed = {}
        with self.lock:
            fault = self.rng.choice(self.faults) if self.rng.random() < self.rate else None
        event = {"hash": digest, "t": time.monotonic(), "seed": parsed.get("seed"), "n": parsed.get("n")}

        def record(outcome: str) -> None:
            with self.lock:
                self.events.append({**event, "outcome": outcome, "t_end": time.monotonic()})

        if fault in ("429", "500", "503"):
            msg = json.dumps({"error": {"message": f"injected {fault}", "type": "injected"}}).encode()
            extra = {"Retry-After": self.retry_after} if fault == "429" else None
            record(fault)
            h._reply(int(fault), msg, extra=extra)
            return
        if fault == "timeout":
            record("timeout")
            time.sleep(self.stall)  # the client gives up first; nothing is sent
            h.close_connection = True
            return
        if fault == "reset":
            record("reset")
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
            h.close_connection = True
            return
        status, headers, payload = self._forward("POST", h.path, body, dict(h.headers))
        if fault == "truncated" and status == 200:
            record("truncated")  # the upstream did the work; the client gets half a JSON body
            h._reply(200, payload[: len(payload) // 2])
            return
        h._reply(status, payload, headers.get("Content-Type", "application/json"))
        record("ok" if status == 200 else f"upstream-{status}")


# --------------------------------------------------------------------------------------------------------------
# A scripted judge: an OpenAI-compatible chat server whose "model" is a rule


class RuleJudgeServer:
    """A loopback OpenAI-compatible server (GET /v1/models, POST /v1/chat/completions) that judges like a rule: it
    splits the request's user message with `split(text) -> (prompt, a, b)` and answers `reply(prompt, a, b)` (a
    str, or an int: that HTTP error status). A stand-in for a strong judge model, whose verdicts a test can predict exactly; the client side (the
    official openai client, retries, cache, parsing) is the real one. `fail_after`: answer 503 to every request
    after that many; `requests` counts the chat requests answered 200."""

    def __init__(self, split: Any, reply: Any, fail_after: int | None = None):
        self.split, self.reply, self.fail_after = split, reply, fail_after
        self.lock = threading.Lock()
        self.requests = 0
        self.refused = 0
        judge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, obj: dict) -> None:
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [{"id": "rule-judge", "object": "model"}]})

            def do_POST(self) -> None:
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with judge.lock:
                    if judge.fail_after is not None and judge.requests >= judge.fail_after:
                        judge.refused += 1
                        self._send(503, {"error": {"message": "judge overloaded", "type": "server_error"}})
                        return
                    judge.requests += 1
                text = req["messages"][-1]["content"]
                answer = judge.reply(*judge.split(text))
                if isinstance(answer, int):  # an HTTP error status for this request
                    self._send(
                        answer, {"error": {"message": f"rule judge refuses ({answer})", "type": "invalid"}}
                    )
                    return
                self._send(
                    200,
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "model": req["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": answer},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": len(text.split()),
                            "completion_tokens": len(answer.split()),
                        },
                    },
                )

        self.server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RuleJudgeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------------------------------------------
# A scripted endpoint: completions and chat replies from a function, sent whole or trickled


class ScriptedServer:
    """A loopback OpenAI-compatible server (GET /v1/models, POST /v1/completions and /v1/chat/completions) whose
    reply text comes from `reply(body) -> str` (a completions choice's text, a chat choice's message content; as
    many choices as the request's n). `trickle`: seconds between the bytes of a reply's body, sent one at a time
    (a server that is never silent for long, but never done either). `ignore_n`: one choice whatever n asks (as
    llama.cpp's server and `transformers serve` do). `requests` counts the POSTs answered."""

    def __init__(self, reply: Any, trickle: float = 0.0, ignore_n: bool = False):
        self.reply, self.trickle, self.ignore_n = reply, trickle, ignore_n
        self.lock = threading.Lock()
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, obj: dict) -> None:
                body = json.dumps(obj).encode()  # ensure_ascii: a lone surrogate goes out as a \udcXX escape
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if not server.trickle:
                        self.wfile.write(body)
                        return
                    for i in range(len(body)):
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                        time.sleep(server.trickle)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up
                    pass

            def do_GET(self) -> None:
                self._send({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

            def do_POST(self) -> None:
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with server.lock:
                    server.requests += 1
                chat = self.path.endswith("/chat/completions")
                choices = []
                for i in range(1 if server.ignore_n else int(req.get("n") or 1)):
                    text = server.reply(req)
                    choice = {"index": i, "finish_reason": "stop"}
                    choice.update(
                        {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
                    )
                    choices.append(choice)
                self._send(
                    {
                        "id": "x",
                        "object": "chat.completion" if chat else "text_completion",
                        "model": req.get("model"),
                        "choices": choices,
                        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
                    }
                )

        self.server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------------------------------------------
# A GGUF file of a tiny transformers Llama, for llama.cpp


def _permute_rope(w: Any, n_head: int) -> Any:
    """HF Llama keeps q/k rows in rotate-half order; GGML's Llama rope wants the two halves interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model_dir: Path, out: Path, add_bos: bool = False) -> Path:
    """Write a transformers Llama folder (byte-level BPE tokenizer) as a float32 GGUF file with the `gguf`
    package: the tensors under llama.cpp's names and the tokenizer as a GPT-2 style BPE (tokens, types, merges)."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    cfg = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    assert cfg["model_type"] == "llama" and tok["model"]["type"] == "BPE"
    tensors = load_file(str(model_dir / "model.safetensors"))
    n_head, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("plad-test-tiny")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(cfg["hidden_size"] // n_head)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(
        float((cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 1e4)))
    )
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    special = {t["id"]: t["content"] for t in tok["added_tokens"]}
    tokens = [special.get(i, t) for t, i in vocab]
    for i, content in special.items():
        if i >= len(tokens):
            tokens.append(content)
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_pad_token_id(
        cfg.get("pad_token_id") if cfg.get("pad_token_id") is not None else cfg["eos_token_id"]
    )
    w.add_add_bos_token(add_bos)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }  # fmt: skip
    if "lm_head.weight" not in tensors:  # tied embeddings
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    for name, value in tensors.items():
        value = value.astype(np.float32)
        if name in names:
            w.add_tensor(names[name], value)
            continue
        _, _, layer, rest = name.split(".", 3)
        part = rest.rsplit(".", 1)[0]
        if part == "self_attn.q_proj":
            value = _permute_rope(value, n_head)
        elif part == "self_attn.k_proj":
            value = _permute_rope(value, n_kv)
        w.add_tensor(f"blk.{layer}.{per_layer[part]}.weight", value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
