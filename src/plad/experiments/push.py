"""`plad push`: a trained folder to a Hugging Face Hub model repository, through `huggingface_hub.HfApi`
(`create_repo`, then `upload_folder`: one commit).

What can be checked here is checked before the network is touched: the folder is a finished, saved model, and a
token is there. What goes wrong on the way is one line: a token the Hub refuses is the user's to change (exit 2); a
Hub that cannot be reached or fails is outside plad (`RemoteError`, exit 3), and the same command can be run again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from plad.config import PushConfig, require
from plad.train.model_card import CARD_FILE, CONFIG_FILE
from plad.utils.errors import ConfigError, RemoteError
from plad.utils.outputs import SUMMARY_FILE

log = logging.getLogger("plad")

# left out of the upload: resumable checkpoints (superseded by the model), lock files and other hidden files
IGNORE = ["checkpoints/**", ".*", "**/.*"]
HTTP_LIBRARIES = ("httpx", "httpx2", "requests", "urllib3", "aiohttp")


def check_folder(folder: Path) -> None:
    """A saved model whose training (when plad trained it) has finished."""
    if not folder.is_dir():
        raise ConfigError(f"folder {folder} does not exist; give the output_dir of a finished training run")
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"folder {folder} holds no config.json, so no saved model; give a folder written by save_pretrained "
            "(the output_dir of plad sft / distill / heal)"
        )
    if (folder / CONFIG_FILE).is_file() and not (folder / SUMMARY_FILE).is_file():
        raise ConfigError(
            f"folder {folder}: its training has not finished (no {SUMMARY_FILE}); finish it (--resume) first"
        )
    if not (folder / CARD_FILE).is_file():
        log.warning("%s has no model card (%s); it is uploaded without one", folder, CARD_FILE)


def token_of(cfg: PushConfig) -> str:
    from huggingface_hub import get_token

    token = os.environ.get(cfg.token_env, "") if cfg.token_env else ""
    token = token or get_token() or ""
    if not token:
        raise ConfigError(
            f"no Hub token: set {cfg.token_env or 'HF_TOKEN'} to a token with write access "
            "(https://huggingface.co/settings/tokens) or run `hf auth login`"
        )
    return token


def _remote_failure(e: Exception, endpoint: str, repo_id: str) -> Exception | None:
    """The error to report for a failure of the Hub or of the way to it; None for anything else (a bug)."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(e, OfflineModeIsEnabled):
        return ConfigError("HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it to push")
    if isinstance(e, HfHubHTTPError):
        status = getattr(e.response, "status_code", None)
        if status in (401, 403):
            return ConfigError(
                f"the Hub at {endpoint} refused the token for {repo_id} (HTTP {status}); use a token with write "
                "access to that namespace"
            )
        return RemoteError(
            f"the Hub at {endpoint} failed the upload to {repo_id}: {_first_line(e)}; run it again"
        )
    if type(e).__module__.split(".")[0] in HTTP_LIBRARIES or isinstance(e, OSError | TimeoutError):
        return RemoteError(
            f"cannot reach the Hub at {endpoint} ({type(e).__name__}: {_first_line(e)}); check the network (or "
            "HF_ENDPOINT / endpoint) and run the same command again"
        )
    return None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def run_push(cfg: PushConfig) -> dict[str, Any]:
    """`plad push`: create repo_id when missing (private if asked) and upload the folder as one commit."""
    require(cfg, "folder", "repo_id")
    folder = Path(cfg.folder)
    check_folder(folder)
    token = token_of(cfg)
    from huggingface_hub import HfApi, constants

    endpoint = cfg.endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    api = HfApi(endpoint=endpoint, token=token)
    message = cfg.commit_message or f"Upload {folder.resolve().name} with plad push"
    try:
        url = api.create_repo(cfg.repo_id, private=cfg.private, exist_ok=True)
        if cfg.revision:
            api.create_branch(cfg.repo_id, branch=cfg.revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=cfg.repo_id,
            folder_path=str(folder),
            commit_message=message,
            revision=cfg.revision or None,
            ignore_patterns=IGNORE,
        )
    except Exception as e:
        reported = _remote_failure(e, endpoint, cfg.repo_id)
        if reported is None:
            raise
        raise reported from e
    log.info("pushed %s to %s", folder, url)
    return {
        "repo": str(url),
        "commit": getattr(commit, "oid", None),
        "commit_url": getattr(commit, "commit_url", None),
    }
