"""Evaluation on awkward input: prompt ids, broken generations, broken reference clips, NaN in a
report, a reference path that is not there, long CLAP prompts, FAD intervals below 0."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from evaluation_models import build_tiny_clap, tone

from musicgen_train.audio import read_audio, write_audio
from musicgen_train.config import load_config
from musicgen_train.evaluation.cache import EmbeddingCache
from musicgen_train.evaluation.clap import ClapEmbedder
from musicgen_train.evaluation.clips import Clip
from musicgen_train.evaluation.frechet import (
    bootstrap_fad,
    fad,
    statistics_from_embeddings,
)
from musicgen_train.evaluation.logmel import LogMelEmbedder
from musicgen_train.evaluation.prompts import Prompt, PromptSet
from musicgen_train.evaluation.reference import Reference, ReferenceUnavailable, build_reference
from musicgen_train.evaluation.report import write_report
from musicgen_train.evaluation.run import evaluate, generate_clips
from musicgen_train.generation import GenerationParams


def test_prompt_ids_that_slug_alike_get_their_own_files(tiny_loaded, tmp_path):
    """Non-ASCII ids all slugged to "prompt.wav" (each generation overwrote the previous one and
    every prompt was scored on the last one's audio); a 300-character id crashed the run."""
    ids = ["日本", "中国", "x" * 300, "a b", "a_b", "plain"]
    prompts = PromptSet("ids", tmp_path / "p.jsonl", tuple(Prompt(i, f"tone {i}") for i in ids))
    params = GenerationParams(duration=0.3, guidance_scale=1.0, seed=0)
    clips = generate_clips(tiny_loaded, prompts, params, tmp_path / "audio", 1, 8)
    paths = [group[0].path for group in clips]
    assert len(set(paths)) == len(ids) and all(p.is_file() for p in paths)
    assert all(len(p.name) <= 100 for p in paths)
    assert paths[-1].name == "plain.wav"  # an id that is already a file name is kept
    first, second = (read_audio(p)[0] for p in paths[:2])
    assert not np.array_equal(first, second)  # two generations, not one written twice


def test_nan_generations_are_silence_with_a_warning(tiny_model_dir, tmp_path, monkeypatch):
    """A codec that outputs NaN was written as full-scale -1 samples and scored, no warning.
    NaN weights make one here; loading refuses such a model now (test_generate_files), so that
    check is switched off: finite weights can still overflow into NaN output."""
    from musicgen_train.model import loader
    from musicgen_train.sources import load_musicgen

    monkeypatch.setattr(loader, "check_finite_weights", lambda model, source: None)

    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "broken"))
    model = load_musicgen(str(folder)).model
    with torch.no_grad():
        list(model.audio_encoder.decoder.parameters())[-1].fill_(float("nan"))
    model.save_pretrained(folder)
    reference = tmp_path / "reference"
    write_audio(reference / "a.wav", tone(3.0, 16_000, 220), 16_000)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "one", "text": "calm"}\n{"id": "two", "text": "loud"}\n')
    cfg = load_config(
        [
            f"eval.prompts={prompts}",
            f"eval.reference={reference}",
            f"work_dir={tmp_path / 'work'}",
            "eval.clap_score=false",
            "eval.generation.duration=0.5",
            "eval.bootstrap.samples=5",
            "eval.report_spectrograms=0",
        ]
    )
    report = evaluate(cfg, model_source=str(folder), output_dir=tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "eval_report.json").read_text())
    broken = [w for w in saved["models"][0]["warnings"] if "NaN or infinite" in w]
    assert [w.split(":")[0] for w in broken] == ["generation one.wav", "generation two.wav"]
    for row in report["models"][0]["per_prompt"]:
        assert np.all(read_audio(row["audio"][0])[0] == 0.0)
    assert "generation one.wav" in (tmp_path / "out" / "report.html").read_text()


