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


class BatchStream:
    """Micro-batch number g -> the items in it: epochs of seeded permutations, no state to save."""

    def __init__(self, items: list[Item], batch_size: int, seed: int, name: str):
        self.items, self.batch_size, self.seed, self.name = items, batch_size, seed, name
        self.per_epoch = math.ceil(len(items) / batch_size)
        self._perm_epoch, self._perm = -1, None

    def __getitem__(self, g: int) -> list[Item]:
        epoch, j = divmod(g, self.per_epoch)
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, self.name, epoch))
            self._perm, self._perm_epoch = torch.randperm(len(self.items), generator=gen).tolist(), epoch
        return [self.items[i] for i in self._perm[j * self.batch_size : (j + 1) * self.batch_size]]


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
    ):
        self.batch_size, self.seed = batch_size, seed
        self.main = BatchStream(items, batch_size, seed, "main")
        self.reg = BatchStream(reg_items, batch_size, seed, "reg") if reg_items else None
        self.on_policy, self.refresh = on_policy, refresh

    def start_step(self, accelerator: Any, model: Any, step: int) -> None:
        """Before optimizer step `step`: a new round's items replace the old ones."""
        if self.refresh is not None and (fresh := self.refresh(accelerator, model, step)):
            self.main = BatchStream(fresh, self.batch_size, self.seed, "main")

    def micro_batch(self, model: Any, g: int) -> tuple[list[Item], list[Item] | None]:
        """Micro-batch number g (counted over every process): its items and its regulariser items."""
        reg = self.reg[g] if self.reg else None
        items = self.main[g]
        if self.on_policy is not None:
            items = self.on_policy(model, items, g)
        return items, reg
