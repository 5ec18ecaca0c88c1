"""Log lines on stderr: plad's own as `plad: message`, another library's under its own logger name."""

from __future__ import annotations

import logging
import re
import sys


class Format(logging.Formatter):
    """plad's own lines as `plad: message`; another library's (a warning of transformers, absl, ...) under its own
    logger name, so that nobody takes them for plad's."""

    def format(self, record: logging.LogRecord) -> str:
        record.source = "plad" if record.name.split(".")[0] == "plad" else record.name
        return super().format(record)


# Other libraries' warnings that say nothing to a plad user, by logger and start of message, with why:
HARMLESS = [
    # accelerate's save_state stores a tied weight once (every full fine-tuning checkpoint of a model with tied
    # embeddings); loading ties it again, and --resume is tested to continue bit for bit
    ("accelerate.utils.other", "Removed shared tensor"),
]


class _Harmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = re.sub(r"^\[RANK \d+\] ", "", record.getMessage())  # accelerate's per-process prefix
        return not any(record.name == name and message.startswith(start) for name, start in HARMLESS)


def setup_logging(quiet: bool = False, tag: str = "") -> None:
    """plad's logger at INFO (-q: WARNING); other libraries' loggers at WARNING (their INFO lines, like rouge-score's
    "Using default tokenizer.", are not shown). `tag` follows the source in every line (a bench worker's `[pid]`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Format(f"%(source)s{tag}: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_plad", False)]:  # main() called again in one process
        root.removeHandler(old)
    handler._plad = True  # type: ignore[attr-defined]
    handler.addFilter(_Harmless())
    if not root.handlers:
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("plad").setLevel(logging.WARNING if quiet else logging.INFO)
    for noisy in ("httpx", "accelerate", "torch.distributed", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
