# SPDX-License-Identifier: Apache-2.0
"""Deterministic packing of samples into token-budget packs, and the data position.

The data stream is defined over the whole dataset, independent of the number of ranks:

1. every epoch has its own order, a permutation seeded by ``(seed, epoch)``;
2. that order is cut greedily into *packs*: samples are appended while the pack stays
   within ``max_num_tokens``; a pack is closed as soon as it holds at least
   ``expected_num_tokens`` (or when the next sample would not fit, or at the epoch's
   end). Every sample of the order lands in exactly one pack, none is dropped;
3. an optimizer step consumes the next ``world_size * grad_accum`` packs of that one
   global stream; micro-batch ``j`` of rank ``r`` is pack ``j * world_size + r``.

Because packs depend only on the order and the token counts, the position after a step
is a pair ``(epoch, offset)``: the offset in that epoch's order of the first sample not
yet consumed. Saving it and restarting the stream there continues with exactly the next
unseen sample, whatever the world size of the resumed run (the reference shuffles and
then slices, which repeats and skips samples on resume).

Samples longer than ``max_num_tokens_per_sample`` must be removed before packing (the
dataset does so at build time and reports them); :class:`PackStream` refuses them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

__all__ = ["PackingConfig", "DataPosition", "Pack", "epoch_order", "PackStream", "StepPlanner"]


@dataclass(frozen=True)
class PackingConfig:
    expected_num_tokens: int
    max_num_tokens: int
    max_num_tokens_per_sample: int

    def __post_init__(self):
        if not 0 < self.expected_num_tokens <= self.max_num_tokens:
            raise ValueError(f"need 0 < expected_num_tokens ({self.expected_num_tokens}) <= "
                             f"max_num_tokens ({self.max_num_tokens})")
        if not 0 < self.max_num_tokens_per_sample <= self.max_num_tokens:
            raise ValueError(f"need 0 < max_num_tokens_per_sample ({self.max_num_tokens_per_sample}) <= "
                             f"max_num_tokens ({self.max_num_tokens})")


@dataclass(frozen=True)
class DataPosition:
    """Where the stream continues: sample ``offset`` of epoch ``epoch``'s order."""

    epoch: int = 0
    offset: int = 0

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    @classmethod
    def from_dict(cls, data: dict, where: str = "data position") -> "DataPosition":
        try:
            epoch, offset = data["epoch"], data["offset"]
        except (KeyError, TypeError):
            raise ValueError(f"{where}: expected {{'epoch': int, 'offset': int}}, got {data!r}") from None
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (epoch, offset)):
            raise ValueError(f"{where}: epoch and offset must be non-negative integers, got {data!r}")
        return cls(epoch, offset)


@dataclass(frozen=True)
class Pack:
    """One micro-batch: ``indices`` are dataset indices, taken from positions
    ``[start, end)`` of epoch ``epoch``'s order."""

    epoch: int
    start: int
    end: int
    indices: tuple[int, ...]
    num_tokens: int


def epoch_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The visiting order of epoch ``epoch``: a permutation of ``range(num_samples)``
    that depends only on (seed, epoch)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(epoch)])))
    return rng.permutation(num_samples)


class PackStream:
    """The global, infinite sequence of packs for a dataset of known sample lengths.

    ``lengths[i]``: tokens of dataset sample ``i`` (an upper bound is fine)."""

    def __init__(self, lengths: Sequence[int], config: PackingConfig, seed: int, shuffle: bool = True):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.lengths.ndim != 1 or len(self.lengths) == 0:
            raise ValueError("PackStream needs at least one sample")
        too_long = np.nonzero(self.lengths > config.max_num_tokens_per_sample)[0]
        if len(too_long):
            i = int(too_long[0])
            raise ValueError(f"{len(too_long)} sample(s) exceed max_num_tokens_per_sample="
                             f"{config.max_num_tokens_per_sample}, e.g. sample {i} with {int(self.lengths[i])} tokens")
        if (self.lengths <= 0).any():
            raise ValueError("sample lengths must be positive")
        self.config = config
        self.seed = seed
        self.shuffle = shuffle
        self._order_cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.lengths)

    def order(self, epoch: int) -> np.ndarray:
        if self._order_cache is None or self._order_cache[0] != epoch:
            order = epoch_order(len(self.lengths), self.seed, epoch) if self.shuffle else np.arange(len(self.lengths))
            self._order_cache = (epoch, order)
        return self._order_cache[1]

    def normalise(self, position: DataPosition) -> DataPosition:
        """(epoch, len) -> (epoch + 1, 0); an offset beyond the dataset is an error
        (the dataset changed size since the position was saved)."""
        if position.offset > len(self.lengths):
            raise ValueError(f"data position {position.to_dict()} is beyond the dataset's {len(self.lengths)} "
                             "samples: did the data files (data.rewards, data.samples) change since the checkpoint?")
        if position.offset == len(self.lengths):
            return DataPosition(position.epoch + 1, 0)
        return position

    def next_pack(self, position: DataPosition) -> tuple[Pack, DataPosition]:
        """The pack starting at ``position`` and the position after it."""
        position = self.normalise(position)
        order = self.order(position.epoch)
        cfg = self.config
        start = end = position.offset
        tokens = 0
        while end < len(order):
            n = int(self.lengths[order[end]])
            if tokens and tokens + n > cfg.max_num_tokens:
                break
            tokens += n
            end += 1
            if tokens >= cfg.expected_num_tokens:
                break
        pack = Pack(position.epoch, start, end, tuple(int(i) for i in order[start:end]), tokens)
        return pack, self.normalise(DataPosition(position.epoch, end))

    def packs(self, position: DataPosition) -> Iterator[tuple[Pack, DataPosition]]:
        """Infinite iterator of (pack, position after it) from ``position``."""
        while True:
            pack, position = self.next_pack(position)
            yield pack, position


class StepPlanner:
    """Splits the global pack stream into optimizer steps for one rank."""

    def __init__(self, stream: PackStream, world_size: int, rank: int, grad_accum: int = 1):
        if not 0 <= rank < world_size or grad_accum < 1:
            raise ValueError(f"bad rank layout: rank {rank}, world {world_size}, grad_accum {grad_accum}")
        self.stream = stream
        self.world_size = world_size
        self.rank = rank
        self.grad_accum = grad_accum

    @property
    def packs_per_step(self) -> int:
        return self.world_size * self.grad_accum

    def step(self, position: DataPosition) -> tuple[list[Pack], list[Pack], DataPosition]:
        """-> (this rank's packs in micro-batch order, all packs of the step, position after the step)."""
        all_packs = []
        for _ in range(self.packs_per_step):
            pack, position = self.stream.next_pack(position)
            all_packs.append(pack)
        mine = [all_packs[j * self.world_size + self.rank] for j in range(self.grad_accum)]
        return mine, all_packs, position
