"""What the training loop trains on, as one object: micro-batch number g -> its items (and regulariser items).

The order is a pure function of (seed, g), epochs of seeded permutations with no state to save, so a resumed run
sees exactly the batches it would have seen. Two stage behaviours plug in here rather than into the loop: gkd's
on-policy samples replace a micro-batch's outputs (`on_policy`), and iterated PLaD's rounds swap the items at the
start of a round (`refresh`); both are built in plad.train.stages.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from plad.core.methods import Item
from plad.utils.seeds import derive_seed

GROUP_SPAN = 50  # batches per length-sorted group (transformers' LengthGroupedSampler uses the same 50)


def item_length(it: Item, shared_prompt: bool = False) -> int:
    """The row length an item pads its batch to: the prompt and its longest output (a pair's two rows, a list's
    outputs and the prompt are padded to one length in the forward); with shared_prompt (train.shared_prompt: one
    row per prompt holding all its outputs) the prompt and all its outputs."""
    outputs = it.outputs or [it.chosen, *([it.rejected] if it.rejected is not None else [])]
    return len(it.prompt) + (sum if shared_prompt else max)(len(o) for o in outputs)


class BatchStream:
    """Micro-batch number g -> the items in it: epochs of seeded permutations, no state to save.

    group_by_length: each epoch's permutation is cut into spans of GROUP_SPAN batches, each span sorted by
    item_length so a batch holds items of similar length (less padding), and the batches' order is then drawn
    at random; every item still comes once per epoch, and the order is still a pure function of (seed, g).
    shared_prompt: the lengths are those of shared-prompt rows (item_length)."""

    def __init__(
        self,
        items: list[Item],
        batch_size: int,
        seed: int,
        name: str,
        group_by_length: bool = False,
        shared_prompt: bool = False,
    ):
        self.items, self.batch_size, self.seed, self.name = items, batch_size, seed, name
        self.group_by_length, self.shared_prompt = group_by_length, shared_prompt
        self.per_epoch = math.ceil(len(items) / batch_size)
        self._perm_epoch, self._perm = -1, None

    def __getitem__(self, g: int) -> list[Item]:
        epoch, j = divmod(g, self.per_epoch)
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, self.name, epoch))
            perm = torch.randperm(len(self.items), generator=gen).tolist()
            self._perm = self._grouped(perm, gen) if self.group_by_length else perm
            self._perm_epoch = epoch
        return [self.items[i] for i in self._perm[j * self.batch_size : (j + 1) * self.batch_size]]

    def _grouped(self, perm: list[int], gen: torch.Generator) -> list[int]:
        bs, span = self.batch_size, self.batch_size * GROUP_SPAN
        lengths = [item_length(it, self.shared_prompt) for it in self.items]
        order = [
            i for s in range(0, len(perm), span) for i in sorted(perm[s : s + span], key=lengths.__getitem__)
        ]
        batches = [order[s : s + bs] for s in range(0, len(order), bs)]
        return [i for b in torch.randperm(len(batches), generator=gen).tolist() for i in batches[b]]


class TrainData:
    """The items of every micro-batch of a run.

    reg_items: the regulariser's batches (e.g. dataset targets for the chosen-CE term), drawn alongside.
    on_policy: (model, items, g) -> items whose outputs may be replaced by fresh samples of the current model
        (gkd); it must be deterministic in g for a resumed run to repeat it.
    refresh: (accelerator, model, step) -> new items or None, called before every optimizer step (iterated PLaD's
        rounds); a resumed run must get the same items for the same step (the stage stores them).
    """

    def __init__(
        self,
        items: list[Item],
        batch_size: int,
        seed: int,
        reg_items: list[Item] | None = None,
        on_policy: Callable[[Any, list[Item], int], list[Item]] | None = None,
        refresh: Callable[[Any, Any, int], list[Item] | None] | None = None,
        group_by_length: bool = False,
        shared_prompt: bool = False,
    ):
        self.batch_size, self.seed, self.group_by_length = batch_size, seed, group_by_length
        self.shared_prompt = shared_prompt
        self.main = BatchStream(items, batch_size, seed, "main", group_by_length, shared_prompt)
        self.reg = BatchStream(reg_items, batch_size, seed, "reg", group_by_length) if reg_items else None
        self.on_policy, self.refresh = on_policy, refresh

    def start_step(self, accelerator: Any, model: Any, step: int) -> None:
        """Before optimizer step `step`: a new round's items replace the old ones."""
        if self.refresh is not None and (fresh := self.refresh(accelerator, model, step)):
            self.main = BatchStream(
                fresh, self.batch_size, self.seed, "main", self.group_by_length, self.shared_prompt
            )

    def micro_batch(self, model: Any, g: int) -> tuple[list[Item], list[Item] | None]:
        """Micro-batch number g (counted over every process): its items and its regulariser items."""
        reg = self.reg[g] if self.reg else None
        items = self.main[g]
        if self.on_policy is not None:
            items = self.on_policy(model, items, g)
        return items, reg
