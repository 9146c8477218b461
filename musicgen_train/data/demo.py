"""The embedded demo dataset: four styles of music synthesized with numpy, offline and seeded.

Each style differs in tempo, key, timbre and rhythm, so that a model can learn caption -> audio
and a listener can tell the styles apart:

- ambient: slow swelling minor pad chords, no drums (additive detuned saws, slow envelopes);
- techno: fast four-on-the-floor kick, offbeat hi-hats and an FM bass stab;
- piano: bright major-key arpeggios in eighth notes (inharmonic decaying partials);
- blues: walking bass in quarter notes over a blues progression, brushed snare on two and four.

Every clip has its own seed, key and tempo, and its caption says them.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musicgen_train.audio import write_audio
from musicgen_train.data.captions import build_caption
from musicgen_train.errors import UserError

SAMPLE_RATE = 32000
CLIP_SECONDS = 10.0
CLIPS_PER_STYLE = 6
DEMO_VERSION = 1  # bump when the synthesis changes: existing demo folders are rewritten
_PITCH = {"C": 0, "C#": 1, "D": 2, "Eb": 3, "E": 4, "F": 5, "F#": 6, "G": 7, "Ab": 8, "A": 9,
          "Bb": 10, "B": 11}  # fmt: skip


@dataclass(frozen=True)
class DemoStyle:
    name: str
    description: str
    genre: str
    moods: tuple[str, ...]
    instrument: str
    mode: str  # "major" or "minor"
    tempos: tuple[int, ...]  # bpm of clip i is tempos[i % len(tempos)]
    tonics: tuple[str, ...]  # key of clip i is tonics[i % len(tonics)] + mode

    def metadata(self, clip: int) -> dict:
        """The caption fields of clip ``clip`` of this style."""
        return {
            "description": self.description,
            "genre": self.genre,
            "moods": list(self.moods),
            "instrument": self.instrument,
            "bpm": self.tempos[clip % len(self.tempos)],
            "key": f"{self.tonics[clip % len(self.tonics)]} {self.mode}",
        }

    @property
    def caption(self) -> str:
        """A prompt for this style, as the default caption template renders its first clip."""
        return build_caption(self.metadata(0))


DEMO_STYLES = (
    DemoStyle("ambient", "slow ambient pad with soft swelling chords", "ambient",
              ("calm", "dreamy"), "synth pad", "minor", (70, 64, 72, 66, 76, 68),
              ("A", "D", "E", "C", "F#", "B")),
    DemoStyle("techno", "fast techno with a four-on-the-floor kick, offbeat hi-hats and a synth "
              "bass", "techno", ("driving", "energetic"), "drum machine, synth bass", "minor",
              (128, 124, 130, 126, 132, 125), ("F", "A", "G", "D", "E", "C")),
    DemoStyle("piano", "bright piano arpeggios in eighth notes", "classical", ("bright", "happy"),
              "piano", "major", (100, 96, 104, 108, 98, 102), ("C", "G", "D", "F", "A", "Bb")),
    DemoStyle("blues", "bluesy walking bass with a brushed snare on two and four", "blues",
              ("relaxed", "swinging"), "upright bass, brushed snare", "major",
              (88, 84, 92, 96, 86, 90), ("E", "A", "G", "C", "F", "D")),
)  # fmt: skip


# --- building blocks ----------------------------------------------------------------------------


def _hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def _time(seconds: float) -> np.ndarray:
    return np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE


def _envelope(n: int, attack: float, release: float) -> np.ndarray:
    """Linear attack and release (seconds) around a sustain of level 1."""
    env = np.ones(n)
    a, r = min(int(attack * SAMPLE_RATE), n // 2), min(int(release * SAMPLE_RATE), n // 2)
    env[:a] = np.linspace(0, 1, a, endpoint=False)
    env[n - r :] = np.linspace(1, 0, r)
    return env


def _add(buffer: np.ndarray, sound: np.ndarray, at_seconds: float, gain: float = 1.0) -> None:
    start = int(round(at_seconds * SAMPLE_RATE))
    end = min(len(buffer), start + len(sound))
    if start < end:
        buffer[start:end] += gain * sound[: end - start]


_TABLE_SIZE = 4096
# One cycle of a band-limited saw (6 harmonics): read at any pitch, it is cheaper than summing
# sines for the long pad notes.
_TABLE_PHASES = np.linspace(0.0, 1.0, _TABLE_SIZE + 1)  # closed cycle: interp wraps cleanly
_SAW_TABLE = sum(np.sin(2 * np.pi * h * _TABLE_PHASES) / h**1.5 for h in range(1, 7))


def _pad_note(midi: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Three detuned band-limited saws: warm, slowly swelling."""
    t = _time(seconds)
    tone = np.zeros_like(t)
    for cents in (-7, 0, 7):
        cycles = _hz(midi + cents / 100) * t + rng.uniform()
        tone += np.interp(cycles % 1.0, _TABLE_PHASES, _SAW_TABLE)
    return tone * _envelope(len(t), 1.2, 1.2) / 3


