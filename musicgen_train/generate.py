"""``musicgen-train generate``: text -> wav with the generation engine.

    musicgen-train generate model=facebook/musicgen-small prompt="warm lofi beat" duration=12 \
        seed=1 output=out.wav
    musicgen-train generate model=models:/jazz@prod prompts=prompts.txt output=clips/

``prompts=`` reads one prompt a line (blank lines and ``#`` comments skipped) and writes
``001-<slug>.wav`` ... into the folder, ``generation.batch_size`` prompts at a time. A progress
bar shows steps/s; the last line says where the audio went, the real-time factor (seconds of
audio per second of wall clock) and the seed. Ctrl-C keeps what was made: the frames generated
so far go to ``<name>.interrupted<suffix>``.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from musicgen_train.errors import UserError
from musicgen_train.generation.clip_files import (
    OUTPUT_FORMATS,
    MadeSoFar,
    check_format,
    clip_paths,
    keep_interrupted,
    warn_replaced,
    write_clip,
)

log = logging.getLogger(__name__)


class GenerateInputError(UserError):
    """A ``generate`` request that cannot run; the message is one line."""


def _prompts(gen: DictConfig) -> tuple[list[str], bool]:
    """The prompts, and whether they came from a file (then the output is a folder)."""
    prompt, prompts = gen.get("prompt"), gen.get("prompts")
    if prompt is not None and prompts is not None:
        raise GenerateInputError("give prompt=... or prompts=<file>, not both")
    if prompts is not None:
        path = Path(str(prompts)).expanduser()
        try:  # utf-8-sig: Notepad's BOM would glue itself to the first prompt (or comment)
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise GenerateInputError(
                f"prompts={path} is not UTF-8 text (byte {err.object[err.start]:#04x} at "
                f"offset {err.start}): save it as UTF-8"
            ) from err
        except OSError as err:
            raise GenerateInputError(
                f"prompts={path}: cannot read it ({err.__class__.__name__})"
            ) from err
        lines = [line.strip() for line in text.splitlines()]
        lines = [line for line in lines if line and not line.startswith("#")]
        if not lines:
            raise GenerateInputError(f"prompts={path} holds no prompt (one prompt a line)")
        return lines, True
    if prompt is None or not str(prompt).strip():
        raise GenerateInputError('prompt is empty: give prompt="a description of the music"')
    return [str(prompt).strip()], False


def _output(value, folder: bool, fmt: str | None = None) -> Path:
    """``output=`` (a top-level key, shared with ``import``), else ``generation.output``;
    ``fmt``: ``generation.format``, the type of a folder's clips or of the default file."""
    default = "generated" if folder else f"generated.{fmt or 'wav'}"
    out = Path(str(value or default)).expanduser()
    if not folder and fmt and out.suffix.lower() != f".{fmt}":
        raise GenerateInputError(
            f"output={out} and generation.format={fmt} disagree: the suffix names the format"
        )
    if folder:
        if out.exists() and not out.is_dir():
            raise GenerateInputError(f"output={out} is a file: prompts= writes into a folder")
        if not out.exists() and out.suffix.lower() in OUTPUT_FORMATS:
            raise GenerateInputError(
                f"output={out} names a file: prompts= writes one clip a prompt into a folder "
                "(output=clips/; generation.format=flac picks their type)"
            )
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise GenerateInputError(
                f"output={out}: cannot create the folder ({err.strerror})"
            ) from err
        _probe_writable(out, out)
        return out
    if out.is_dir():
        raise GenerateInputError(f"output={out} is a folder: give a file name")
    check_format(out)
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise GenerateInputError(f"output={out}: {parent} is a file, not a folder")
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as err:
            raise GenerateInputError(
                f"output={out}: cannot create {parent} ({err.strerror})"
            ) from err
    if out.exists() and not os.access(out, os.W_OK):
        raise GenerateInputError(f"output={out}: not writable")
    _probe_writable(parent, out)
    return out


def _probe_writable(folder: Path, out: Path) -> None:
    """Create and remove a file in ``folder`` before minutes of generation: ``os.access`` says
    yes to root on a read-only mount or in /proc, where only a real write tells."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".musicgen-probe-"):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        raise GenerateInputError(f"output={out}: cannot write into {folder} ({reason})") from err


def clip_seconds(path: Path, rate: int) -> float:
    import soundfile as sf

    return sf.info(str(path)).frames / rate


def _steps_per_clip(engine, params, prompt_audio, long_form: bool) -> int:
    """Decoder steps per clip (sampled steps; a prompt's or a window's context is prefilled in
    one forward)."""
    from musicgen_train.generation.long_form import plan
    from musicgen_train.generation.rows import frames_for

    rate, k = engine.loaded.frame_rate, engine.num_codebooks
    prompt = 0 if prompt_audio is None else -(-prompt_audio.shape[-1] * rate // engine.sample_rate)
    if not long_form:
        return engine.sampling(params).max_new_tokens
    windows = plan(
        frames_for(params.duration, rate),
        frames_for(engine.window_seconds, rate),
        frames_for(engine.extend_stride, rate),
        int(prompt),
    )
    return sum(new + k - 1 for _, new in windows)


def _audio_prompt(value, engine):
    """``audio_prompt=`` read, converted to the model's channels and rate; checked to fit."""
    if value is None or not str(value).strip():
        return None
    from musicgen_train.audio import load_audio

    path = Path(str(value)).expanduser()
    channels = int(engine.model.config.decoder.audio_channels)
    if not path.is_file():
        raise GenerateInputError(f"audio_prompt={path}: no such file")
    try:
        audio = load_audio(path, engine.sample_rate, channels)
    except Exception as err:  # soundfile raises LibsndfileError, OSError, RuntimeError ...
        reason = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        raise GenerateInputError(f"audio_prompt={path}: cannot read it ({reason})") from err
    seconds = audio.shape[-1] / engine.sample_rate
    if audio.shape[-1] == 0:
        raise GenerateInputError(f"audio_prompt={path} holds no audio")
    if seconds >= engine.window_seconds:
        raise GenerateInputError(
            f"audio_prompt={path} is {seconds:.2f} s long: it must be shorter than the model's "
            f"window of {engine.window_seconds:g} s"
        )
    return audio


