"""train.group_by_length: batches of similar length, every item once per epoch, the order a pure function of
(seed, g) like the random one; and through `plad sft`, less padding in the forward for the same examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import Bench, main_inprocess

from plad.core.methods import Item
from plad.train.batches import GROUP_SPAN, BatchStream, item_length


def _items(n: int, seed: int = 0) -> list[Item]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 60, (n, 3), generator=gen).tolist()
    return [Item([7] * p, [8] * c, [9] * r) for p, c, r in lengths]


def test_item_length_is_the_row_its_batch_pads_to() -> None:
    assert item_length(Item([1, 2, 3], [4], [5, 6])) == 5  # prompt + the longer of chosen and rejected
    assert item_length(Item([1], [2, 3, 4])) == 4
    assert item_length(Item([1], [2], outputs=[[2], [3, 4, 5], [6]])) == 4  # plad-list: the longest output
    # train.shared_prompt: one row per prompt holding every output
    assert item_length(Item([1, 2, 3], [4], [5, 6]), shared_prompt=True) == 6
    assert item_length(Item([1], [2], outputs=[[2], [3, 4, 5], [6]]), shared_prompt=True) == 6


@pytest.mark.parametrize("n, batch", [(37, 4), (1000, 8), (8, 16)])
def test_grouped_epochs_hold_every_item_once_and_repeat_exactly(n: int, batch: int) -> None:
    items = _items(n)
    grouped, again = BatchStream(items, batch, 3, "main", True), BatchStream(items, batch, 3, "main", True)
    for epoch in range(2):
        seen = [id(it) for j in range(grouped.per_epoch) for it in grouped[epoch * grouped.per_epoch + j]]
        assert sorted(seen) == sorted(map(id, items))
    # random access (a resumed run starts at any g) gives what the sequential walk gave
    for g in (2 * grouped.per_epoch - 1, 0, grouped.per_epoch + 1):
        assert [id(x) for x in again[g]] == [id(x) for x in grouped[g]]


def test_grouping_cuts_padding_and_keeps_the_batch_order_random() -> None:
    items, batch = _items(1000), 8
    random, grouped = BatchStream(items, batch, 0, "main"), BatchStream(items, batch, 0, "main", True)

    def padding(stream: BatchStream) -> float:
        rows = [[item_length(it) for it in stream[g]] for g in range(stream.per_epoch)]
        return 1 - sum(map(sum, rows)) / sum(max(r) * len(r) for r in rows)

    assert padding(random) > 0.3 and padding(grouped) < 0.05
    # within a span of GROUP_SPAN batches the lengths are sorted, but the batches come in random order: the
    # first ten batches' longest rows are not monotone
    firsts = [max(item_length(it) for it in grouped[g]) for g in range(10)]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)
    assert GROUP_SPAN == 50


def test_shared_prompt_groups_by_the_shared_row() -> None:
    """Pairs whose two outputs differ in length: grouped by the shared-prompt row (prompt + both outputs) its
    rows are padded less than grouped by the longer prompt + output row."""
    items = _items(1000)

    def shared_padding(stream: BatchStream) -> float:
        rows = [[item_length(it, True) for it in stream[g]] for g in range(stream.per_epoch)]
        return 1 - sum(map(sum, rows)) / sum(max(r) * len(r) for r in rows)

    by_row = shared_padding(BatchStream(items, 8, 0, "main", True, shared_prompt=True))
    assert by_row < 0.02 < shared_padding(BatchStream(items, 8, 0, "main", True))


def test_sft_with_group_by_length_trains_the_same_examples_with_less_padding(
    bench: Bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import plad.train.loop as loop

    seen: dict[str, list[tuple[int, int]]] = {}
    real = loop.make_batch

    def spy(*args):
        batch = real(*args)
        mask = batch["main"]["attention_mask"]
        seen.setdefault(key, []).append((int(mask.sum()), mask.numel()))
        return batch

    monkeypatch.setattr(loop, "make_batch", spy)
    for key, flag in (("random", "false"), ("grouped", "true")):
        out = tmp_path / key
        args = ["sft", "--model", bench.student, "--train_file", bench.sft, "--output_dir", out]
        args += [
            "--train.max_steps",
            25,
            "--train.batch_size",
            8,
            "--train.group_by_length",
            flag,
            "--threads",
            1,
        ]
        assert main_inprocess(*args) == 0  # 25 x 8 = 200: one epoch of the bench's 200 examples
    real_tokens = {k: sum(r for r, _ in v) for k, v in seen.items()}
    padded = {k: sum(t for _, t in v) for k, v in seen.items()}
    assert real_tokens["random"] == real_tokens["grouped"]  # the same examples
    assert padded["grouped"] < 0.9 * padded["random"]
    assert "group_by_length: true" in (tmp_path / "grouped" / "plad_config.yaml").read_text()
