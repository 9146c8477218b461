"""Captions from music metadata: a template with optional fields, dropout, tempo/key estimation.

A template such as ``"{description}. {genre}, {moods}, {instrument}, {bpm} bpm, {key}"`` names
metadata fields. A field that is missing takes its own words with it, so no dangling commas are
left behind: the text right after a field up to the first punctuation belongs to that field
(``" bpm"``), then comes the separator (``", "``), and any words after the separator belong to
the next field (``"in {key}"``). Without punctuation between two fields, the last word leads
into the next field and the words before it stay with the previous one (``"{genre} track with
{instrument}"``). Two fields are joined by the separator that follows the first, or when fields
between them are missing, by the first of the skipped separators that has punctuation.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from musicgen_train.errors import ConfigError, UserError

# audiocraft's music-info fields, in the order a caption usually lists them.
MUSIC_FIELDS = (
    "description",
    "genre",
    "moods",
    "keywords",
    "instrument",
    "bpm",
    "key",
    "title",
    "artist",
)
DEFAULT_TEMPLATE = "{description}. {genre}, {moods}, {instrument}, {bpm} bpm, {key}"
DEFAULT_CAPTION = "music"
_PUNCTUATION = ",.;:!?|/-–—"


@dataclass(frozen=True)
class _Part:
    field: str
    spec: str  # format spec, e.g. ".0f" in "{bpm:.0f}"
    prefix: str  # words before the field that belong to it ("in " in "in {key}")
    suffix: str = ""  # words after the field that belong to it (" bpm" in "{bpm} bpm")
    separator: str = ""  # what follows it when another field comes next (", ")


def parse_template(template: str) -> tuple[list[_Part], str]:
    """Split a template into field parts and the closing text (a template with no field at all
    is a fixed caption: all closing text)."""
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ConfigError(
            f"data.caption.template={template!r} is not a valid template: {err}"
        ) from err
    parts: list[_Part] = []
    for literal, field, spec, _conversion in pieces:
        prefix = literal
        if parts:
            split = _split_literal if field is not None else _split_closing
            suffix, separator, prefix = split(literal)
            parts[-1] = replace(parts[-1], suffix=suffix, separator=separator)
        if field is None:  # the text after the last field
            return parts, prefix  # for a template without fields: the whole text
        if not field.isidentifier():
            raise ConfigError(
                f"data.caption.template={template!r}: {{{field}}} is not a metadata field name"
            )
        parts.append(_Part(field, spec or "", prefix))
    return parts, ""


def _split_closing(literal: str) -> tuple[str, str, str]:
    """``" music."`` after the last field -> suffix ``" music"``, closing ``"."``."""
    suffix = literal.rstrip(_PUNCTUATION + " ")
    return suffix, "", literal[len(suffix) :]


def _split_literal(literal: str) -> tuple[str, str, str]:
    """``" bpm, in "`` -> (``" bpm"``, ``", "``, ``"in "``): suffix, separator, prefix."""
    cut = next((i for i, ch in enumerate(literal) if ch in _PUNCTUATION), None)
    if cut is None:  # no punctuation: the last word leads into the next field ("with ")
        match = re.fullmatch(r"(.*?)(\s*)(\S*\s*)", literal)
        return match.group(1), match.group(2), match.group(3)
    suffix = literal[:cut].rstrip()
    end = len(suffix)
    while end < len(literal) and (literal[end] in _PUNCTUATION or literal[end].isspace()):
        end += 1
    return suffix, literal[len(suffix) : end], literal[end:]


def template_from_config(caption_cfg: Mapping | None) -> str:
    """``data.caption.fields`` (a list) wins over ``data.caption.template`` when set."""
    caption_cfg = caption_cfg or {}
    fields = caption_cfg.get("fields")
    if fields:
        return ", ".join("{bpm} bpm" if f == "bpm" else f"{{{f}}}" for f in fields)
    return caption_cfg.get("template") or DEFAULT_TEMPLATE


def format_value(value, spec: str = "") -> str:
    """A metadata value as caption text; "" when it is missing or empty."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, str):
        return " ".join(value.split())  # one line: newlines and runs of spaces become a space
    if isinstance(value, Sequence):
        return ", ".join(text for text in (format_value(v) for v in value) if text)
    if spec:
        return format(value, spec)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _whole_bpm(value):
    """92.4 or "92.4" (a csv cell) -> 92: captions say "92 bpm"; other values stay as they are."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return round(number) if math.isfinite(number) else None


def _render_field(part: _Part, metadata: Mapping) -> str:
    value = metadata.get(part.field)
    if part.field == "bpm" and not part.spec:
        value = _whole_bpm(value)
    try:
        text = format_value(value, part.spec)
    except (TypeError, ValueError):
        text = format_value(value)
    return f"{part.prefix}{text}{part.suffix}" if text else ""


def build_caption(metadata: Mapping, caption_cfg: Mapping | None = None, rng=None) -> str:
    """The caption of one clip. With ``rng`` (anything with ``.random()``) and
    ``caption_cfg.field_dropout > 0`` each field is dropped with that probability, keeping at
    least one: training sees partial captions, as audiocraft does."""
    caption_cfg = caption_cfg or {}
    default = str(caption_cfg.get("default") or DEFAULT_CAPTION)
    parts, closing = parse_template(template_from_config(caption_cfg))
    if not parts:
        return closing.strip() or default
    texts = [_render_field(part, metadata) for part in parts]
    present = [i for i, text in enumerate(texts) if text]
    dropout = float(caption_cfg.get("field_dropout") or 0.0)
    if rng is not None and dropout > 0 and len(present) > 1:
        kept = [i for i in present if rng.random() >= dropout]
        present = kept or [present[int(rng.random() * len(present))]]
    if not present:
        return default
    caption = texts[present[0]]
    for left, right in zip(present, present[1:], strict=False):
        caption = _join(caption, _separator(parts[left:right]), texts[right])
    return _join(caption, closing, "").rstrip()


def _separator(between: list[_Part]) -> str:
    """What joins two fields with others left out between them: the first separator that has
    punctuation (``"{genre} track with {instrument}, {bpm} bpm"`` -> ``"rock track, 90 bpm"``)."""
    separators = [part.separator for part in between]
    return next((sep for sep in separators if sep.strip()), separators[0])


def _join(left: str, separator: str, right: str) -> str:
    """Join two pieces, not doubling punctuation ("A calm piece." + ". " + "jazz")."""
    if left and left[-1] in ".!?;:," and separator.lstrip()[:1] in tuple(_PUNCTUATION):
        separator = separator.lstrip()[1:] or " "
    return left + separator + right


# --- tempo and key from the signal (librosa, extra ``analysis``) ------------------------------

_PITCHES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# Krumhansl & Kessler (1982) probe-tone profiles, starting at the tonic.
_MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
_ANALYSIS_RATE = 22050


def _librosa():
    try:
        import librosa
    except ImportError as err:
        raise UserError(
            "estimating tempo and key needs librosa: pip install 'musicgen-train[analysis]' "
            "(or set data.caption.estimate_tempo_key=false)"
        ) from err
    return librosa


def key_from_chroma(chroma: np.ndarray) -> str | None:
    """Krumhansl-Schmuckler: the key whose rotated profile correlates best with the mean chroma."""
    profile = np.asarray(chroma, dtype=np.float64)
    profile = profile.mean(axis=1) if profile.ndim == 2 else profile
    if not np.isfinite(profile).all() or profile.std() < 1e-9:
        return None
    best, best_score = None, -np.inf
    for tonic in range(12):
        for mode, template in (("major", _MAJOR_PROFILE), ("minor", _MINOR_PROFILE)):
            score = np.corrcoef(profile, np.roll(template, tonic))[0, 1]
            if score > best_score:
                best, best_score = f"{_PITCHES[tonic]} {mode}", score
    return best


def estimate_tempo_key(audio: np.ndarray, sample_rate: int) -> dict:
    """``{"bpm": int | None, "key": "A minor" | None}`` estimated from the signal."""
    from musicgen_train.audio import resample

    librosa = _librosa()
    audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
    mono = resample(audio.mean(axis=0, keepdims=True), sample_rate, _ANALYSIS_RATE)[0]
    if mono.size < _ANALYSIS_RATE or np.sqrt(np.mean(mono**2)) < 1e-4:
        return {"bpm": None, "key": None}  # too short or silent: nothing to estimate
    tempo, _beats = librosa.beat.beat_track(y=mono, sr=_ANALYSIS_RATE)
    bpm = float(np.atleast_1d(tempo)[0])
    chroma = librosa.feature.chroma_cqt(y=mono, sr=_ANALYSIS_RATE)
    return {"bpm": round(bpm) if bpm > 0 else None, "key": key_from_chroma(chroma)}


def with_estimated_tempo_key(
    metadata: Mapping, audio: np.ndarray, sample_rate: int, caption_cfg: Mapping | None
) -> dict:
    """``metadata`` with bpm and key filled in from the signal where they are missing, when
    ``data.caption.estimate_tempo_key`` is on; otherwise an unchanged copy."""
    metadata = dict(metadata)
    wanted = [f for f in ("bpm", "key") if not format_value(metadata.get(f))]
    if not (caption_cfg or {}).get("estimate_tempo_key") or not wanted:
        return metadata
    estimate = estimate_tempo_key(audio, sample_rate)
    metadata.update({f: estimate[f] for f in wanted if estimate[f] is not None})
    return metadata


def validate_caption_config(cfg) -> None:
    """Compose-time checks of ``data.caption.*`` (called by ``musicgen_train.data.config``)."""
    from omegaconf import OmegaConf

    from musicgen_train.config import check_range

    caption = OmegaConf.select(cfg, "data.caption")
    if caption is None:
        return
    fields = caption.get("fields")
    if fields is not None and (
        not OmegaConf.is_list(fields)
        or not all(isinstance(f, str) and f.isidentifier() for f in fields)
    ):
        raise ConfigError(
            f"data.caption.fields={fields!r} is not allowed: give a list of metadata field "
            f"names such as {list(MUSIC_FIELDS[:3])}, or null to use data.caption.template"
        )
    template = caption.get("template")
    if not fields and not isinstance(template, str):
        raise ConfigError(f"data.caption.template={template!r} is not allowed: give a string")
    parse_template(template_from_config(caption))
    check_range(cfg, "data.caption.field_dropout", 0.0, 1.0, allow_none=True)
    if not isinstance(caption.get("estimate_tempo_key", False), bool):
        value = caption.get("estimate_tempo_key")
        raise ConfigError(
            f"data.caption.estimate_tempo_key={value!r} is not allowed: true or false"
        )
