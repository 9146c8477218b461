"""Prompt sets: ``evaluation/<name>/prompts.jsonl``, one JSON object per line.

``{"id": "calm-piano", "text": "a calm solo piano ballad", "reference": "audio/calm.wav"}``:
``text`` is required; ``id`` defaults to the line number; ``reference`` (optional) is an audio
file, relative to the prompt file, used when ``eval.reference=prompts``. ``melody`` and
``audio_prompt`` (optional, audio files relative to the prompt file) condition the generation
(``evaluation/conditioning.py``: ``eval.melody``, ``eval.audio_prompt``).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from musicgen_train.errors import UserError
from musicgen_train.evaluation.clips import Clip


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    reference: Path | None = None
    melody: Path | None = None  # a melody reference for melody models
    audio_prompt: Path | None = None  # audio to continue
    segment: Clip | None = None  # eval.prompts=heldout: the held-out segment's own audio


@dataclass(frozen=True)
class PromptSet:
    name: str
    path: Path
    prompts: tuple[Prompt, ...]

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.prompts]


def prompt_sets_dir() -> Path:
    """``evaluation/`` of a checkout, or its copy packaged as ``musicgen_train.prompt_sets``."""
    checkout = Path(__file__).resolve().parents[2] / "evaluation"
    if checkout.is_dir():
        return checkout
    spec = importlib.util.find_spec("musicgen_train.prompt_sets")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("cannot find the evaluation/ folder of musicgen-train")
    return Path(next(iter(spec.submodule_search_locations)))


def available_prompt_sets() -> list[str]:
    return sorted(p.parent.name for p in prompt_sets_dir().glob("*/prompts.jsonl"))


def resolve_prompt_file(name_or_path: str) -> Path:
    path = Path(str(name_or_path)).expanduser()
    if path.is_dir():
        path = path / "prompts.jsonl"
    if path.is_file():
        return path
    shipped = prompt_sets_dir() / str(name_or_path) / "prompts.jsonl"
    if shipped.is_file():
        return shipped
    raise UserError(
        f"eval.prompts={name_or_path!r} is neither a prompts.jsonl file nor a shipped prompt set "
        f"({available_prompt_sets()})"
    )


HELDOUT = "heldout"  # eval.prompts=heldout: the captions of the token cache's valid split


def heldout_prompts(cache_dir: str | Path, limit: int | None = None) -> PromptSet:
    """Your own held-out captions as the prompt set: one prompt per distinct caption of the
    valid split of the token cache (in manifest order), so evaluation asks the fine-tune for
    what your data sounds like, not for the demo's styles."""
    manifest = Path(cache_dir) / "manifest.jsonl"
    if not manifest.is_file():
        raise UserError(
            f"eval.prompts=heldout needs the token cache {cache_dir} (prepare or train first), "
            "or give eval.prompts=<a prompt set or prompts.jsonl>"
        )
    seen: dict[str, Clip | None] = {}
    for line in manifest.read_text(encoding="utf-8").splitlines():
        row = json.loads(line) if line.strip() else {}
        text = str(row.get("caption") or "").strip()
        if row.get("split") == "valid" and text and text not in seen:
            seen[text] = _segment(Path(cache_dir), row)
    if not seen:
        raise UserError(
            f"eval.prompts=heldout: the valid split of {cache_dir} has no captions; give "
            "eval.prompts=<a prompt set or prompts.jsonl>"
        )
    prompts = tuple(
        Prompt(f"heldout-{i + 1}", text, segment=segment)
        for i, (text, segment) in enumerate(seen.items())
    )
    return PromptSet(HELDOUT, manifest, prompts[:limit] if limit else prompts)


def _segment(cache_dir: Path, row: dict) -> Clip | None:
    """The window of its source file a segment of the token cache was cut from (None when
    that file is not here)."""
    if "source" not in row or "offset" not in row:
        return None
    source = Path(row["source"])
    source = source if source.is_absolute() else cache_dir / source
    if not source.is_file():
        return None
    duration = None if row.get("duration") is None else float(row["duration"])
    return Clip(source, float(row["offset"]), duration, str(row.get("id", "")))


def prompt_set_for(cfg, limit: int | None = None) -> PromptSet:
    """``eval.prompts`` of a composed config: ``heldout`` or a shipped set or a file."""
    if str(cfg.eval.prompts) == HELDOUT:
        return heldout_prompts(cfg.data.output, limit)
    return load_prompt_set(cfg.eval.prompts, limit)


def _prompt_lines(path: Path) -> list[str]:
    """The file's lines; utf-8-sig: a byte-order mark (Windows editors write one) is not part
    of the first line. Another encoding is one line naming where it breaks."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[err.start]:02x}): save the file as UTF-8"
        ) from err


def load_prompt_set(name_or_path: str, limit: int | None = None) -> PromptSet:
    """Read and check a prompt set; a bad line raises a UserError naming file and line."""
    path = resolve_prompt_file(name_or_path)
    prompts = []
    for number, line in enumerate(_prompt_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{number}: not valid JSON ({err.msg})") from err
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise UserError(f'{path}:{number}: needs a non-empty "text" field')
        files = {}
        for key in ("reference", "melody", "audio_prompt"):
            files[key] = row.get(key)
            if files[key] is not None and not isinstance(files[key], str):
                raise UserError(f'{path}:{number}: "{key}" must be a file path (a string)')
            if files[key] is not None:
                files[key] = (path.parent / files[key]).resolve()
                if not files[key].is_file():
                    raise UserError(f"{path}:{number}: {key} audio {files[key]} does not exist")
        # A missing, null or blank id is the line number (never the id "None").
        given = row.get("id")
        prompt_id = str(given).strip() if given is not None and str(given).strip() else number
        prompts.append(Prompt(str(prompt_id), text.strip(), **files))
    if not prompts:
        raise UserError(f"prompt set {path} holds no prompts")
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise UserError(f"prompt set {path} repeats ids: {repeated}")
    name = path.parent.name if path.name == "prompts.jsonl" else path.stem
    return PromptSet(name, path, tuple(prompts[:limit] if limit else prompts))
