"""Judges of `plad eval`: each turns (prompt, output, reference) comparisons into outcomes or scores.

- score judges give every text a number; a comparison is won by the higher one: `task` (the built-in task's graded
  scorer) and `reward-model` (any Hugging Face sequence classifier with one output);
- the pairwise judge `llm` asks an LLM over an OpenAI-compatible endpoint which of two texts is better, in both
  orders (A/B, then B/A): two agreeing verdicts decide, a disagreement is a tie (position bias cancels), a reply
  with no readable verdict leaves the comparison out and is counted. Replies are cached on disk, keyed by the
  exact request, so a re-run or a resumed crash never pays for a verdict twice;
- metric judges (`rouge`, `exact-match`) score an output against its reference; they give scores, not win rates.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import math
import re
from functools import partial
from pathlib import Path
from typing import Any

from plad.config import EvalConfig, LlmJudgeConfig, RewardModelOptions
from plad.endpoint.client import ApiError
from plad.utils import signals
from plad.utils.errors import ConfigError, DataError
from plad.utils.io import append_jsonl, read_jsonl, repair_torn_tail

log = logging.getLogger("plad")

# Pairwise prompts of the DPO paper's GPT-4 evaluation (Rafailov et al., 2023), which PLaD's evaluation follows.
TEMPLATES = {
    "tldr": (
        "Which of the following summaries does a better job of summarizing the most important points in the given "
        "forum post, without including unimportant or irrelevant details? A good summary is both precise and "
        "concise.\n\nPost:\n{prompt}\n\nSummary A:\n{a}\n\nSummary B:\n{b}\n\nFIRST provide a one-sentence "
        "comparison of the two summaries, explaining which you prefer and why. SECOND, on a new line, state only "
        '"A" or "B" to indicate your choice. Your response should use the format:\nComparison: <one-sentence '
        'comparison and explanation>\nPreferred: <"A" or "B">'
    ),
    "hh": (
        "For the following query to a chatbot, which response is more helpful?\n\nQuery: {prompt}\n\nResponse A:\n"
        "{a}\n\nResponse B:\n{b}\n\nFIRST provide a one-sentence comparison of the two responses and explain which "
        'you feel is more helpful. SECOND, on a new line, state only "A" or "B" to indicate which response is more '
        "helpful. Your response should use the format:\nComparison: <one-sentence comparison and explanation>\n"
        'More helpful: <"A" or "B">'
    ),
}

# 'Preferred: A', '**More helpful:** "B"', 'Verdict: tie', 'Answer: [A]' ... (the last one in the reply counts)
DEFAULT_VERDICT = (
    r"^[\s*#>_-]*(?:preferred|more helpful|better|verdict|answer|winner|choice|final answer)[^:\n]{0,20}:"
    r"[\s*_\"'\[(]*((?-i:A|B)|(?:a\s+)?tie)\b"
)  # the letters only in upper case: "Verdict: a tie" is a tie, not A


# HTTP statuses that concern one request (too long, refused content), not the endpoint: that comparison gets no
# verdict (kept, counted) and the others go on; any other error stops the run.
REQUEST_ERRORS = {400, 413, 422}


class ScoreJudge:
    """A judge that gives each (prompt, text) a number."""

    kind = "score"

    def __init__(self, name: str) -> None:
        self.name = name

    def scores(self, prompts: list[Any], texts: list[str]) -> list[float]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"judge": self.name}


class TaskJudge(ScoreJudge):
    def __init__(self, scorer: Any) -> None:
        super().__init__("task")
        self.scorer = scorer

    def scores(self, prompts: list[Any], texts: list[str]) -> list[float]:
        return [self.scorer.score(p, t) for p, t in zip(prompts, texts, strict=True)]

    def describe(self) -> dict:
        return {"judge": "task", "scorer": self.scorer.name}


def check_reward_model(opts: RewardModelOptions) -> Any:
    """The reward model's config, checked before any work: a sequence classifier with one output."""
    from plad.core.models import load_model_config
    from plad.utils.errors import ModelError

    name = opts.model
    if not name:
        raise ConfigError(
            "judge reward-model needs reward_model.model (a sequence-classifier folder or hub id)"
        )
    config = load_model_config(name, "reward model")
    archs = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ModelError(
            f"reward model {name} is not a sequence classifier (architectures: {', '.join(archs) or 'none'}); "
            "a reward model is saved from AutoModelForSequenceClassification with num_labels=1"
        )
    if config.num_labels != 1:
        raise ModelError(
            f"reward model {name} has {config.num_labels} outputs (num_labels); a reward model gives one score "
            "per text (num_labels=1)"
        )
    return config


