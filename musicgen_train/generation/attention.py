"""The decode loop's attention, grouped so that a row's result never depends on its companions.

One attention call over the whole batch needs padding and a mask where rows differ: prompts of
different lengths (cross-attention) or rows at different positions (self-attention, a row that
joined a running batch). Masked keys contribute exactly zero, but the kernel then sums over a
longer, padded row, in another order: the row's output changes in its last float bits. At fp32
that almost never flips a sampled token; at int8 such a bit can move an activation across a
rounding boundary of its quantisation, and on musicgen-small's shape 34 of 400 tokens changed
with the batch although every int8 Linear is row-independent (``int8.py``).

So on the normal (non-graphed) path, rows that would need padding are attended in groups that
need none: cross-attention per prompt length, self-attention per run of neighbouring cache
slots at the same position (views of the cache, no copy). A row then goes through exactly the
kernel call it gets alone (per (row, head) the kernel does not depend on the batch size). The
static-shape step that CUDA graphs replay keeps the padded, masked single call.
"""

from __future__ import annotations

import torch


def cross_groups(rows, num_layers: int, device) -> list[tuple]:
    """Conditional rows grouped by prompt length: ``(index, keys, values)`` per group, index a
    tensor of row positions in the batch, keys/values per layer ``[rows, H, L, D]``, unpadded.
    Empty when all prompts have the same length (one call, no mask, needs no grouping)."""
    by_length: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        by_length.setdefault(row.cross[0][0].shape[2], []).append(i)
    if len(by_length) <= 1:
        return []
    groups = []
    for members in by_length.values():
        keys = [
            torch.cat([rows[i].cross[layer][0] for i in members]) for layer in range(num_layers)
        ]
        values = [
            torch.cat([rows[i].cross[layer][1] for i in members]) for layer in range(num_layers)
        ]
        groups.append((torch.tensor(members, device=device), keys, values))
    return groups


def position_runs(positions: list[int]) -> list[tuple[int, int, int]]:
    """``(first slot, end slot, position)`` for each run of neighbouring slots at one position."""
    runs: list[tuple[int, int, int]] = []
    for slot, position in enumerate(positions):
        if runs and runs[-1][2] == position and runs[-1][1] == slot:
            runs[-1] = (runs[-1][0], slot + 1, position)
        else:
            runs.append((slot, slot + 1, position))
    return runs


def cross_attention_grouped(loop, attn, q: torch.Tensor, groups: list, layer: int):
    """``q`` ``[cond, H, 1, D]`` -> output ``[cond, 1, H, D]``, one call per prompt length."""
    out = None
    for index, keys, values in groups:
        part, _ = loop.attention(
            attn,
            q.index_select(0, index),
            keys[layer],
            values[layer],
            None,
            dropout=0.0,
            scaling=attn.scaling,
        )
        if out is None:
            out = part.new_empty((q.shape[0], *part.shape[1:]))
        out.index_copy_(0, index, part)
    return out


def self_attention_runs(loop, attn, q: torch.Tensor, cache_k, cache_v, runs: list):
    """``q`` ``[S, H, 1, D]`` -> ``[S, 1, H, D]``: each run of slots attends to its own cache
    prefix (slot ``s`` at position ``p`` sees steps ``0..p``), no mask."""
    parts = []
    for first, end, position in runs:
        part, _ = loop.attention(
            attn,
            q[first:end],
            cache_k[first:end, :, : position + 1],
            cache_v[first:end, :, : position + 1],
            None,
            dropout=0.0,
            scaling=attn.scaling,
        )
        parts.append(part)
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def self_attention(loop, attn, q, cache_k, cache_v, length: int, mask, runs):
    """The step's self-attention: per run of slots (``runs``), else one call over the cache up to
    ``length`` with ``mask`` (None when every slot is at position ``length - 1``)."""
    if runs is not None:
        return self_attention_runs(loop, attn, q, cache_k, cache_v, runs)
    out, _ = loop.attention(
        attn,
        q,
        cache_k[:, :, :length],
        cache_v[:, :, :length],
        mask,
        dropout=0.0,
        scaling=attn.scaling,
    )
    return out


def cross_attention(loop, attn, q, layer: int, grouped: bool):
    """The conditional rows' cross-attention: per prompt length where lengths differ (and
    ``grouped``), else one call over the padded K/V with its mask."""
    if grouped and loop._cross_groups:
        return cross_attention_grouped(loop, attn, q, loop._cross_groups, layer)
    out, _ = loop.attention(
        attn,
        q,
        loop._cross_k[layer],
        loop._cross_v[layer],
        loop._cross_mask,
        dropout=0.0,
        scaling=attn.scaling,
    )
    return out