def test_reference_clips_with_nan_or_no_samples_are_left_out_with_a_note(tmp_path):
    """One NaN sample in one reference file used to void FAD and KAD altogether, with a message
    naming no file."""
    good = []
    for i, hz in enumerate((110, 220, 330)):
        good.append(Clip(write_audio(tmp_path / f"{i}.wav", tone(3.0, 16_000, hz), 16_000)))
    wave = tone(3.0, 16_000, 440)[0]
    wave[1000] = np.nan
    sf.write(tmp_path / "nan.wav", wave, 16_000, subtype="FLOAT")
    # A 0-sample file (a failed download) or a window past the end was scored as a silent frame.
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16_000)
    late = Clip(good[0].path, offset=5.0, duration=1.0)
    bad = [Clip(tmp_path / "nan.wav"), Clip(tmp_path / "empty.wav"), late]
    reference = Reference("test", [*good, *bad])
    stats = reference.statistics(LogMelEmbedder(), EmbeddingCache(None))
    clean = Reference("clean", good).statistics(LogMelEmbedder(), EmbeddingCache(None))
    assert stats.count == clean.count == 3 * 4
    np.testing.assert_array_equal(stats.mu, clean.mu)
    assert len(reference.notes) == 3
    assert "nan.wav skipped" in reference.notes[0] and "NaN or infinite" in reference.notes[0]
    assert "empty.wav skipped: it holds no audio" in reference.notes[1]
    assert "0.wav skipped: it holds no audio" in reference.notes[2]


def test_fad_interval_never_goes_below_zero():
    rng = np.random.default_rng(0)
    reference = statistics_from_embeddings(rng.normal(size=(400, 4)))
    songs = [rng.normal(size=(3, 4)) for _ in range(3)]
    value, (low, high) = bootstrap_fad(songs, reference, samples=50, seed=0)
    assert value == pytest.approx(fad(statistics_from_embeddings(np.concatenate(songs)), reference))
    assert low == 0.0 and high > value  # the spread (-0.15 before the cut) is kept above


def test_report_json_never_holds_nan(tmp_path):
    """``json.dumps`` writes NaN as the bare token NaN, which strict JSON parsers reject."""
    entry = {"metric": "fad", "value": float("nan"), "interval": [np.float64("inf"), 1.0]}
    report = {
        "created": "now",
        "prompt_set": {"name": "p", "path": "p", "prompts": 1},
        "generation": {"duration": 1.0},
        "reference": None,
        "models": [
            {
                "label": "model",
                "source": "tiny",
                "metrics": {"fad_logmel": entry, "caption_gain": {"value": 0.5}},
                "per_prompt": [{"id": "a", "text": "t", "audio": [], "fad_logmel": float("nan")}],
            }
        ],
        "metrics": {"fad_logmel": float("nan"), "caption_gain": 0.5},
        "skipped": [],
    }
    write_report(tmp_path, report, None, {}, spectrograms=0)
    text = (tmp_path / "eval_report.json").read_text()

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    saved = json.loads(text, parse_constant=refuse)
    assert saved["metrics"] == {"fad_logmel": None, "caption_gain": 0.5}
    assert saved["models"][0]["metrics"]["fad_logmel"]["interval"] == [None, 1.0]
    assert saved["models"][0]["per_prompt"][0]["fad_logmel"] is None


def test_a_reference_folder_that_does_not_exist_is_named(tmp_path):
    missing = tmp_path / "no" / "such"
    cfg = load_config([f"eval.reference={missing}"])
    with pytest.raises(ReferenceUnavailable, match=f"{missing} does not exist"):
        build_reference(cfg, None)


def test_a_long_prompt_is_cut_to_what_the_clap_text_encoder_takes():
    """A tokenizer without a length limit let a long prompt index past the position table."""
    model, processor = build_tiny_clap()
    embedder = ClapEmbedder(model, processor, "tiny")
    long, short = embedder.embed_text(["jazz saxophone " + "calm piano " * 200, "jazz saxophone"])
    assert long.shape == short.shape and np.all(np.isfinite(long))


