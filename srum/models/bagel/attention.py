# SPDX-License-Identifier: Apache-2.0
"""Attention over packed variable-length sequences.

Two backends compute the same thing:

* ``flash``: ``flash_attn_varlen_func`` from flash-attn (``flash_attn_with_kvcache`` for
  cached inference where it applies), used when the package is installed and the
  tensors are on CUDA in half precision;
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with an explicit
  boolean mask, used everywhere else (CPU, no flash-attn).

Training sequences are packed too; with flash-attn their mask is replaced by a
:class:`~srum.models.bagel.masks.SegmentPlan` (contiguous key ranges, two varlen calls),
so masked-out blocks between samples cost nothing.

Set ``SRUM_ATTN_BACKEND=sdpa`` to force SDPA on CUDA (e.g. to compare the two).

Tokens are packed: a tensor ``[N, heads, head_dim]`` holds the tokens of all sequences
one after another, and integer lengths say where each sequence starts. Grouped-query
attention (fewer key/value heads than query heads) is handled by both backends.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .masks import SegmentPlan

FLASH_IMPORT_ERROR: str | None = None   # why flash-attn is unusable here (None: imported, or not installed)
try:  # optional dependency; never required
    from flash_attn import flash_attn_varlen_func as _flash_varlen
    from flash_attn import flash_attn_with_kvcache as _flash_kvcache
except ModuleNotFoundError as _err:  # pragma: no cover - depends on the machine
    _flash_varlen = _flash_kvcache = None
    if _err.name not in ("flash_attn", None):   # installed, but something it needs is missing
        FLASH_IMPORT_ERROR = f"{type(_err).__name__}: {_err}"
except Exception as _err:  # noqa: BLE001 - a build for another torch/CUDA fails in many ways
    # (undefined symbols: OSError/ImportError; ABI checks: RuntimeError ...): fall back to
    # SDPA, but say why, instead of a silently slower run
    _flash_varlen = _flash_kvcache = None
    FLASH_IMPORT_ERROR = f"{type(_err).__name__}: {_err}"


def use_flash(x: torch.Tensor) -> bool:
    """Whether the flash-attn backend serves tensors like ``x``."""
    if _flash_varlen is None or not x.is_cuda or x.dtype not in (torch.float16, torch.bfloat16):
        return False
    return os.environ.get("SRUM_ATTN_BACKEND", "auto").lower() != "sdpa"


def attention_backend(device: torch.device | str, dtype: torch.dtype) -> str:
    """Which backend serves a model on ``device`` in ``dtype``, and why (one line for the
    start-up log)."""
    device = torch.device(device)
    if _flash_varlen is not None and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        if os.environ.get("SRUM_ATTN_BACKEND", "auto").lower() == "sdpa":
            return "sdpa (SRUM_ATTN_BACKEND=sdpa; flash-attn is installed)"
        import flash_attn
        return f"flash-attn {getattr(flash_attn, '__version__', '?')}"
    if FLASH_IMPORT_ERROR is not None:
        return f"sdpa (flash-attn is installed but BROKEN, so it is not used: {FLASH_IMPORT_ERROR})"
    if device.type != "cuda":
        return f"sdpa ({device.type})"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"sdpa ({str(dtype).replace('torch.', '')}: flash-attn needs bf16/fp16)"
    return "sdpa (flash-attn not installed: pip install flash-attn --no-build-isolation)"


@functools.cache
def log_attention_backend(device: str, dtype: torch.dtype) -> None:
    """Print the backend once per process, device and dtype (stderr; local rank 0 only, so
    eight ranks of a node print it once)."""
    if os.environ.get("LOCAL_RANK", "0") == "0":
        import sys
        print(f"srum: attention backend on {device} ({str(dtype).replace('torch.', '')}): "
              f"{attention_backend(device, dtype)}", file=sys.stderr, flush=True)


def _cu(lengths: torch.Tensor) -> torch.Tensor:
    return F.pad(torch.cumsum(lengths, 0), (1, 0)).to(torch.int32)


@dataclass
class PackedLayout:
    """Where each packed token of a batch of variable-length sequences sits.

    ``lengths`` [B] are the sequence lengths; ``row``/``col`` [N] give, for packed token
    n, its sequence and its index inside that sequence. Built once per forward and
    shared by every layer."""

    lengths: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    max_len: int

    @classmethod
    def from_lengths(cls, lengths: torch.Tensor) -> "PackedLayout":
        lengths = lengths.to(torch.long)
        device = lengths.device
        row = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)
        starts = torch.cumsum(lengths, 0) - lengths
        col = torch.arange(int(lengths.sum()), device=device) - starts[row]
        return cls(lengths, row, col, int(lengths.max()) if len(lengths) else 0)

    def to(self, device: torch.device) -> "PackedLayout":
        return PackedLayout(self.lengths.to(device), self.row.to(device), self.col.to(device), self.max_len)

    @property
    def uniform(self) -> bool:
        """Every sequence has the same length (padding adds nothing)."""
        return self.row.numel() == len(self.lengths) * self.max_len

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """[N, ...] -> [B, max_len, ...] with zeros in the padding."""
        out = packed.new_zeros((len(self.lengths), self.max_len, *packed.shape[1:]))
        out[self.row, self.col] = packed
        return out

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        """[B, max_len, ...] -> [N, ...]."""
        return padded[self.row, self.col]


def _sdpa(q, k, v, mask):
    """q [B, Hq, Lq, D], k/v [B, Hkv, Lk, D], mask broadcastable to [B, Hq, Lq, Lk] (True = attend)."""
    gqa = q.shape[1] != k.shape[1]
    if gqa and mask is not None and q.is_cuda:
        # CUDA's memory-efficient kernel takes a mask but not GQA; with enable_gqa SDPA would fall
        # back to the math kernel, which materialises [Hq, Lq, Lk] scores (GBs per layer at 9k
        # tokens). Repeating the K/V heads costs only Lk * Hq * D.
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        gqa = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def varlen_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """Full (bidirectional) attention within each packed sequence.

    q [N, Hq, D], k/v [N, Hkv, D] -> [N, Hq, D]. Used by the ViT, one sequence per image."""
    if use_flash(q):
        cu = _cu(layout.lengths)
        return _flash_varlen(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=layout.max_len,
                             max_seqlen_k=layout.max_len, causal=False)
    qp, kp, vp = (layout.pad(t).transpose(1, 2) for t in (q, k, v))
    mask = None  # images of one size: no padding, and SDPA runs faster without a mask
    if not layout.uniform:
        idx = torch.arange(layout.max_len, device=q.device)
        mask = (idx[None, :] < layout.lengths[:, None])[:, None, None, :]  # [B, 1, 1, L]
    out = _sdpa(qp, kp, vp, mask)
    return layout.unpad(out.transpose(1, 2))


@dataclass
class CachedLayout:
    """Queries of one inference call against a key/value cache with one row per sequence.

    Row b already holds ``past[b]`` cached tokens; the call adds ``query.lengths[b]``
    tokens written at cache slots ``past[b] .. past[b] + query.lengths[b] - 1``. With
    ``causal`` a query at slot s sees slots <= s (text); otherwise it sees every slot up
    to the row's new end (an image block sees itself whole and all its context)."""

    query: PackedLayout
    past: torch.Tensor
    causal: bool

    def to(self, device: torch.device) -> "CachedLayout":
        return CachedLayout(self.query.to(device), self.past.to(device), self.causal)

    # The layout is shared by every layer of a forward: what needs a device-to-host read
    # is computed once, not once per layer.
    @functools.cached_property
    def total(self) -> torch.Tensor:
        return self.past + self.query.lengths

    @functools.cached_property
    def key_len(self) -> int:
        """Keys of the longest row after this call."""
        return int(self.total.max())

    @functools.cached_property
    def all_keys_visible(self) -> bool:
        """Non-causal and every row ``key_len`` long: no query has a key hidden from it."""
        return not self.causal and bool(self.total.numel()) and int(self.total.min()) == self.key_len

    @functools.cached_property
    def fills_query_block(self) -> bool:
        """Every row with new tokens has ``query.max_len`` of them (decoding: one each)."""
        lengths = self.query.lengths
        return bool(((lengths == 0) | (lengths == self.query.max_len)).all())

    @property
    def slot(self) -> torch.Tensor:
        """Cache slot of every packed query token [N]."""
        return self.past[self.query.row] + self.query.col

    def mask(self, key_len: int) -> torch.Tensor | None:
        """[B, 1, Lq, key_len] boolean attention mask for SDPA, or None when every query
        may see every key (:attr:`all_keys_visible`): SDPA without a mask skips the
        masking work. Padded query positions see anything; they are dropped."""
        device = self.past.device
        if key_len == self.key_len and self.all_keys_visible:
            return None
        k_idx = torch.arange(key_len, device=device)
        limit = self.total[:, None, None]
        if self.causal:
            q_pos = self.past[:, None] + torch.arange(self.query.max_len, device=device)[None, :]
            limit = torch.minimum(limit, q_pos[:, :, None] + 1)
        return (k_idx[None, None, :] < limit)[:, None]