def _melody(value, loaded):
    """``melody=``, checked to read as audio before any generation (the engine reads it)."""
    from musicgen_train.generation.melody import read_melody

    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise GenerateInputError(f"melody={path}: no such file")
    read_melody(loaded, path)
    return path


def run(cfg: DictConfig, *actions: str) -> list[Path]:
    """Generate ``generation.prompt`` (or each line of ``generation.prompts``); returns the
    files written."""
    if actions:
        raise GenerateInputError(f"generate takes no action, got {' '.join(actions)!r}")
    from tqdm import tqdm

    from musicgen_train.generation import GenerationEngine, GenerationParams
    from musicgen_train.model.families import is_melody
    from musicgen_train.sources import load_musicgen, load_options

    gen = cfg.generation
    prompts, to_folder = _prompts(gen)
    duration = float(gen.duration)
    if not duration > 0:  # also nan
        raise GenerateInputError(f"duration={duration:g} must be more than 0 seconds")
    out = _output(cfg.get("output") or gen.get("output"), to_folder, gen.get("format"))
    paths = clip_paths(out, prompts, to_folder, gen.get("format"))
    seed = OmegaConf.select(cfg, "seed")
    if seed is None:  # seed=null: a new take each run, its seed printed to make it again
        seed = secrets.randbelow(2**32)
    params = GenerationParams(duration=duration, seed=int(seed))
    source = str(cfg.model.id)
    loaded = load_musicgen(source, **load_options(cfg))
    engine = GenerationEngine(
        loaded,
        precision=str(gen.precision),
        threads=gen.get("threads"),
        cuda_graphs=bool(gen.get("cuda_graphs", False)),
        window_seconds=float(gen.get("window_seconds", 30.0)),
        extend_stride=float(gen.get("extend_stride", 18.0)),
    )
    long_form = duration > engine.window_seconds + 1e-9
    if long_form:
        from musicgen_train.generation.long_form import check_duration

        check_duration(duration)
    prompt_audio = _audio_prompt(gen.get("audio_prompt"), engine)
    if gen.get("melody") and not is_melody(loaded.model):
        raise GenerateInputError(
            f"melody={gen.melody}: {source} is conditioned on text only; give a melody model "
            "(model=musicgen-melody, model=tiny-melody)"
        )
    melody = _melody(gen.get("melody"), loaded) if gen.get("melody") else None
    warn_replaced(paths)
    log.info(
        "generating %d clip(s) of %g s with %s (%s, %d threads)",
        len(prompts),
        duration,
        source,
        engine.precision,
        engine.threads,
    )
    batch_size = int(gen.get("batch_size", 1)) if to_folder else 1
    steps_per_clip = _steps_per_clip(engine, params, prompt_audio, long_form)
    batches = range(0, len(prompts), batch_size)
    total = steps_per_clip * len(batches)
    written: list[Path] = []
    started = time.perf_counter()
    bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True, leave=False)
    try:
        for start in batches:
            batch = prompts[start : start + batch_size]
            seeds = [params.seed + start + i for i in range(len(batch))]
            lead: dict = {}  # the bar counts the batch's steps through one row per window
            made = MadeSoFar(long_form)

            def on_step(row, lead=lead, made=made):
                made.on_step(row)
                current = lead.get("row")
                if current is None or (current.finished and not row.finished):
                    lead["row"] = current = row  # the first row of the (next) window
                if row is current:
                    bar.update(1)

            bar.set_postfix_str(f"clips {start + 1}-{start + len(batch)} of {len(prompts)}")
            try:
                audio = engine.generate(
                    batch,
                    params,
                    seeds=seeds,
                    audio_prompt=prompt_audio,
                    melody=melody,
                    on_step=on_step,
                    on_codes=made.on_codes,
                )
            except KeyboardInterrupt:
                bar.close()
                keep_interrupted(engine, made, paths[start : start + len(batch)])
                raise
            if prompt_audio is None:
                audio = audio[..., : int(round(duration * engine.sample_rate))]
            for offset, clip in enumerate(audio):
                path = paths[start + offset]
                written.append(write_clip(path, clip, engine.sample_rate))
    finally:
        bar.close()
    wall = time.perf_counter() - started
    seconds = sum(clip_seconds(p, engine.sample_rate) for p in written)
    where = out if to_folder else written[0]
    print(
        f"wrote {len(written)} clip(s), {seconds:g} s of audio, to {where} in {wall:.1f} s: "
        f"real-time factor {seconds / wall:.2f} ({total / wall:.1f} steps/s, "
        f"{engine.precision}, {engine.threads} threads, seed {params.seed})"
    )
    return written
