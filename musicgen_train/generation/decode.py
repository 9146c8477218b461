"""MusicGen's decode loop over transformers' own modules and weights, with a static KV cache.

transformers' ``generate`` keeps its self-attention cache in a ``DynamicCache`` that concatenates
K and V in every layer at every step (a step at the end of a 30 s clip costs ~3x one at the
start) and runs the classifier-free-guidance null rows through cross-attention although their
encoder states are zero. This loop runs the same modules (``MusicgenDecoderLayer``'s norms,
projections, attention function, feed-forward and the LM heads) differently:

- prefill once per row: T5 encoder, ``enc_to_dec_proj``, the attention mask, and each layer's
  cross-attention K/V;
- a preallocated self-attention cache per layer, written in place at each row's position;
- CFG as one batch: conditional rows first, their null twins after them. A null row's encoder
  states are zero (transformers multiplies them by an all-zero mask), so its cross-attention
  output is exactly zero and is skipped;
- MusicGen's delay pattern from ``build_delay_pattern_mask`` / ``apply_delay_pattern_mask``;
- sampling as ``generate`` samples: logits in fp32, CFG ``uncond + (cond - uncond) * g``, then
  transformers' own temperature, top-k and top-p warpers in ``generate``'s order, softmax,
  ``torch.multinomial`` -- drawn from each row's own ``torch.Generator``.

Rows join (``add_row``) and leave (finished, stopped) a running batch between steps; each row has
its own sampling parameters, length, generator and hooks.

Melody models (``MusicgenMelodyForConditionalGeneration``) have no cross-attention: their
condition (chroma frames, then the text) is a prefix of the decoder's input
(``condition_prefix.py``). A melody row's prefix goes through the decoder once when it joins
(``prefill.prefill_row``) and fills the first ``P`` positions of its cache slots; its tokens then
sit at positions ``P, P + 1, ...``, so rows with prompts of different lengths are at different
positions and attend in groups (``attention.py``), never padded.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.musicgen.modeling_musicgen import eager_attention_forward

from musicgen_train.generation.attention import (
    cross_attention,
    cross_groups,
    position_runs,
    self_attention,
)
from musicgen_train.generation.condition_prefix import prefix_states
from musicgen_train.generation.prefill import prefill_row, project_qkv
from musicgen_train.generation.rows import (  # noqa: F401 (the loop's public names)
    GenerationInputError,
    Row,
    SamplingParams,
    frames_for,
    seeded_generator,
)
from musicgen_train.generation.text_condition import cross_kv


class DecodeLoop:
    """The running batch: ``add_row`` to join, ``step`` to advance every row by one token."""

    def __init__(self, model, processor, decoder=None, cache_dtype: torch.dtype | None = None):
        """``model``: a ``MusicgenForConditionalGeneration`` (its text encoder, projection and
        config); ``decoder``: the ``MusicgenForCausalLM`` to run (by default ``model.decoder``;
        a cast or quantised copy for other precisions); ``cache_dtype``: the K/V caches' dtype
        (default: the decoder's; attention reads the whole cache every step, so a narrower
        cache reads less memory)."""
        self.model = model
        self.processor = processor
        causal_lm = decoder if decoder is not None else model.decoder
        if hasattr(causal_lm, "get_base_model"):  # LoRA while training: the peft-wrapped layers
            causal_lm = causal_lm.get_base_model()
        self.causal_lm = causal_lm
        self.decoder = self.causal_lm.model.decoder  # MusicgenDecoder
        config = model.config.decoder
        self.config = config
        self.num_codebooks = config.num_codebooks
        self.pad_token_id = int(model.generation_config.pad_token_id)
        self.start_token_id = int(
            model.generation_config.decoder_start_token_id
            if model.generation_config.decoder_start_token_id is not None
            else config.decoder_start_token_id
        )
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.max_positions = int(config.max_position_embeddings)
        # Melody decoders' layers have no cross-attention: the condition is an input prefix.
        self.cross_attends = hasattr(self.decoder.layers[0], "encoder_attn")
        implementation = config._attn_implementation or "sdpa"
        self.eager = implementation == "eager"
        self.attention = ALL_ATTENTION_FUNCTIONS.get_interface(
            "eager" if self.eager else "sdpa", eager_attention_forward
        )
        self.cache_dtype = cache_dtype or self.dtype
        self.rows: list[Row] = []
        self._ids = itertools.count()
        self._k: list[torch.Tensor] = []  # per layer [S, H, capacity, D]
        self._v: list[torch.Tensor] = []
        self._slots: list[tuple[int, int]] = []  # per cache slot: (row id, 0 cond / 1 null)
        self._cross_k: list[torch.Tensor] = []
        self._cross_v: list[torch.Tensor] = []
        self._cross_mask = None
        self._cross_groups: list = []  # attention.cross_groups: prompts of different lengths
        self._layout_dirty = True
        # observer(row, scores): the fp32 next-token scores after CFG, before the warpers.
        self.observer: Callable[[Row, torch.Tensor], None] | None = None

    # --- properties ---------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.decoder.layer_norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.layer_norm.weight.dtype

    def max_new_tokens_limit(self, offset: int = 0) -> int:
        """Steps a row may take after a condition prefix of ``offset`` positions: one position
        per step, the start token included."""
        return self.max_positions - 1 - offset

    # --- joining ------------------------------------------------------------------------------

    @torch.inference_mode()
    def add_row(
        self,
        prompt: str,
        params: SamplingParams,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        on_step: Callable[[Row], None] | None = None,
        should_stop: Callable[[], str | None] | None = None,
        tag: object = None,
        prefix: torch.Tensor | None = None,
        chroma: torch.Tensor | None = None,
    ) -> Row:
        """Prefill one request and put it into the running batch (it advances at the next
        ``step``). Without ``generator`` or ``seed`` the row's seed is drawn from torch's global
        generator, so ``torch.manual_seed`` still makes a run repeatable. ``prefix``: codec codes
        ``[K, F]`` the row continues (an audio prompt), forced as ``generate`` forces the codes
        of ``input_values``; ``max_new_tokens`` steps are sampled after them. ``chroma``: a
        melody model's melody, ``[frames, 12]`` (``generate``'s ``input_features`` of one row;
        None: no melody, the null chroma)."""
        if not isinstance(prompt, str):
            raise GenerationInputError(f"prompt must be text, not {type(prompt).__name__}")
        if chroma is not None and self.cross_attends:
            raise GenerationInputError("a melody (chroma) needs a melody model")
        condition = None if self.cross_attends else prefix_states(self, prompt, chroma)
        offset = 0 if condition is None else int(condition[0].shape[0])
        steps = int(params.max_new_tokens)
        forced = 0 if prefix is None else int(prefix.shape[-1])
        limit = self.max_new_tokens_limit(offset) - forced
        if not 1 <= steps <= limit:
            after = f" after a prompt of {forced} frames" if forced else ""
            after += f" and a condition of {offset} positions" if offset else ""
            raise GenerationInputError(
                f"max_new_tokens={steps} is outside 1..{limit} (the model's position table{after})"
            )
        if generator is None:
            generator = seeded_generator(self.device, seed)
        length = forced + steps + 1
        tokens = torch.full((self.num_codebooks, length), self.pad_token_id, dtype=torch.long)
        start = torch.full((self.num_codebooks, 1), self.start_token_id, dtype=torch.long)
        if prefix is not None:  # generate's decoder_input_ids: the start column, then the codes
            start = torch.cat([start, prefix.to(torch.long).cpu()], dim=1)
        known, pattern = self.causal_lm.build_delay_pattern_mask(
            start, pad_token_id=self.start_token_id, max_length=length
        )
        tokens[:, : known.shape[-1]] = known.cpu()
        row = Row(
            id=next(self._ids),
            prompt=prompt,
            params=params,
            generator=generator,
            tokens=tokens,
            pattern=pattern.cpu(),
            cross=cross_kv(self, prompt) if condition is None else None,
            prefix=condition,
            on_step=on_step,
            should_stop=should_stop,
            tag=tag,
            warpers=params.warpers(),
            forced=forced,
        )
        self.rows.append(row)
        self._layout_dirty = True
        return row

    # --- the batch layout ---------------------------------------------------------------------

    def _relayout(self) -> None:
        """Rebuild the cache slots after rows joined or left: conditional rows first, then the
        null rows of those that use CFG; keep what cached rows already wrote."""
        slots = [(row.id, 0) for row in self.rows]
        slots += [(row.id, 1) for row in self.rows if row.params.cfg]
        capacity = max(row.offset + row.total_steps for row in self.rows)
        old = {slot: i for i, slot in enumerate(self._slots)}
        keep_new = [i for i, slot in enumerate(slots) if slot in old]
        keep_old = [old[slots[i]] for i in keep_new]
        used = max((row.position for row in self.rows), default=0)
        shape = (len(slots), self.num_heads, capacity, self.head_dim)
        new_k, new_v = [], []
        for layer in range(len(self.decoder.layers)):
            k = torch.zeros(shape, dtype=self.cache_dtype, device=self.device)
            v = torch.zeros(shape, dtype=self.cache_dtype, device=self.device)
            if keep_new and used:
                src = torch.tensor(keep_old, device=self.device)
                dst = torch.tensor(keep_new, device=self.device)
                k[dst, :, :used] = self._k[layer][src, :, :used]
                v[dst, :, :used] = self._v[layer][src, :, :used]
            new_k.append(k)
            new_v.append(v)
        self._k, self._v, self._slots = new_k, new_v, slots
        if self.cross_attends:
            self._relayout_cross()
        self._layout_dirty = False

    def _relayout_cross(self) -> None:
        """Cross-attention K/V for the conditional rows, padded to the longest prompt."""
        longest = max(row.cross[0][0].shape[2] for row in self.rows)
        padded = any(row.cross[0][0].shape[2] != longest for row in self.rows)
        self._cross_k, self._cross_v = [], []
        for layer in range(len(self.decoder.layers)):
            ks, vs = [], []
            for row in self.rows:
                k, v = row.cross[layer]
                pad = longest - k.shape[2]
                ks.append(torch.nn.functional.pad(k, (0, 0, 0, pad)) if pad else k)
                vs.append(torch.nn.functional.pad(v, (0, 0, 0, pad)) if pad else v)
            self._cross_k.append(torch.cat(ks))
            self._cross_v.append(torch.cat(vs))
        self._cross_mask = None
        if padded:
            lengths = torch.tensor([row.cross[0][0].shape[2] for row in self.rows])
            visible = torch.arange(longest)[None, :] < lengths[:, None]
            self._cross_mask = self._mask(visible.to(self.device))
        self._cross_groups = cross_groups(self.rows, len(self.decoder.layers), self.device)

    def _mask(self, visible: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` bool (True = attend) -> the attention function's ``[B, 1, 1, L]`` mask."""
        visible = visible[:, None, None, :]
        if not self.eager:
            return visible
        zero = torch.zeros((), dtype=self.cache_dtype, device=visible.device)
        return torch.where(visible, zero, torch.finfo(self.cache_dtype).min)

    # --- stepping -----------------------------------------------------------------------------

    def _drop_stopped(self) -> list[Row]:
        left = []
        for row in self.rows:
            if row.should_stop is not None and not row.finished:
                reason = row.should_stop()
                if reason is not None:
                    row.stop_reason = str(reason)
            if row.finished:
                left.append(row)
        if left:
            self.remove(left)
        return left

    def remove(self, rows: list[Row]) -> None:
        gone = {row.id for row in rows}
        self.rows = [row for row in self.rows if row.id not in gone]
        self._layout_dirty = True
        if not self.rows:
            self._k, self._v, self._slots = [], [], []

    @torch.inference_mode()
    def step(self) -> list[Row]:
        """Advance every row by one token; returns the rows that finished (or were stopped) and
        left the batch at this step."""
        left = self._drop_stopped()
        if not self.rows:
            return left
        if self._layout_dirty:
            self._relayout()
        for row in self.rows:
            if not row.prefilled and (row.forced > 0 or row.prefix is not None):
                prefill_row(self, row)  # a condition prefix, an audio prompt: in one forward
        rows = self.rows
        cond = len(rows)
        columns = torch.stack([row.delayed_ids()[:, -1] for row in rows])  # [R, K]
        cfg_index = [i for i, row in enumerate(rows) if row.params.cfg]
        ids = torch.cat([columns, columns[cfg_index]]) if cfg_index else columns
        positions = [row.position for row in rows] + [rows[i].position for i in cfg_index]
        logits = self._forward(ids.to(self.device), positions, cond)  # [S, K, V] fp32
        null_of = {i: cond + j for j, i in enumerate(cfg_index)}
        for i, row in enumerate(rows):
            scores = logits[i]
            if i in null_of:
                uncond = logits[null_of[i]]
                # ClassifierFreeGuidanceLogitsProcessor's formula, term for term.
                scores = uncond + (scores - uncond) * row.params.guidance_scale
            if self.observer is not None:
                self.observer(row, scores)
            for warper in row.warpers:
                scores = warper(None, scores)
            probs = torch.nn.functional.softmax(scores, dim=-1)
            generator = row.generator
            if generator.device != probs.device:
                probs = probs.to(generator.device)
            sampled = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
            row.step += 1
            row.tokens[:, row.step] = sampled.cpu()
            if row.on_step is not None:
                row.on_step(row)
        finished = [row for row in rows if row.finished]
        if finished:
            self.remove(finished)
        return left + finished

    def _forward(self, ids: torch.Tensor, positions: list[int], cond: int) -> torch.Tensor:
        """One token for each cache slot: ``ids`` ``[S, K]`` at ``positions`` -> fp32 logits
        ``[S, K, V]``. When every slot is at the same position, attention reads the cache up to
        it (no mask, what ``generate`` computes); otherwise each slot masks what lies past its
        own position (``attention.py``: grouped, so no row's result depends on the others)."""
        if len(set(positions)) == 1:
            return self._run(ids, None, positions[0] + 1, cond)
        index = torch.tensor(positions, device=self.device)
        return self._run(ids, index, max(positions) + 1, cond, position_runs(positions))

    def _forward_static(self, ids: torch.Tensor, index: torch.Tensor, cond: int) -> torch.Tensor:
        """The same step with shapes that never change between steps (attention over the whole
        cache, masked past each slot's position): what a CUDA graph can replay."""
        return self._run(ids, index, self._k[0].shape[2], cond, grouped=False)

    def _run(self, ids, index, length: int, cond: int, runs=None, grouped=True) -> torch.Tensor:
        """Mirrors ``MusicgenDecoder.forward`` / ``MusicgenDecoderLayer.forward`` for one token
        per slot; ``index`` None: all slots at position ``length - 1``. ``runs``: self-attention
        per run of slots at one position; ``grouped``: cross-attention per prompt length."""
        decoder = self.decoder
        slots = ids.shape[0]
        embeds = sum(decoder.embed_tokens[k](ids[:, k : k + 1]) for k in range(ids.shape[1]))
        table = decoder.embed_positions.weights
        if index is None:
            position = length - 1
            hidden = embeds + table[position : position + 1].to(embeds.device)
            self_mask = None
        else:
            hidden = embeds + table.index_select(0, index)[:, None, :].to(embeds.device)
            steps = torch.arange(length, device=index.device)
            self_mask = None if runs else self._mask(steps[None] <= index[:, None])
        shape = (slots, 1, self.num_heads, self.head_dim)
        slot_index = torch.arange(slots, device=self.device)
        for layer_index, layer in enumerate(decoder.layers):
            # self-attention over the static cache
            attn = layer.self_attn
            q, k, v = project_qkv(attn, layer.self_attn_layer_norm(hidden), shape)
            cache_k, cache_v = self._k[layer_index], self._v[layer_index]
            if index is None:
                cache_k[:, :, position] = k[:, :, 0]
                cache_v[:, :, position] = v[:, :, 0]
            else:
                # index_put does not cast (a bf16 cache under an int8 engine): cast here
                cache_k[slot_index, :, index] = k[:, :, 0].to(cache_k.dtype)
                cache_v[slot_index, :, index] = v[:, :, 0].to(cache_v.dtype)
            out = self_attention(
                self, attn, q.to(self.cache_dtype), cache_k, cache_v, length, self_mask, runs
            )
            hidden = hidden + attn.out_proj(out.reshape(slots, 1, -1).to(hidden.dtype))
            if self.cross_attends:
                # cross-attention, conditional rows only (the null rows' output is exactly zero)
                attn = layer.encoder_attn
                x = layer.encoder_attn_layer_norm(hidden[:cond])
                q = attn.q_proj(x).view(cond, 1, self.num_heads, self.head_dim).transpose(1, 2)
                out = cross_attention(self, attn, q.to(self.cache_dtype), layer_index, grouped)
                out = attn.out_proj(out.reshape(cond, 1, -1).to(hidden.dtype))
                attended = hidden[:cond] + out
                hidden = torch.cat([attended, hidden[cond:]]) if cond < slots else attended
            # feed-forward
            x = layer.final_layer_norm(hidden)
            hidden = hidden + layer.fc2(layer.activation_fn(layer.fc1(x)))
        hidden = decoder.layer_norm(hidden)
        if hasattr(self.causal_lm, "fused_heads"):
            logits = self.causal_lm.fused_heads(hidden[:, -1])  # [S, K * V]
            return logits.view(slots, self.num_codebooks, -1).float()
        logits = torch.stack([head(hidden) for head in self.causal_lm.lm_heads], dim=1)
        return logits[:, :, -1].float()  # [S, K, V]
