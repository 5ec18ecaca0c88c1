"""Generated conditional-generation tasks for the offline benchmark.

Each task draws random prompts, knows the gold output, grades any output in [0, 1] with partial credit (so
preference methods have a signal finer than exact match) and can produce a close-but-wrong "human" reference
(so a corrupted SFT set leaves room for distillation to beat its own training data).

Scoring convention shared by all tasks: the content score is computed on tolerantly parsed tokens, and any
output that is not exactly the gold text (after stripping surrounding whitespace) is capped at
``NEAR_MISS_CAP``, so 1.0 means exactly right and right content in a sloppy format still scores high.
"""

from __future__ import annotations

import difflib
import random
import re
from abc import ABC, abstractmethod
from collections import Counter
from itertools import pairwise

NEAR_MISS_CAP = 0.95
SPLITS = ("sft", "val", "distill", "test")
LABELED_SPLITS = ("sft", "val", "test")
# Held-out splits are drawn first so that their prompts stay the same when training-set sizes change.
_DRAW_ORDER = ("test", "val", "sft", "distill")


def _norm_int(digits: str) -> str:
    """Canonical form of a digit string, compared as text so huge numbers in model samples never overflow."""
    return digits.lstrip("0") or "0"


def _lcs_len(a: list[str], b: list[str]) -> int:
    """Longest-common-subsequence length; O(len(a) * len(b)) time, O(len(b)) memory."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


class Task(ABC):
    """One generated task; subclasses are stateless, all randomness comes from the rng passed in."""

    name: str
    description: str

    @abstractmethod
    def make_prompt(self, rng: random.Random) -> str:
        """One random input, formatted as the full prompt text."""

    @abstractmethod
    def solve(self, prompt: str) -> str:
        """The gold output for ``prompt`` (with its leading space: the model sees prompt + target)."""

    @abstractmethod
    def score(self, prompt: str, output: str) -> float:
        """Graded quality of ``output`` in [0, 1]; 1.0 iff exactly correct; never raises on garbage output."""

    @abstractmethod
    def corrupt(self, prompt: str, target: str, rng: random.Random) -> str:
        """A close-but-wrong reference for ``target``: differs from it and scores strictly between 0 and 1."""

    def _finish(self, prompt: str, output: str, content: float) -> float:
        """Apply the shared exactness rule to a content score."""
        if output.strip() == self.solve(prompt).strip():
            return 1.0
        return min(max(content, 0.0), NEAR_MISS_CAP)


class CountSummary(Task):
    """Summarise a bag of letters as letter:count pairs, most frequent first, ties alphabetical.

    Score = F1 over (letter, count) pairs x order factor. Output pairs are the ``([a-z]):([0-9]+)`` matches;
    a repeated letter counts once (its first occurrence). With ``tp`` the number of output pairs equal to a
    gold pair, F1 = 2 tp / (|output pairs| + |gold pairs|). The order factor is 0.8 + 0.2 x the fraction of
    adjacent matched pairs (in output order) that are in gold relative order (1.0 with fewer than 2 matched
    pairs), so right pairs in the wrong order keep at least 80% of their credit.
    """

    name = "count-summary"
    description = "count the letters of a bag and list letter:count pairs, most frequent first"
    letters = "abcdefgh"
    min_len, max_len = 6, 14

    _prompt_re = re.compile(r"count:\s*([a-z](?:[ \t]+[a-z])*)[ \t]*\n[ \t]*summary:")
    _pair_re = re.compile(r"([a-z]):([0-9]+)")

    def make_prompt(self, rng: random.Random) -> str:
        n = rng.randint(self.min_len, self.max_len)
        active = rng.sample(self.letters, rng.randint(2, len(self.letters)))
        # Squared uniform weights make counts differ, so the ordering carries information.
        weights = [rng.uniform(0.1, 1.0) ** 2 for _ in active]
        while True:
            bag = rng.choices(active, weights=weights, k=n)
            if len(set(bag)) >= 2:
                return f"count: {' '.join(bag)}\nsummary:"

    def _bag(self, prompt: str) -> list[str]:
        m = self._prompt_re.fullmatch(prompt.strip())
        if m is None:
            raise ValueError(f"not a {self.name} prompt: {prompt!r}")
        return m.group(1).split()

    def _gold_pairs(self, prompt: str) -> list[tuple[str, int]]:
        counts = Counter(self._bag(prompt))
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))

    def solve(self, prompt: str) -> str:
        return "".join(f" {letter}:{count}" for letter, count in self._gold_pairs(prompt))

    def _parse(self, output: str) -> dict[str, str]:
        """Letter -> normalised count text, in output order, first occurrence of each letter wins."""
        pairs: dict[str, str] = {}
        for letter, digits in self._pair_re.findall(output):
            pairs.setdefault(letter, _norm_int(digits))
        return pairs

    def score(self, prompt: str, output: str) -> float:
        gold = {letter: str(count) for letter, count in self._gold_pairs(prompt)}
        rank = {letter: i for i, letter in enumerate(gold)}
        pred = self._parse(output)
        matched = [letter for letter, count in pred.items() if gold.get(letter) == count]
        if not matched:
            return self._finish(prompt, output, 0.0)
        f1 = 2 * len(matched) / (len(pred) + len(gold))
        in_order = sum(rank[a] < rank[b] for a, b in pairwise(matched))
        frac = in_order / (len(matched) - 1) if len(matched) > 1 else 1.0
        return self._finish(prompt, output, f1 * (0.8 + 0.2 * frac))

    def corrupt(self, prompt: str, target: str, rng: random.Random) -> str:
        """Either one count off by one (never to 0) or one pair dropped (only with >= 2 pairs)."""
        pairs = [(letter, int(digits)) for letter, digits in self._pair_re.findall(target)]
        if not pairs:
            raise ValueError(f"cannot corrupt a {self.name} target without letter:count pairs: {target!r}")
        i = rng.randrange(len(pairs))
        if len(pairs) >= 2 and rng.random() < 0.5:
            del pairs[i]
        else:
            letter, count = pairs[i]
            delta = rng.choice((-1, 1)) if count > 1 else 1
            pairs[i] = (letter, count + delta)
        return "".join(f" {letter}:{count}" for letter, count in pairs)


class SortNumbers(Task):
    """Sort a list of distinct integers in 0..99 ascending.

    Score = LCS(output numbers, gold numbers) / max(len(output numbers), len(gold numbers)), numbers being
    the ``[0-9]+`` runs of the output (leading zeros ignored); 0.0 when the output holds no number.
    """

    name = "sort-numbers"
    description = "sort 4 to 9 distinct integers in 0..99 ascending"
    min_len, max_len = 4, 9
    max_value = 99

    _prompt_re = re.compile(r"sort:\s*([0-9]+(?:[ \t]+[0-9]+)*)[ \t]*\n[ \t]*sorted:")

    def make_prompt(self, rng: random.Random) -> str:
        nums = rng.sample(range(self.max_value + 1), rng.randint(self.min_len, self.max_len))
        return f"sort: {' '.join(map(str, nums))}\nsorted:"

    def _numbers(self, prompt: str) -> list[int]:
        m = self._prompt_re.fullmatch(prompt.strip())
        if m is None:
            raise ValueError(f"not a {self.name} prompt: {prompt!r}")
        return [int(tok) for tok in m.group(1).split()]

    def solve(self, prompt: str) -> str:
        return "".join(f" {n}" for n in sorted(self._numbers(prompt)))

    def score(self, prompt: str, output: str) -> float:
        gold = [str(n) for n in sorted(self._numbers(prompt))]
        pred = [_norm_int(tok) for tok in re.findall(r"[0-9]+", output)]
        if not pred:
            return self._finish(prompt, output, 0.0)
        return self._finish(prompt, output, _lcs_len(gold, pred) / max(len(gold), len(pred)))

    def corrupt(self, prompt: str, target: str, rng: random.Random) -> str:
        """Either two adjacent numbers swapped or one number changed by one (staying in 0..99)."""
        nums = [int(tok) for tok in re.findall(r"[0-9]+", target)]
        if len(nums) < 2:
            raise ValueError(f"cannot corrupt a {self.name} target with fewer than 2 numbers: {target!r}")
        if rng.random() < 0.5:
            i = rng.randrange(len(nums) - 1)
            nums[i], nums[i + 1] = nums[i + 1], nums[i]
        else:
            i = rng.randrange(len(nums))
            if nums[i] == 0:
                nums[i] = 1
            elif nums[i] >= self.max_value:
                nums[i] -= 1
            else:
                nums[i] += rng.choice((-1, 1))
        return "".join(f" {n}" for n in nums)


TASKS: dict[str, Task] = {task.name: task for task in (CountSummary(), SortNumbers())}


def get_task(name: str) -> Task:
    """Look a task up by name; the error suggests close matches since names are typed on the command line."""
    try:
        return TASKS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(TASKS), n=3)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown task {name!r}.{hint} Known tasks: {', '.join(sorted(TASKS))}") from None


def generate_splits(
    task: str, sizes: dict[str, int], corrupt_frac: float, seed: int
) -> dict[str, list[dict]]:
    """Draw the benchmark's splits: labeled sft/val/test rows and the unlabeled distill prompts.

    Prompts are unique across all splits (no test leakage). All prompts come from one ``random.Random(seed)``
    before any corruption, so ``corrupt_frac`` never changes which prompts are drawn; test and val are drawn
    first so they do not change when sft/distill sizes do. In each labeled split exactly
    ``round(corrupt_frac * n)`` targets are replaced by ``Task.corrupt`` and flagged in ``meta.corrupted``.
    """
    t = get_task(task)
    unknown = sorted(set(sizes) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; known splits: {list(SPLITS)}")
    for split, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"size of split {split!r} must be a non-negative integer, got {n!r}")
    if not 0.0 <= corrupt_frac <= 1.0:
        raise ValueError(f"corrupt_frac must be in [0, 1], got {corrupt_frac!r}")

    rng = random.Random(seed)
    total = sum(sizes.values())
    max_draws = 10 * total + 1000
    seen: set[str] = set()
    prompts: dict[str, list[str]] = {}
    draws = 0
    for split in (s for s in _DRAW_ORDER if s in sizes):
        prompts[split] = []
        while len(prompts[split]) < sizes[split]:
            if draws >= max_draws:
                raise ValueError(
                    f"task {task!r} gave only {len(seen)} unique prompts in {draws} draws but {total} were "
                    f"requested ({sizes}); its input space is too small, ask for fewer rows"
                )
            draws += 1
            prompt = t.make_prompt(rng)
            if prompt not in seen:
                seen.add(prompt)
                prompts[split].append(prompt)

    out: dict[str, list[dict]] = {}
    for split in (s for s in SPLITS if s in sizes):
        ids = [f"{task}-{split}-{i:05d}" for i in range(sizes[split])]
        if split not in LABELED_SPLITS:
            out[split] = [{"id": i, "prompt": p} for i, p in zip(ids, prompts[split], strict=True)]
            continue
        corrupted = set(rng.sample(range(sizes[split]), round(corrupt_frac * sizes[split])))
        rows = []
        for k, (row_id, prompt) in enumerate(zip(ids, prompts[split], strict=True)):
            target = t.solve(prompt)
            if k in corrupted:
                target = t.corrupt(prompt, target, rng)
            rows.append(
                {"id": row_id, "prompt": prompt, "target": target, "meta": {"corrupted": k in corrupted}}
            )
        out[split] = rows
    return out
