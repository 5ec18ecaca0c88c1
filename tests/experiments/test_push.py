"""`plad push` (README, "Commands"): checked before the network; the calls it makes to huggingface_hub; and one
error line with the exit code of cli.main when the Hub cannot be reached (a closed local port), refuses the token
(a local server answering 401) or fails (500). No network is used."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import main_inprocess


def model_folder(root: Path) -> Path:
    """What `plad push` needs of a trained folder (the upload itself is never made here)."""
    folder = root / "plad-rank"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "plad_config.yaml").write_text("model: m\n")
    (folder / "train_summary.json").write_text("{}")
    (folder / "README.md").write_text("---\ntags: [plad]\n---\n# card\n")
    return folder


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def token(monkeypatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def push(folder: Path, *extra: object) -> int:
    return main_inprocess("-q", "push", "--folder", folder, "--repo_id", "me/tiny-plad", *extra)


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("plad push: error:"), err
    return err[0]


def test_unreachable_hub_is_one_line_and_exit_3(tmp_path: Path, token, monkeypatch, capsys) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    capsys.readouterr()
    assert push(model_folder(tmp_path)) == 3  # stopped by something outside plad: run it again later
    line = one_line(capsys)
    assert (
        f"cannot reach the Hub at {endpoint} (ConnectError" in line and "run the same command again" in line
    )


class _Hub(BaseHTTPRequestHandler):
    status = 500

    def _answer(self) -> None:
        body = json.dumps({"error": f"status {self.status}"}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize(
    "status, rc, expected",
    [
        (401, 2, "refused the token for me/tiny-plad (HTTP 401); use a token with write access"),
        (500, 3, "failed the upload to me/tiny-plad"),
    ],
)
def test_hub_answers_are_one_line(tmp_path: Path, token, capsys, status, rc, expected) -> None:
    handler = type("Hub", (_Hub,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_port}"
        capsys.readouterr()
        assert push(model_folder(tmp_path), "--endpoint", endpoint) == rc
        assert expected in one_line(capsys)
    finally:
        server.shutdown()
        server.server_close()


def test_the_calls_to_huggingface_hub(tmp_path: Path, token, monkeypatch, capsys) -> None:
    from huggingface_hub import HfApi

    calls: dict = {}

    class Commit:
        oid, commit_url = "abc123", "https://hub.example/me/tiny-plad/commit/abc123"

    monkeypatch.setattr(
        HfApi, "create_repo", lambda self, repo_id, **kw: calls.update(create=(repo_id, kw)) or "u"
    )
    monkeypatch.setattr(
        HfApi, "create_branch", lambda self, repo_id, **kw: calls.update(branch=(repo_id, kw))
    )
    monkeypatch.setattr(
        HfApi, "upload_folder", lambda self, **kw: calls.update(upload=(self.token, kw)) or Commit
    )
    folder = model_folder(tmp_path)
    capsys.readouterr()
    assert push(folder, "--private", "--revision", "v1", "--commit_message", "first") == 0
    assert json.loads(capsys.readouterr().out)["commit"] == "abc123"
    assert calls["create"] == ("me/tiny-plad", {"private": True, "exist_ok": True})
    assert calls["branch"] == ("me/tiny-plad", {"branch": "v1", "exist_ok": True})
    tok, kw = calls["upload"]
    assert tok == "hf_not_a_real_token" and kw["folder_path"] == str(folder) and kw["revision"] == "v1"
    assert (
        kw["commit_message"] == "first"
        and "checkpoints/**" in kw["ignore_patterns"]
        and ".*" in kw["ignore_patterns"]
    )


def test_no_token_is_refused_before_the_network(tmp_path: Path, monkeypatch, capsys) -> None:
    import huggingface_hub

    monkeypatch.delenv("MY_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # no `hf auth login` either
    capsys.readouterr()
    assert push(model_folder(tmp_path), "--token_env", "MY_HUB_TOKEN") == 2
    assert "no Hub token: set MY_HUB_TOKEN to a token with write access" in one_line(capsys)
