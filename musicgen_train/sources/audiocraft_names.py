"""The names of audiocraft's MusicGen weights in transformers' MusicGen.

The LM follows transformers' published conversion (``convert_musicgen_transformers.py``), the
EnCodec ``convert_encodec_checkpoint_to_pytorch.py``; both are written here as rules of our own,
one table read in both directions (the reverse names what is missing in audiocraft's terms).
"""

from __future__ import annotations

import re

# (audiocraft name, transformers name) of each LM weight, after transformers' rename rules:
# emb -> embed_tokens, linears -> lm_heads, cross_attention -> encoder_attn, linear1/2 -> fc1/2,
# norm1 / norm_cross / norm2 / out_norm -> the layer norms, the description conditioner's
# output_proj -> enc_to_dec_proj. {n} is an index, {p} weight or bias, {rest} any name.
# in_proj_weight holds q, k and v stacked; it becomes three weights ({qkv}).
_DEC = "decoder.model.decoder"
LAYER_RULES = (  # inside transformer.layers.{n} / decoder.model.decoder.layers.{n}
    ("self_attn.in_proj_weight", "self_attn.{qkv}_proj.weight"),
    ("self_attn.out_proj.weight", "self_attn.out_proj.weight"),
    ("cross_attention.in_proj_weight", "encoder_attn.{qkv}_proj.weight"),
    ("cross_attention.out_proj.weight", "encoder_attn.out_proj.weight"),
    ("linear1.weight", "fc1.weight"),
    ("linear2.weight", "fc2.weight"),
    ("norm1.{p}", "self_attn_layer_norm.{p}"),
    ("norm_cross.{p}", "encoder_attn_layer_norm.{p}"),
    ("norm2.{p}", "final_layer_norm.{p}"),
)
LM_RULES = (
    ("emb.{n}.weight", _DEC + ".embed_tokens.{n}.weight"),
    ("linears.{n}.weight", "decoder.lm_heads.{n}.weight"),
    ("out_norm.{p}", _DEC + ".layer_norm.{p}"),
    ("condition_provider.conditioners.description.output_proj.{p}", "enc_to_dec_proj.{p}"),
    # a fine-tune that trained T5 too (conditioners.description.finetune=true) carries it
    ("condition_provider.conditioners.description.t5.{rest}", "text_encoder.{rest}"),
    *((f"transformer.layers.{{n}}.{a}", f"{_DEC}.layers.{{n}}.{t}") for a, t in LAYER_RULES),
)
_PLACEHOLDERS = {"n": r"\d+", "p": r"weight|bias", "rest": r".+", "qkv": r"q|k|v"}
# Shapes of known checkpoints: (hidden size, layers, codebooks, codebook size) -> base model.
KNOWN_BASES = {
    (1024, 24, 4, 2048): "facebook/musicgen-small",
    (1536, 48, 4, 2048): "facebook/musicgen-medium",
    (2048, 48, 4, 2048): "facebook/musicgen-large",
    (1024, 24, 8, 2048): "facebook/musicgen-stereo-small",
    (1536, 48, 8, 2048): "facebook/musicgen-stereo-medium",
    (2048, 48, 8, 2048): "facebook/musicgen-stereo-large",
}


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)  # literal, name, literal, name, ...
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_PLACEHOLDERS[part]})"
        for i, part in enumerate(parts)
    )
    return re.compile(regex + r"\Z")


_LM_PATTERNS = [(_pattern(a), _pattern(t), a, t) for a, t in LM_RULES]


def lm_name(audiocraft: str) -> list[str]:
    """The transformers names of one audiocraft LM weight (three for a fused in_proj_weight);
    empty when transformers' MusicGen has no place for it."""
    for source, _, _, target in _LM_PATTERNS:
        match = source.match(audiocraft)
        if match:
            if "{qkv}" in target:
                return [target.format(**match.groupdict(), qkv=x) for x in "qkv"]
            return [target.format(**match.groupdict())]
    return []


def audiocraft_lm_name(transformers: str) -> str | None:
    """The audiocraft name a transformers decoder weight comes from (for messages)."""
    for _, target, template, _ in _LM_PATTERNS:
        match = target.match(transformers)
        if match:
            return template.format(**match.groupdict())
    return None


def unwrap(name: str) -> str:
    # DDP / torch.compile prefixes, and nn.MultiheadAttention inside non-custom attention
    name = re.sub(r"^(module\.|_orig_mod\.)+", "", name)
    return name.replace(".self_attn.mha.", ".self_attn.").replace(
        ".cross_attention.mha.", ".cross_attention."
    )


def codec_name(audiocraft: str) -> str:
    """The transformers name of an audiocraft EnCodec weight (old-style weight norm names)."""
    quantizer = r"^quantizer\.vq\.layers\.(\d+)\._codebook\."
    name = re.sub(quantizer, r"quantizer.layers.\1.codebook.", audiocraft)
    name = re.sub(r"^(encoder|decoder)\.model\.", r"\1.layers.", name)
    name = re.sub(r"\.(conv\.conv|convtr\.convtr)\.", ".conv.", name)
    name = re.sub(r"\.(conv|convtr)\.norm\.", ".norm.", name)
    name = re.sub(r"\.parametrizations\.weight\.original0\Z", ".weight_g", name)
    name = re.sub(r"\.parametrizations\.weight\.original1\Z", ".weight_v", name)
    return "audio_encoder." + name


def weight_norm_as(name: str, target_keys) -> str:
    # transformers registers weight norm as a parametrization (original0 = g, original1 = v)
    # on recent torch versions, as weight_g / weight_v before.
    for old, new in (("weight_g", "original0"), ("weight_v", "original1")):
        if name.endswith("." + old):
            alternative = name.removesuffix(old) + f"parametrizations.weight.{new}"
            if name not in target_keys and alternative in target_keys:
                return alternative
    return name