def _piano_note(midi: float, seconds: float) -> np.ndarray:
    """Slightly stretched partials, higher ones dying faster: a bright struck-string tone."""
    t = _time(seconds)
    f0 = _hz(midi)
    tone = np.zeros_like(t)
    decay, faster = np.exp(-1.5 * t), np.exp(-0.9 * t)
    for h in range(1, 10):
        decay = decay * faster  # exp(-t * (1.5 + 0.9 h))
        f = f0 * h * np.sqrt(1 + 4e-4 * h * h)
        if f < SAMPLE_RATE / 2:
            tone += np.sin(2 * np.pi * f * t) * decay / h
    return tone * _envelope(len(t), 0.003, 0.05)


def _kick(midi: float, seconds: float = 0.35) -> np.ndarray:
    """Sine with a fast falling pitch down to the tonic (about 45 Hz) and a punchy decay."""
    t = _time(seconds)
    freq = _hz(midi) + 105 * np.exp(-t / 0.03)
    return np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE) * np.exp(-t / 0.12)


def _hihat(rng: np.random.Generator, seconds: float = 0.08) -> np.ndarray:
    """White noise, twice differentiated (a crude high-pass), very short decay."""
    t = _time(seconds)
    noise = np.diff(rng.standard_normal(len(t) + 2), n=2) / 4
    return noise * np.exp(-t / 0.018)


def _fm_bass(midi: float, seconds: float) -> np.ndarray:
    """Two-operator FM with a decaying index: a bright, percussive synth bass stab."""
    t = _time(seconds)
    f = _hz(midi)
    index = 3.0 * np.exp(-t / 0.06)
    tone = np.sin(2 * np.pi * f * t + index * np.sin(2 * np.pi * f * t))
    return tone * np.exp(-t / 0.12) * _envelope(len(t), 0.002, 0.02)


def _upright_bass(midi: float, seconds: float) -> np.ndarray:
    """A plucked low string: four harmonics with a soft decay."""
    t = _time(seconds)
    f = _hz(midi)
    tone = sum(np.sin(2 * np.pi * f * h * t) * 0.6 ** (h - 1) for h in range(1, 5))
    return tone * np.exp(-t / 0.35) * _envelope(len(t), 0.008, 0.06)


def _brush(rng: np.random.Generator, seconds: float = 0.25) -> np.ndarray:
    """Band-limited noise (difference of two moving averages) with a soft swish envelope."""
    n = int(seconds * SAMPLE_RATE)
    noise = rng.standard_normal(n + 64)
    smooth = np.convolve(noise, np.ones(6) / 6, mode="same")
    band = (smooth - np.convolve(noise, np.ones(64) / 64, mode="same"))[:n]
    t = np.arange(n) / SAMPLE_RATE
    return band * (1 - np.exp(-t / 0.01)) * np.exp(-t / 0.07)


# --- the four styles ------------------------------------------------------------------------------