class RewardModelJudge(ScoreJudge):
    """Scores prompt + output with a sequence classifier's single logit, in batches (right padding)."""

    def __init__(self, opts: RewardModelOptions) -> None:
        super().__init__("reward-model")
        import torch
        from transformers import AutoModelForSequenceClassification

        from plad.core.models import load_tokenizer

        check_reward_model(opts)
        self.opts = opts
        self.tok = load_tokenizer(
            opts.tokenizer or opts.model, "tokenizer" if opts.tokenizer else "reward model"
        )
        self.tok.padding_side = "right"
        self.tok.truncation_side = "left"  # a too-long text keeps the output it is about
        self.model = AutoModelForSequenceClassification.from_pretrained(opts.model, dtype=torch.float32)
        # the classifier pools the last token that is not config.pad_token_id: pad with exactly that id
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tok.pad_token_id
        elif self.tok.pad_token_id != self.model.config.pad_token_id:
            self.tok.pad_token_id = self.model.config.pad_token_id
        self.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        use_chat = {"true": True, "false": False}.get(
            opts.chat, bool(getattr(self.tok, "chat_template", None))
        )
        if use_chat and not getattr(self.tok, "chat_template", None):
            raise ConfigError(
                f"reward_model.chat=true but the tokenizer of {opts.model} has no chat template"
            )
        self.use_chat = use_chat
        self.truncated = 0

    def text(self, prompt: Any, output: str) -> str:
        if self.use_chat:
            messages = (
                [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            ) + [{"role": "assistant", "content": output}]
            return self.tok.apply_chat_template(messages, tokenize=False)
        if not isinstance(prompt, str):
            raise DataError(
                "the reward model has no chat template but the prompts are chat messages; set "
                "reward_model.tokenizer to one with a chat template"
            )
        return self.opts.template.replace("{prompt}", prompt).replace("{output}", output)

    def scores(self, prompts: list[Any], texts: list[str]) -> list[float]:
        import torch

        full = [self.text(p, t) for p, t in zip(prompts, texts, strict=True)]
        # chat templates put the special tokens in the text; a plain text gets the tokenizer's own (e.g. BOS)
        special = not self.use_chat
        lengths = [len(self.tok(f, add_special_tokens=special).input_ids) for f in full]
        self.truncated += sum(n > self.opts.max_length for n in lengths)
        order = sorted(range(len(full)), key=lambda i: -lengths[i])
        out = [0.0] * len(full)
        device = next(self.model.parameters()).device
        for start in range(0, len(order), self.opts.batch_size):
            idx = order[start : start + self.opts.batch_size]
            batch = self.tok(
                [full[i] for i in idx],
                add_special_tokens=special,
                padding=True,
                truncation=True,
                max_length=self.opts.max_length,
                return_tensors="pt",
            ).to(device)
            with torch.no_grad():
                logits = self.model(**batch).logits[:, 0].float().tolist()
            for i, v in zip(idx, logits, strict=True):
                out[i] = v
        return out

    def describe(self) -> dict:
        return {
            "judge": "reward-model",
            "model": self.opts.model,
            "chat_template": self.use_chat,
            "template": None if self.use_chat else self.opts.template,
            "max_length": self.opts.max_length,
            "truncated_texts": self.truncated,
        }


# -------------------------------------------------------------------------------------------------------------
# The LLM judge


def load_template(name: str) -> str:
    if name in TEMPLATES:
        return TEMPLATES[name]
    p = Path(name)
    if not p.is_file():
        raise ConfigError(
            f"llm_judge.template {name!r} is neither a shipped template ({', '.join(TEMPLATES)}) nor a file"
        )
    text = p.read_text()
    missing = [k for k in ("{prompt}", "{a}", "{b}") if k not in text]
    if missing:
        raise ConfigError(
            f"llm_judge.template {p} lacks {', '.join(missing)}; it needs {{prompt}}, {{a}} and {{b}}"
        )
    return text


def parse_verdict(reply: str | None, pattern: str = "") -> str | None:
    """'A', 'B' or 'tie' from a judge's reply (the last verdict line), None when there is none."""
    if reply is None:
        return None
    matches = re.findall(pattern or DEFAULT_VERDICT, reply, flags=re.IGNORECASE | re.MULTILINE)
    if matches:
        last = matches[-1]
        v = (last[0] if isinstance(last, tuple) else last).strip().strip("\"'*[]().").upper()
        return "tie" if v.endswith("TIE") else {"A": "A", "B": "B"}.get(v)
    bare = reply.strip().strip("\"'*[]().").upper()
    return {"A": "A", "B": "B"}.get(bare)


def combine(first: str | None, second: str | None) -> tuple[float, bool | None]:
    """Outcome for the system from (verdict with the system as A, verdict with the system as B), and whether the
    two orders agree. No verdict in either order: NaN (left out, counted); disagreement: a tie."""
    if first is None or second is None:
        return math.nan, None
    a = {"A": 1.0, "B": 0.0, "tie": 0.5}[first]
    b = {"B": 1.0, "A": 0.0, "tie": 0.5}[second]
    return (a, True) if a == b else (0.5, False)


class LlmJudge:
    """Pairwise verdicts from an LLM over an OpenAI-compatible endpoint, both orders, cached on disk."""

    kind = "pairwise"
    name = "llm"

    def __init__(self, cfg: LlmJudgeConfig, cache: Path, seed: int = 0) -> None:
        from plad.endpoint.client import Endpoint

        self.cfg = cfg
        self.template = load_template(cfg.template)
        self.endpoint = Endpoint(cfg.api, cfg.model, "llm judge", seed=seed)
        self.cache_path = cache
        self.cache: dict[str, dict] = {}
        try:  # a cache that cannot be written would lose every verdict paid for: refused before any request
            cache.parent.mkdir(parents=True, exist_ok=True)
            with cache.open("a"):
                pass
        except OSError as e:
            raise ConfigError(f"llm_judge.cache {cache} cannot be written: {e.strerror or e}") from None
        if cache.is_file():
            if repair_torn_tail(cache):
                log.warning("%s: dropped a torn last line (an interrupted write)", cache)
            for row in read_jsonl(cache):
                self.cache[row["key"]] = row
        self.requests = 0
        self.cache_hits = 0

    def render(self, prompt: Any, a: str, b: str) -> str:
        if not isinstance(prompt, str):  # a conversation: shown as role-tagged turns
            prompt = "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
        values = {"{prompt}": prompt, "{a}": a, "{b}": b}
        return re.sub(r"\{prompt\}|\{a\}|\{b\}", lambda m: values[m.group(0)], self.template)

    def request(self, prompt: Any, a: str, b: str) -> dict:
        text = self.render(prompt, a, b)
        params: dict[str, Any] = {"max_tokens": self.cfg.max_tokens, "temperature": self.cfg.temperature}
        if self.cfg.api.mode == "chat":
            system = (
                [{"role": "system", "content": self.cfg.api.system_prompt}]
                if self.cfg.api.system_prompt
                else []
            )
            params["messages"] = [*system, {"role": "user", "content": text}]
        else:
            params["prompt"] = text
        return params

    def key(self, params: dict) -> str:
        body = {
            "model": self.cfg.model,
            "mode": self.cfg.api.mode,
            "extra": self.cfg.api.extra_body,
            **params,
        }
        # surrogatepass: a text holding a lone surrogate still has a key (every other text keeps the key it had)
        text = json.dumps(body, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def compare(
        self,
        ids: list[str],
        prompts: list[Any],
        first: list[str],
        second: list[str],
        what: str,
        progress: Any,
    ) -> dict:
        """Outcomes of `first` against `second` per prompt (1 / 0.5 / 0 / NaN) with per-order verdicts: each pair
        asked in both orders (identical texts: a tie, no request), verdicts from the cache where paid for."""
        n = len(ids)
        plans: list[tuple[int, str, dict, str]] = []  # (row, order, params, key)
        identical = [first[i].strip() == second[i].strip() for i in range(n)]
        for i in range(n):
            if identical[i]:
                continue  # the same text: a tie, no request
            for order, (a, b) in (("ab", (first[i], second[i])), ("ba", (second[i], first[i]))):
                params = self.request(prompts[i], a, b)
                plans.append((i, order, params, self.key(params)))
        todo, seen = [], set()
        for plan in plans:  # a stored refusal (HTTP 400 ...) is asked again: it cost nothing and may pass now
            cached = self.cache.get(plan[3])
            if (cached is None or "error" in cached) and plan[3] not in seen:
                seen.add(plan[3])
                todo.append(plan)
        self.cache_hits += len(plans) - len(todo)
        if todo:
            self._ask(todo, ids, what, progress)
        if plans and all("error" in self.cache[p[3]] for p in plans):  # a setting is wrong, not the texts
            from plad.endpoint.client import ApiStopped

            raise ApiStopped(
                f"the llm judge refused every request ({self.cache[plans[0][3]]['error']}); check llm_judge.* "
                "(model, api.mode, api.extra_body, max_tokens)"
            )
        return self._tally(plans, identical)

    def _ask(self, todo: list[tuple], ids: list[str], what: str, progress: Any) -> None:
        """Ask the endpoint for every planned verdict (concurrently), each stored in the cache as it arrives."""
        from plad.endpoint.client import ApiStopped
        from plad.endpoint.pool import run_pool

        bar = progress(f"llm judge ({what})", len(todo))

        def on_rows(rows: list[dict]) -> None:
            for r in rows:
                self.cache[r["key"]] = r
            self.requests += len(rows)
            bar.update(len(rows))

        async def main() -> list:
            try:
                work = partial(self._ask_one, ids)
                store = partial(append_jsonl, self.cache_path)
                return await run_pool(todo, work, store, self.cfg.api.concurrency, on_rows)
            finally:
                await self.endpoint.close()

        try:
            failed = asyncio.run(main())
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise  # a full disk, not the endpoint: `plad` says so, and that the same command continues
            raise ApiStopped(
                f"llm judge: writing {self.cache_path} failed ({e.strerror or e}); the run stopped, the verdicts "
                "stored before it are kept"
            ) from None
        finally:
            bar.close()
        signals.raise_pending()  # interrupted: every verdict received is in the cache
        if failed:
            raise ApiStopped(
                f"{failed[0][1]}\nstopped: every verdict received so far is stored in {self.cache_path} "
                f"({self.requests} this run); run the same command again to ask only for the missing ones."
            )

    async def _ask_one(self, ids: list[str], plan: tuple, put: Any) -> None:
        """One verdict request; a request the server refuses for itself (REQUEST_ERRORS, e.g. over the judge's
        context) is kept with its error and counted; any other failure stops the run."""
        i, order, params, key = plan
        kind = "chat" if self.cfg.api.mode == "chat" else "completions"
        row = {"key": key, "id": ids[i], "order": order, "model": self.cfg.model}
        try:
            response = await self.endpoint.call(kind, **params)
        except ApiError as e:
            if e.status not in REQUEST_ERRORS:
                raise  # the endpoint, the key or the model is wrong: the run stops
            await put([{**row, "reply": None, "error": str(e)[:500]}])
            return
        choice = response.choices[0]
        message = choice.message if kind == "chat" else None
        reply = (message.content if message else None) if kind == "chat" else choice.text
        u = response.usage
        await put(
            [
                {
                    **row,
                    "reply": reply,
                    "endpoint": self.cfg.api.base_url,
                    "prompt_tokens": getattr(u, "prompt_tokens", None),
                    "completion_tokens": getattr(u, "completion_tokens", None),
                }
            ]
        )

    def _tally(self, plans: list[tuple], identical: list[bool]) -> dict:
        """Per-row outcomes from the cached verdicts of both orders, and the judge's consistency statistics."""
        n = len(identical)
        verdicts = {p[3]: parse_verdict(self.cache[p[3]]["reply"], self.cfg.verdict_regex) for p in plans}
        per_row: list[dict[str, Any]] = [{"ab": None, "ba": None} for _ in range(n)]
        for i, order, _, key in plans:
            per_row[i][order] = verdicts[key]
        outcomes, consistent = [], []
        for i in range(n):
            if identical[i]:
                outcomes.append(0.5)
                per_row[i] = {"identical": True}
                continue
            o, agree = combine(per_row[i]["ab"], per_row[i]["ba"])
            outcomes.append(o)
            if agree is not None:
                consistent.append(agree)
        parsed = [v for r in per_row for k, v in r.items() if k in ("ab", "ba") and v is not None]
        return {
            "outcomes": outcomes,
            "verdicts": per_row,
            "identical": sum(identical),
            "unparsed_replies": sum(v is None for v in verdicts.values()),
            "request_errors": sum("error" in self.cache[k] for k in verdicts),
            "replies": len(verdicts),
            "position_consistency": (sum(consistent) / len(consistent)) if consistent else None,
            "first_position_rate": (sum(v == "A" for v in parsed) / len(parsed)) if parsed else None,
        }

    def describe(self) -> dict:
        usage = self.endpoint.usage.as_dict(self.cfg.api)
        return {
            "judge": "llm",
            "model": self.cfg.model,
            "endpoint": self.cfg.api.base_url,
            "template": self.cfg.template,
            "verdict_regex": self.cfg.verdict_regex or DEFAULT_VERDICT,
            "max_tokens": self.cfg.max_tokens,
            "temperature": self.cfg.temperature,
            "mode": self.cfg.api.mode,
            "system_prompt": self.cfg.api.system_prompt,
            "requests_this_run": self.requests,
            "cached_verdicts_used": self.cache_hits,
            "cache": str(self.cache_path),
            "usage_this_run": usage,
        }


def check_judges(cfg: EvalConfig) -> None:
    """Everything about the judges that can be wrong, checked before any model is loaded or request sent."""
    judges = cfg.judges()
    if "task" in judges and not cfg.scorer:
        raise ConfigError("judge task needs scorer (a built-in task, `plad tasks`)")
    if "reward-model" in judges:
        check_reward_model(cfg.reward_model)
    if "llm" in judges:
        load_template(cfg.llm_judge.template)
        if not cfg.llm_judge.api.base_url or not cfg.llm_judge.model:
            raise ConfigError("judge llm needs llm_judge.model and llm_judge.api.base_url")