def _reads_cache_in_place(layout: CachedLayout) -> bool:
    """Whether ``flash_attn_with_kvcache`` computes our rule for this call. Its causal mask
    is aligned to the bottom right of the padded query block, so every row that has new
    tokens must fill that block (true when decoding: one token per live row); non-causal
    calls see every slot up to the row's end anyway. Padded queries are dropped."""
    return _flash_kvcache is not None and (not layout.causal or layout.fills_query_block)


def cached_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, layout: CachedLayout) -> torch.Tensor:
    """Attention of packed queries q [N, Hq, D] over cache rows [B, capacity, Hkv, D]
    (the new keys/values already written) -> [N, Hq, D]."""
    if use_flash(q) and _reads_cache_in_place(layout):
        # the kernel reads each row's first cache_seqlens slots where they are: no copy of
        # the cache per call, so a decoded token costs the same at any context length
        out = _flash_kvcache(layout.query.pad(q), k_cache, v_cache, cache_seqlens=layout.total.to(torch.int32),
                             causal=layout.causal)
        return layout.query.unpad(out)
    key_len = layout.key_len
    if use_flash(q):
        keys = PackedLayout.from_lengths(layout.total)
        k = k_cache[keys.row, keys.col]
        v = v_cache[keys.row, keys.col]
        # flash-attn aligns the causal mask to the bottom-right corner: query i of a row
        # sees the whole cached prefix plus new tokens <= i, which is our rule.
        return _flash_varlen(q, k, v, cu_seqlens_q=_cu(layout.query.lengths), cu_seqlens_k=_cu(layout.total),
                             max_seqlen_q=layout.query.max_len, max_seqlen_k=key_len, causal=layout.causal)
    qp = layout.query.pad(q).transpose(1, 2)
    kp = k_cache[:, :key_len].transpose(1, 2)
    vp = v_cache[:, :key_len].transpose(1, 2)
    out = _sdpa(qp, kp, vp, layout.mask(key_len))
    return layout.query.unpad(out.transpose(1, 2))


