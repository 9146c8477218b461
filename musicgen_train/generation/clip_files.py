"""The files ``musicgen-train generate`` writes: one per clip, in the format its suffix names,
never half a file under the name asked for, and on Ctrl-C what was made so far beside it."""

from __future__ import annotations

import logging
import os
import re
import sys
import unicodedata
from pathlib import Path

from musicgen_train.generation.rows import GenerationInputError

log = logging.getLogger(__name__)

# What a clip may be written as: the suffix names the format (libsndfile writes each one).
# Opus is left out: libsndfile's Opus takes 8-48 kHz rates other than MusicGen's 32 kHz.
OUTPUT_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}


def check_format(out: Path) -> None:
    """A suffix of ``OUTPUT_FORMATS`` that this libsndfile writes (MP3 needs 1.1 or later)."""
    import soundfile as sf

    fmt = OUTPUT_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise GenerationInputError(
            f"output={out}: give a file name ending in {', '.join(OUTPUT_FORMATS)}"
        )
    if fmt not in sf.available_formats():
        raise GenerationInputError(
            f"output={out}: this libsndfile ({sf.__libsndfile_version__}) cannot write "
            f"{out.suffix}: use .wav or .flac, or upgrade soundfile"
        )


def write_clip(path: Path, clip, rate: int) -> Path:
    """Write beside ``path`` and rename, so a kill or a full disk never leaves half a file
    under the name asked for; a failed write is one line naming the file."""
    from musicgen_train.audio import write_audio

    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        write_audio(partial, clip, rate)
        os.replace(partial, path)
    except BaseException as err:  # a second Ctrl-C mid-write leaves no hidden file either
        partial.unlink(missing_ok=True)
        if isinstance(err, OSError | RuntimeError):  # soundfile's LibsndfileError: RuntimeError
            raise GenerationInputError(f"output={path}: the write failed ({err})") from err
        raise
    return path


def clip_paths(out: Path, prompts: list[str], to_folder: bool, fmt) -> list[Path]:
    """Where each prompt's clip goes: ``out``, or ``<n>-<slug>.<format>`` in the folder ``out``,
    numbered wide enough that the names sort in prompt order (0001- for 1000 prompts)."""
    if not to_folder:
        return [out]
    width = max(3, len(str(len(prompts))))
    suffix = f".{fmt or 'wav'}"
    paths = [out / f"{i + 1:0{width}d}-{slug(p)}{suffix}" for i, p in enumerate(prompts)]
    check_format(paths[0])
    return paths


def warn_replaced(paths: list[Path]) -> None:
    """Say before generating (while Ctrl-C still costs nothing) which files a run replaces."""
    existing = [p for p in paths if p.exists()]
    if existing:
        names = ", ".join(str(p) for p in existing[:3]) + (", ..." if len(existing) > 3 else "")
        log.warning(
            "replacing %d existing file(s) as their clips are done: %s", len(existing), names
        )


class MadeSoFar:
    """The codes of the batch in flight, kept so that Ctrl-C loses nothing already made: long
    form hands over each frame once final (``on_codes``), one pass holds them in its rows."""

    def __init__(self, long_form: bool):
        self.long_form = long_form
        self.frames: list = []
        self.rows: dict = {}

    def on_codes(self, start: int, codes) -> None:
        self.frames.append(codes)

    def on_step(self, row) -> None:
        if not self.long_form:
            self.rows[row.id] = row

    def codes(self, stereo: bool):
        """``[rows, K, frames]`` made so far, or None before the first complete frame."""
        import torch

        if self.long_form:
            return torch.cat(self.frames, dim=-1) if self.frames else None
        codes = [self.rows[key].codes(stereo) for key in sorted(self.rows)]
        frames = min((c.shape[-1] for c in codes), default=0)
        return torch.stack([c[:, :frames] for c in codes]) if frames else None


def keep_interrupted(engine, made: MadeSoFar, paths: list[Path]) -> None:
    """Ctrl-C: write what the batch made so far beside each clip's name
    (``<name>.interrupted<suffix>``; the name asked for is only ever a finished clip)."""
    stereo = engine.model.config.decoder.audio_channels == 2
    codes = made.codes(stereo)
    if codes is None:
        print("musicgen-train: no frame was complete yet: nothing kept", file=sys.stderr)
        return
    for clip, path in zip(engine.decode_codes(codes), paths, strict=False):
        kept = write_clip(
            path.with_name(f"{path.stem}.interrupted{path.suffix}"), clip, engine.sample_rate
        )
        seconds = clip.shape[-1] / engine.sample_rate
        print(f"musicgen-train: kept the {seconds:.2f} s made so far in {kept}", file=sys.stderr)


def slug(text: str) -> str:
    """A file-name part from a prompt: accents folded ("café" -> "cafe"), the rest dashes."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9]+", "-", folded.lower()).strip("-")[:40] or "prompt"