def test_the_training_callback_scores_with_the_evaluation_protocol(work_home, tmp_path):
    """eval.protocol (cut, loudness) applied in `evaluate` but not in the training callback:
    the eval/* numbers logged during training were of other audio than the final report's."""
    from musicgen_train.evaluation.callback import EvaluationCallback
    from musicgen_train.training.module import MusicgenLightningModule

    reference = tmp_path / "reference"
    write_audio(reference / "a.wav", tone(3.0, 16_000, 220), 16_000)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "one", "text": "calm"}\n')
    cfg = load_config(
        [
            f"eval.prompts={prompts}",
            f"eval.reference={reference}",
            "eval.clap_score=false",
            "eval.generation.duration=3.0",
            "eval.bootstrap.samples=5",
            "eval.report_spectrograms=0",
            "eval.protocol.cut_seconds=2.5",
        ]
    )
    callback = EvaluationCallback(cfg, tmp_path / "run", every_n_epochs=1)
    logged = callback.evaluate(MusicgenLightningModule(cfg), 1)
    (clip, _), *_ = callback.clips
    audio, rate = read_audio(clip)
    assert clip.parent.name == "protocol" and audio.shape[1] == int(2.5 * rate)
    cut = callback.suite.score([[Clip(clip)]])["metrics"]
    uncut = callback.suite.score([[Clip(clip.parent.parent / "one.wav")]])["metrics"]
    assert (cut["fad_logmel"]["frames"], uncut["fad_logmel"]["frames"]) == (3, 4)
    assert logged["eval/fad_logmel"] == cut["fad_logmel"]["value"]
    assert logged["eval/kad_logmel"] == cut["kad_logmel"]["value"]


def test_an_empty_clip_is_one_silent_clap_window():
    """An empty file (a reference folder's 0-sample wav) raised ZeroDivisionError in CLAP's
    feature extractor, which no skip catches: the whole evaluation crashed."""
    model, processor = build_tiny_clap()
    embedder = ClapEmbedder(model, processor, "tiny")
    empty = embedder.embed(np.zeros((1, 0), np.float32), 48_000)
    silence = embedder.embed(np.zeros((1, 48_000 * 10), np.float32), 48_000)
    np.testing.assert_allclose(empty, silence, atol=1e-6)


def test_a_prompt_file_saved_with_a_byte_order_mark_and_crlf_reads(tmp_path):
    from musicgen_train.evaluation.prompts import load_prompt_set

    path = tmp_path / "prompts.jsonl"
    rows = ['{"id": "café", "text": "  ragtime piano ♪ "}', "", '{"text": "drums"}', ""]
    path.write_bytes("\r\n".join(rows).encode("utf-8-sig"))
    prompts = load_prompt_set(str(path)).prompts
    assert [(p.id, p.text) for p in prompts] == [("café", "ragtime piano ♪"), ("3", "drums")]


def test_fad_inf_at_exactly_min_frames_is_refused():
    """At n = min_n every subset has n frames: the fit against 1/n had one x value, and numpy's
    least squares returned half the FAD as its intercept (with a RankWarning)."""
    from musicgen_train.evaluation.frechet import fad_inf

    rng = np.random.default_rng(0)
    reference = statistics_from_embeddings(rng.normal(size=(600, 4)))
    with pytest.raises(ValueError, match="more than 50 embedding frames, got 50"):
        fad_inf(rng.normal(size=(50, 4)), reference, min_n=50, steps=5)
    assert fad_inf(rng.normal(size=(60, 4)), reference, min_n=50, steps=5).points[0][0] == 50