def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: "SegmentPlan") -> torch.Tensor:
    """The packed training attention as flash-attn varlen calls, one per attention kind.

    q [S, Hq, D], k/v [S, Hkv, D] -> [S, Hq, D]; ``plan`` (see
    :class:`~srum.models.bagel.masks.SegmentPlan`) says which keys each segment sees.
    Keys shared by several segments (a prompt seen by its own causal segment and by the
    image after it) are gathered once per segment; in backward their gradients add up."""
    out = q.new_empty(q.shape)
    for group, causal in ((plan.causal, True), (plan.full, False)):
        if group is None:
            continue
        # flash-attn aligns the causal mask bottom-right: query i of a segment sees the
        # whole run before the segment and the segment's keys <= i
        out[group.q_index] = _flash_varlen(
            q[group.q_index], k[group.k_index], v[group.k_index], cu_seqlens_q=group.cu_q, cu_seqlens_k=group.cu_k,
            max_seqlen_q=group.max_q, max_seqlen_k=group.max_k, causal=causal)
    return out


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention over one packed training sequence with an explicit mask.

    q [S, Hq, D], k/v [S, Hkv, D], mask [S, S] boolean (True = query row may see key
    column) -> [S, Hq, D]. Rows with no visible key (never produced by our masks) give 0."""
    out = _sdpa(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], mask[None, None])
    return out[0].transpose(0, 1)
