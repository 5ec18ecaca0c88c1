"""Reference metrics of the DPKD paper: ROUGE-L F (rouge-score, with stemming) and SQuAD-style exact match.

They are scores of an output against its reference, reported next to the judge's win rates, not win rates.
"""

from __future__ import annotations

import re
import string
from functools import cache

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def squad_normalise(text: str) -> str:
    """SQuAD v1.1 answer normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_exact_match(output: str, reference: str) -> float:
    return float(squad_normalise(output) == squad_normalise(reference))


@cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(output: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of tokens, Porter stemming), as in DPKD's evaluation."""
    return float(_rouge_scorer().score(reference, output)["rougeL"].fmeasure)