def test_the_suite_skips_fad_inf_but_keeps_fad_at_exactly_min_frames(tmp_path):
    from musicgen_train.evaluation.suite import MetricSuite

    clips = [
        Clip(write_audio(tmp_path / f"{hz}.wav", tone(3.0, 16_000, hz), 16_000))
        for hz in (220, 330)
    ]
    prompts = PromptSet("p", tmp_path / "p.jsonl", (Prompt("a", "a"), Prompt("b", "b")))
    cfg = load_config(
        [
            f"eval.reference={tmp_path}",
            f"work_dir={tmp_path / 'work'}",
            "eval.clap_score=false",
            "eval.bootstrap.samples=5",
            "eval.fad_inf.min_frames=8",  # 2 clips of 3 s: 4 log-mel frames each
        ]
    )
    entry = MetricSuite(cfg, prompts).score([[clips[0]], [clips[1]]])["metrics"]["fad_logmel"]
    assert entry["frames"] == 8 and entry["value"] >= 0
    assert entry["fad_inf"] == {"skipped": "needs more than 8 generated frames, got 8"}


def test_a_rewritten_file_with_its_old_modification_time_is_embedded_anew(tmp_path):
    """The file digest was memoised on (path, size, mtime): a reference file rewritten with the
    same length and its mtime set back (cp -p, rsync -t) kept its old embeddings in one process."""
    import os

    path = write_audio(tmp_path / "ref.wav", tone(2.0, 16_000, 220), 16_000)
    cache = EmbeddingCache(tmp_path / "cache")
    first = cache.embed(Clip(path), LogMelEmbedder())
    stat = os.stat(path)
    write_audio(path, tone(2.0, 16_000, 880), 16_000)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_size == stat.st_size
    second = cache.embed(Clip(path), LogMelEmbedder())
    np.testing.assert_allclose(second, LogMelEmbedder().embed(*Clip(path).load()), rtol=1e-6)
    assert not np.allclose(first, second) and cache.misses == 2


def test_generations_beyond_full_scale_are_reported_as_clipped(tiny_model_dir, tmp_path):
    """A loud generation was clipped to [-1, 1] by the 16-bit file without a word."""
    from musicgen_train.sources import load_musicgen

    loaded = load_musicgen(str(tiny_model_dir))  # its own copy: the session's stays untouched
    with torch.no_grad():  # the last convolution's gain (weight norm's magnitude) and bias
        last = list(loaded.model.audio_encoder.decoder.named_parameters())[-3:-1]
        for _, parameter in last:
            parameter.mul_(100.0)
    prompts = PromptSet("p", tmp_path / "p.jsonl", (Prompt("loud", "loud"),))
    params = GenerationParams(duration=0.3, guidance_scale=1.0, seed=0)
    warnings = []
    ((clip,),) = generate_clips(loaded, prompts, params, tmp_path, 1, 1, warnings=warnings)
    audio = read_audio(clip.path)[0]
    assert np.abs(audio).max() > 0.999
    assert len(warnings) == 1 and warnings[0].startswith("generation loud.wav: ")
    assert "beyond [-1, 1]" in warnings[0] and "clipped" in warnings[0]


def test_a_missing_reference_is_said_before_generating(tiny_model_dir, tmp_path, caplog):
    """A mistyped eval.reference skipped FAD and KAD, said only after every clip was made."""
    import logging

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "one", "text": "calm"}\n')
    missing = tmp_path / "refrence"  # the typo
    cfg = load_config(
        [
            f"eval.prompts={prompts}",
            f"eval.reference={missing}",
            f"work_dir={tmp_path / 'work'}",
            "eval.clap_score=false",
            "eval.generation.duration=0.2",
            "eval.report_spectrograms=0",
        ]
    )
    with caplog.at_level(logging.INFO, logger="musicgen_train"):
        evaluate(cfg, model_source=str(tiny_model_dir), output_dir=tmp_path / "out")
    lines = [r.getMessage() for r in caplog.records]
    early = next(i for i, m in enumerate(lines) if f"{missing} does not exist" in m)
    generating = next(i for i, m in enumerate(lines) if m.startswith("evaluate: generating"))
    assert early < generating and lines[early].startswith("fad_logmel, kad_logmel: skipped")
