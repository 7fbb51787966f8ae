# SPDX-License-Identifier: Apache-2.0
"""A preallocated key/value cache with one row per sequence.

Each layer owns two tensors ``[rows, capacity, kv_heads, head_dim]``. A row keeps
``lengths[row]`` committed tokens and the RoPE position its next token takes
(``next_pos[row]``: images occupy many slots but one position). New tokens are
written in place at slots ``lengths .. lengths + n - 1``; :meth:`commit` makes them
part of the context, otherwise they are scratch that the next call overwrites (CFG
and flow-matching steps). Decoding therefore never re-allocates per token; the
buffer only grows (doubling) if a caller under-estimated the capacity.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, layer_devices: list[torch.device], rows: int, capacity: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        """One key and one value buffer per layer, each on its layer's device;
        ``device`` holds the bookkeeping (lengths, positions)."""
        shape = (rows, max(capacity, 1), kv_heads, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=d) for d in layer_devices]
        self.values = [torch.zeros(shape, dtype=dtype, device=d) for d in layer_devices]
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)
        self.next_pos = torch.zeros(rows, dtype=torch.long, device=device)

    @property
    def rows(self) -> int:
        return self.lengths.shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[1]

    def ensure_capacity(self, needed: int) -> None:
        """Make room for ``needed`` slots per row (grows by doubling, copying once)."""
        if needed <= self.capacity:
            return
        new_cap = max(needed, 2 * self.capacity)
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                new = old.new_zeros((old.shape[0], new_cap, *old.shape[2:]))
                new[:, : old.shape[1]] = old
                store[i] = new

    def commit(self, added: torch.Tensor, positions_used: torch.Tensor) -> None:
        """Keep the last written tokens: ``added`` [rows] new slots per row, and advance
        each row's next RoPE position by ``positions_used`` [rows]."""
        self.lengths += added.to(self.lengths)
        self.next_pos += positions_used.to(self.next_pos)

    def copy_rows(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Make rows ``dst`` [n] exact copies of rows ``src`` [n] (contents and bookkeeping),
        e.g. to reuse one image prefill for every question about that image."""
        for store in (self.keys, self.values):
            for buf in store:
                buf[dst.to(buf.device)] = buf[src.to(buf.device)]
        self.lengths[dst] = self.lengths[src]
        self.next_pos[dst] = self.next_pos[src]

    def row_view(self, start: int, stop: int) -> "KVCache":
        """Rows ``start:stop`` as a cache that shares this one's storage (views, no copy):
        what is written through it lands here. Only for a cache already sized, since
        growing the view would detach it (e.g. one CFG branch's rows per forward)."""
        out = KVCache.__new__(KVCache)
        out.keys = [k[start:stop] for k in self.keys]
        out.values = [v[start:stop] for v in self.values]
        out.lengths = self.lengths[start:stop]
        out.next_pos = self.next_pos[start:stop]
        return out

    def select(self, rows: torch.Tensor) -> "KVCache":
        """A new cache made of copies of the given rows (e.g. to fork a context into
        several CFG branches, or repeat one context for N samples)."""
        out = KVCache.__new__(KVCache)
        out.keys = [k[rows].clone() for k in self.keys]
        out.values = [v[rows].clone() for v in self.values]
        out.lengths = self.lengths[rows].clone()
        out.next_pos = self.next_pos[rows].clone()
        return out
