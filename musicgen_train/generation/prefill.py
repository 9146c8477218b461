"""A row's condition prefix and audio-prompt columns through the decoder in one forward, as
``generate`` prefills.

``DecodeLoop`` runs one token per cache slot per step; a row continuing F frames of audio would
spend F steps only writing its K/V cache. ``prefill_row`` computes the K/V of all F positions in
one causal forward (for the row's conditional slot and, with CFG, its null slot: the same ids)
and writes them into the static cache, as ``MusicgenDecoder.forward`` over ``input_ids`` of
length F does in ``generate``'s first call. A melody model's row puts its condition prefix
(``Row.prefix``: P positions of chroma and text states, the null slot its own) before those
columns, as ``MusicgenMelodyDecoder.forward`` concatenates ``encoder_hidden_states`` and the
input embeddings. The row then steps on from position P + F.
"""

from __future__ import annotations

import torch


def causal_mask(length: int, slots: int, eager: bool, dtype, device) -> torch.Tensor:
    """``[slots, 1, T, T]``: position i attends to 0..i (bool for sdpa, additive for eager)."""
    visible = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    visible = visible[None, None].expand(slots, 1, length, length)
    if not eager:
        return visible
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(visible, zero, torch.finfo(dtype).min)


def _input_states(loop, row, slots: list[int]) -> torch.Tensor:
    """``[slots, P + F, D]``: each slot's condition prefix (melody models), then the embeddings
    of the row's first F columns, plus the positions' sinusoids."""
    pattern, tokens = row.pattern[:, : row.forced], row.tokens[:, : row.forced]
    ids = torch.where(pattern == -1, tokens, pattern).to(loop.device)  # [K, F]
    decoder = loop.decoder
    embeds = sum(decoder.embed_tokens[k](ids[k]) for k in range(ids.shape[0]))  # [F, D]
    embeds = embeds.to(loop.dtype)[None].expand(len(slots), -1, -1)
    if row.prefix is not None:
        prefix = torch.stack([row.prefix[loop._slots[slot][1]] for slot in slots])
        embeds = torch.cat([prefix.to(embeds.dtype), embeds], dim=1)
    table = decoder.embed_positions.weights[: embeds.shape[1]]
    return embeds + table.to(device=embeds.device)


@torch.inference_mode()
def prefill_row(loop, row) -> None:
    """Write the K/V of ``row``'s condition prefix and first ``row.forced`` columns into its
    cache slots and advance it to step ``row.forced`` (no sampling: these inputs are known)."""
    slots = [i for i, (row_id, _) in enumerate(loop._slots) if row_id == row.id]
    hidden = _input_states(loop, row, slots)
    length = hidden.shape[1]
    heads, dim = loop.num_heads, loop.head_dim
    shape = (len(slots), length, heads, dim)
    mask = causal_mask(length, len(slots), loop.eager, loop.cache_dtype, loop.device)
    index = torch.tensor(slots, device=loop.device)
    for layer_index, layer in enumerate(loop.decoder.layers):
        attn = layer.self_attn
        q, k, v = project_qkv(attn, layer.self_attn_layer_norm(hidden), shape)
        k, v = k.to(loop.cache_dtype), v.to(loop.cache_dtype)
        loop._k[layer_index][index, :, :length] = k
        loop._v[layer_index][index, :, :length] = v
        out, _ = loop.attention(
            attn, q.to(loop.cache_dtype), k, v, mask, dropout=0.0, scaling=attn.scaling
        )
        hidden = hidden + attn.out_proj(out.reshape(len(slots), length, -1).to(hidden.dtype))
        if loop.cross_attends:
            # the conditional slot (first) only; a null slot's output is exactly zero
            attn = layer.encoder_attn
            x = layer.encoder_attn_layer_norm(hidden[:1])
            q = attn.q_proj(x).view(1, length, heads, dim).transpose(1, 2)
            cross_k, cross_v = row.cross[layer_index]
            out, _ = loop.attention(
                attn, q.to(loop.cache_dtype), cross_k, cross_v, None, dropout=0.0,
                scaling=attn.scaling,
            )  # fmt: skip
            attended = hidden[:1] + attn.out_proj(out.reshape(1, length, -1).to(hidden.dtype))
            hidden = torch.cat([attended, hidden[1:]]) if len(slots) > 1 else attended
        x = layer.final_layer_norm(hidden)
        hidden = hidden + layer.fc2(layer.activation_fn(layer.fc1(x)))
    row.step = row.forced
    row.prefilled = True


def project_qkv(attn, x: torch.Tensor, shape: tuple) -> tuple[torch.Tensor, ...]:
    """A self-attention's queries, keys and values ``[slots, heads, length, head_dim]`` (from a
    fused ``qkv_proj`` when ``precision.fuse_projections`` made one)."""
    if hasattr(attn, "qkv_proj"):
        q, k, v = attn.qkv_proj(x).chunk(3, dim=-1)
    else:
        q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    return tuple(t.reshape(shape).transpose(1, 2) for t in (q, k, v))