def _ambient(tonic: int, bpm: float, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(int(CLIP_SECONDS * SAMPLE_RATE))
    bar = 4 * 60 / bpm
    progression = [(0, 3, 7), (5, 8, 12), (0, 3, 7), (-4, 0, 3)]  # i iv i VI (minor)
    root = 48 + tonic  # C3 to B3
    start = int(rng.integers(len(progression)))
    for i, at in enumerate(np.arange(0, CLIP_SECONDS, bar)):
        chord = progression[(start + i) % len(progression)]
        length = bar + 1.2  # overlap: one chord swells into the next
        for interval in chord:
            _add(out, _pad_note(root + interval, length, rng), at, 0.25)
        _add(out, _pad_note(root + chord[0] - 12, length, rng), at, 0.2)
    _add(out, _pad_note(root - 12, CLIP_SECONDS + 1.2, rng), 0.0, 0.15)  # a tonic drone
    lfo = 1 + 0.15 * np.sin(2 * np.pi * 0.25 * np.arange(len(out)) / SAMPLE_RATE)
    return out * lfo


def _techno(tonic: int, bpm: float, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(int(CLIP_SECONDS * SAMPLE_RATE))
    beat = 60 / bpm
    root = 36 + tonic  # bass from C2 to B2
    riff = [0, 0, 3, 0, 7, 0, 10, 5][int(rng.integers(4)) :]
    kick = _kick(root - 12)  # tuned to the tonic, as producers do
    for i, at in enumerate(np.arange(0, CLIP_SECONDS, beat)):
        _add(out, kick, at, 0.9)
        _add(out, _hihat(rng), at + beat / 2, 0.5)
        _add(out, _hihat(rng), at + beat / 4, 0.15)
        _add(out, _hihat(rng), at + 3 * beat / 4, 0.15)
        _add(out, _fm_bass(root + riff[i % len(riff)], beat / 2), at + beat / 2, 0.35)
    return out


def _piano(tonic: int, bpm: float, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(int(CLIP_SECONDS * SAMPLE_RATE))
    eighth = 30 / bpm
    progression = [(0, 4, 7), (7, 11, 14), (9, 12, 16), (5, 9, 12)]  # I V vi IV (major)
    root = 60 + tonic - (12 if tonic > 6 else 0)  # from F#3 to F#4
    pattern = [0, 1, 2, 3, 2, 1, 0, 1] if rng.random() < 0.5 else [0, 1, 2, 3, 4, 3, 2, 1]
    for i, at in enumerate(np.arange(0, CLIP_SECONDS, eighth)):
        chord = progression[(i // 8) % len(progression)]
        notes = [*chord, chord[0] + 12, chord[1] + 12]
        _add(out, _piano_note(root + notes[pattern[i % 8]], 1.2), at, 0.3)
        if i % 8 == 0:
            _add(out, _piano_note(root + chord[0] - 12, 2.5), at, 0.3)
    return out


def _blues(tonic: int, bpm: float, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(int(CLIP_SECONDS * SAMPLE_RATE))
    beat = 60 / bpm
    root = 36 + tonic - (12 if tonic > 7 else 0)  # bass from G#1 to G2
    bars = [0, 5, 0, 7, 5, 0]  # I7 IV7 I7 V7 IV7 I7
    walks = ([0, 4, 7, 9], [0, 4, 7, 10], [0, 2, 4, 7], [0, 7, 9, 10])
    beats = np.arange(0, CLIP_SECONDS, beat)
    line = [walks[int(rng.integers(len(walks)))] for _bar in range(0, len(beats), 4)]
    for i, at in enumerate(beats):
        chord = bars[(i // 4) % len(bars)]
        _add(out, _upright_bass(root + chord + line[i // 4][i % 4], beat * 0.95), at, 0.6)
        if i % 2 == 1:  # the snare on two and four
            _add(out, _brush(rng, 0.3), at, 0.4)
        _add(out, _brush(rng, 0.12), at + beat * 2 / 3, 0.12)  # swung brush sweep
    return out


_SYNTHS = {"ambient": _ambient, "techno": _techno, "piano": _piano, "blues": _blues}


def synthesize_clip(style: DemoStyle, clip: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Float32 mono audio ``[1, samples]`` at 32 kHz and the caption fields of one clip."""
    metadata = style.metadata(clip)
    rng = np.random.default_rng([seed, DEMO_STYLES.index(style), clip])
    tonic = _PITCH[metadata["key"].split()[0]]
    audio = _SYNTHS[style.name](tonic, float(metadata["bpm"]), rng)
    audio = audio * (0.8 / max(np.abs(audio).max(), 1e-9))
    fade = _envelope(len(audio), 0.005, 0.05)
    return (audio * fade).astype(np.float32)[None], metadata


# --- the folder ---------------------------------------------------------------------------------


def _demo_info(seed: int) -> dict:
    return {
        "version": DEMO_VERSION, "seed": seed, "sample_rate": SAMPLE_RATE,
        "clip_seconds": CLIP_SECONDS, "clips_per_style": CLIPS_PER_STYLE,
        "styles": [style.name for style in DEMO_STYLES],
    }  # fmt: skip


def _is_complete(folder: Path, info: dict) -> bool:
    try:
        if json.loads((folder / "demo_info.json").read_text()) != info:
            return False
        rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    except (OSError, ValueError):
        return False
    return len(rows) == len(DEMO_STYLES) * CLIPS_PER_STYLE and all(
        (folder / row["file_name"]).is_file() for row in rows
    )


def write_demo_files(folder: Path, seed: int = 0) -> None:
    """Synthesize every clip into ``folder``: ``<style>/<style>_NN.wav`` + ``metadata.jsonl``."""
    rows = []
    for style in DEMO_STYLES:
        for clip in range(CLIPS_PER_STYLE):
            audio, metadata = synthesize_clip(style, clip, seed)
            name = f"{style.name}/{style.name}_{clip:02d}.wav"
            write_audio(folder / name, audio, SAMPLE_RATE)
            rows.append({"file_name": name, **metadata})
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    (folder / "metadata.jsonl").write_text(lines)
    (folder / "demo_info.json").write_text(json.dumps(_demo_info(seed), indent=2) + "\n")


def ensure_demo_folder(root: Path, seed: int = 0) -> Path:
    """Write the demo dataset into ``root`` unless it is already there; return ``root``.

    The files are written to a temporary folder first and moved into place, so an interrupted
    run or a concurrent one never leaves a half-written demo behind.
    """
    root = Path(root)
    info = _demo_info(seed)
    if _is_complete(root, info):
        return root
    ours = (root / "demo_info.json").is_file()
    if root.exists() and any(root.iterdir()) and not ours:
        raise UserError(f"cannot write the demo data into {root}: the folder holds other files")
    root.parent.mkdir(parents=True, exist_ok=True)
    scratch = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    write_demo_files(scratch, seed)
    if _is_complete(root, info):  # another process finished meanwhile: keep its files
        shutil.rmtree(scratch)
        return root
    if root.exists():
        shutil.rmtree(root)  # an outdated demo folder of ours (checked above)
    try:
        os.replace(scratch, root)
    except OSError:  # another process finished first
        shutil.rmtree(scratch, ignore_errors=True)
        if not _is_complete(root, info):
            raise
    return root
