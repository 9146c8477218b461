"""Evaluation found wanting by a user: broken weights found only after generating, tracebacks for
one bad file or clip, ``x.NPZ``, the loudness protocol applied to clipped audio, statistics made
with other weights, prompt files in another encoding, failures missing from report.html."""

import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from evaluation_models import build_tiny_clap, save_tiny_vggish, tone
from omegaconf import OmegaConf

from musicgen_train.audio import read_audio, write_audio
from musicgen_train.config import load_config
from musicgen_train.errors import UserError
from musicgen_train.evaluation.clap import ClapEmbedder
from musicgen_train.evaluation.clap_score import clap_score_of_embeddings
from musicgen_train.evaluation.clips import Clip
from musicgen_train.evaluation.embedders import EmbedderUnavailable, build_embedder
from musicgen_train.evaluation.frechet import save_statistics, statistics_from_embeddings
from musicgen_train.evaluation.prompts import Prompt, PromptSet, load_prompt_set
from musicgen_train.evaluation.protocol import Protocol, normalise_loudness
from musicgen_train.evaluation.reference import (
    Reference,
    ReferenceUnavailable,
    build_reference,
)
from musicgen_train.evaluation.run import evaluate, generate_clips
from musicgen_train.evaluation.suite import MetricSuite
from musicgen_train.generation import GenerationEngine, GenerationParams


def reference_folder(folder, broken: bool = False):
    for i, hz in enumerate((110, 220, 330)):
        write_audio(folder / f"{i}.wav", tone(1.5, 16_000, hz), 16_000)
    if broken:
        (folder / "broken.wav").write_bytes(b"RIFF not really a wav")
    return folder


def test_missing_embedder_weights_are_said_before_generating(tiny_model_dir, tmp_path, caplog):
    """A mistyped eval.vggish.weights was found only after every clip was generated; the HTML
    report did not show reference clips that were left out, nor the protocol in force."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "one", "text": "calm"}\n{"id": "two", "text": "loud"}\n')
    missing = tmp_path / "vgish.pth"  # the typo
    cfg = load_config(
        [
            f"eval.prompts={prompts}",
            f"eval.reference={reference_folder(tmp_path / 'ref', broken=True)}",
            f"work_dir={tmp_path / 'work'}",
            "eval.embedders=[logmel,vggish]",
            f"eval.vggish.weights={missing}",
            "eval.clap_score=false",
            "eval.generation.duration=0.6",
            "eval.protocol.loudness_lufs=-14",
            "eval.bootstrap.samples=20",
            "eval.report_spectrograms=0",
        ]
    )
    with caplog.at_level(logging.INFO, logger="musicgen_train"):
        report = evaluate(cfg, model_source=str(tiny_model_dir), output_dir=tmp_path / "out")
    lines = [r.getMessage() for r in caplog.records]
    early = next(i for i, m in enumerate(lines) if f"{missing} does not exist" in m)
    generating = next(i for i, m in enumerate(lines) if m.startswith("evaluate: generating"))
    assert early < generating
    assert lines[early].startswith("fad_vggish, kad_vggish: skipped: VGGish weights file")
    assert "fix eval.vggish.weights" in lines[early]
    fad = report["models"][0]["metrics"]["fad_logmel"]
    assert fad["value"] is not None and fad["reference_clips"] == 3  # the broken one left out
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Reference clips left out" in page and "broken.wav" in page
    assert "protocol: " in page and "loudness_lufs=-14" in page
    assert "used: logmel 3" in page


def test_broken_vggish_weights_are_one_line_naming_the_file(tmp_path):
    """A truncated download, a text file or a bare tensor raised torch's tracebacks."""
    good = save_tiny_vggish(tmp_path / "good.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:1000])
    text = tmp_path / "page.pth"
    text.write_text("<html>404 Not Found</html>")
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    for path in (truncated, text, tensor):
        with pytest.raises(EmbedderUnavailable) as caught:
            build_embedder("vggish", OmegaConf.create({"vggish": {"weights": str(path)}}))
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_broken_clap_checkpoint_is_one_line(tmp_path):
    """A truncated model.safetensors raised safetensors' own error after generation."""
    model, processor = build_tiny_clap()
    model.save_pretrained(tmp_path / "clap")
    processor.save_pretrained(tmp_path / "clap")
    weights = tmp_path / "clap" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4000])
    with pytest.raises(EmbedderUnavailable, match="cannot be loaded .*download it again"):
        build_embedder("clap", OmegaConf.create({"clap": {"checkpoint": str(tmp_path / "clap")}}))


def test_a_clip_an_embedder_fails_on_is_left_out_with_a_line(tmp_path):
    """One generated clip the embedder could not read (or embedded as NaN) raised a traceback
    after all generation, and every score was lost."""
    cfg = load_config(
        [
            f"eval.reference={reference_folder(tmp_path / 'ref')}",
            f"work_dir={tmp_path / 'work'}",
            "eval.clap_score=false",
            "eval.kld.enabled=false",
            "eval.aesthetics.enabled=false",
            "eval.bootstrap.samples=20",
        ]
    )
    prompts = PromptSet("p", tmp_path / "p.jsonl", tuple(Prompt(i, i) for i in "abc"))
    good = write_audio(tmp_path / "gen" / "a.wav", tone(2.0, 16_000, 200), 16_000)
    unreadable = tmp_path / "gen" / "b.wav"
    unreadable.write_bytes(b"RIFF....garbage")
    nan = tmp_path / "gen" / "c.wav"
    samples = tone(2.0, 16_000, 300)[0]
    samples[100:200] = np.nan
    sf.write(nan, samples, 16_000, subtype="FLOAT")
    other = write_audio(tmp_path / "gen" / "a2.wav", tone(2.0, 16_000, 250), 16_000)
    generations = [[Clip(good, name="a"), Clip(other, name="a")], [Clip(unreadable)], [Clip(nan)]]
    scores = MetricSuite(cfg, prompts).score(generations)
    fad = scores["metrics"]["fad_logmel"]
    assert fad["value"] is not None and fad["clips"] == 2
    assert [row["fad_logmel"] is None for row in scores["per_prompt"]] == [False, True, True]
    left_out = [w for w in scores["warnings"] if "left out" in w]
    assert len(left_out) == 2
    assert str(unreadable) in left_out[0] and "fad_logmel, kad_logmel:" in left_out[0]
    assert str(nan) in left_out[1] and "NaN" in left_out[1]


def test_clap_score_leaves_out_a_prompt_without_clips():
    model, processor = build_tiny_clap()
    embedder = ClapEmbedder(model, processor, "tiny")
    windows = embedder.embed(tone(2.0, 48_000), 48_000)
    score = clap_score_of_embeddings(embedder, ["calm piano", "loud drums"], [[windows], []])
    assert score.per_prompt[1] is None and score.mean == pytest.approx(score.per_prompt[0])


def test_statistics_files_in_upper_case_and_broken_ones(tmp_path):
    """x.NPZ was taken for a folder path that does not exist; a truncated .npz was reported
    by numpy as "pickled data"."""
    stats = statistics_from_embeddings(np.random.default_rng(0).normal(size=(50, 4)))
    upper = save_statistics(tmp_path / "ref.NPZ", "logmel", stats)
    cfg = OmegaConf.create({"eval": {"reference": str(upper), "reference_max_clips": None}})
    assert build_reference(cfg, None).stats_file == upper
    broken = tmp_path / "broken.npz"
    broken.write_bytes(upper.read_bytes()[:100])
    cfg.eval.reference = str(broken)
    with pytest.raises(ReferenceUnavailable, match="broken.npz is not a .npz archive"):
        build_reference(cfg, None)


def test_statistics_made_with_other_weights_are_refused(tmp_path):
    """Statistics of one VGGish (or CLAP) checkpoint were compared with embeddings of another
    of the same dimension: a number, and a meaningless one."""
    first, second = (
        build_embedder("vggish", OmegaConf.create({"vggish": {"weights": str(path)}}))
        for path in (
            save_tiny_vggish(tmp_path / "a.pth", seed=0),
            save_tiny_vggish(tmp_path / "b.pth", seed=1),
        )
    )
    frames = first.embed(tone(3.0, 16_000), 16_000)
    path = save_statistics(
        tmp_path / "ref.npz", "vggish", statistics_from_embeddings(frames, first.identity())
    )
    reference = Reference("stats", stats_file=path)
    assert reference._stored_statistics(first).count == len(frames)
    with pytest.raises(ReferenceUnavailable, match="other vggish weights"):
        reference._stored_statistics(second)


def test_loudness_is_normalised_before_clipping_as_audiocraft(tiny_model_dir, tmp_path):
    """The protocol normalised the clipped 16-bit file; audiocraft normalises the float output,
    then clips and writes it."""
    from musicgen_train.sources import load_musicgen

    loaded = load_musicgen(str(tiny_model_dir))  # its own copy: the session's stays untouched
    with torch.no_grad():  # far beyond full scale (see test_eval_robustness)
        for _, parameter in list(loaded.model.audio_encoder.decoder.named_parameters())[-3:-1]:
            parameter.mul_(100.0)
    params = GenerationParams(duration=0.6, guidance_scale=1.0, seed=0)
    (wave,) = GenerationEngine(loaded).generate(["loud"], params)
    wave = np.atleast_2d(np.asarray(wave, dtype=np.float32))
    assert np.abs(wave).max() > 1.5
    prompts = PromptSet("p", tmp_path / "p.jsonl", (Prompt("loud", "loud"),))
    protocol = Protocol(loudness_lufs=-14.0)
    warnings = []
    ((clip,),) = generate_clips(
        loaded, prompts, params, tmp_path, 1, 1, warnings=warnings, protocol=protocol
    )
    assert clip.path == tmp_path / "protocol" / "loud.wav"
    scored = read_audio(clip.path)[0]
    rate = loaded.sample_rate
    expected = normalise_loudness(wave, rate, -14.0)
    np.testing.assert_allclose(scored, expected, atol=1.5 / 32768)
    assert not np.allclose(scored, normalise_loudness(np.clip(wave, -1, 1), rate), atol=1e-2)
    assert "scored loudness-normalised from the unclipped output" in warnings[0]


def test_audio_under_audiocraft_energy_floor_is_not_scaled():
    quiet = tone(2.0, 32_000, 440.0, amplitude=0.002)  # RMS 0.0014 < 2e-3
    np.testing.assert_array_equal(normalise_loudness(quiet, 32_000), quiet)


def test_prompt_files_in_another_encoding_or_with_odd_fields(tmp_path):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"text": "calm"}\n{"text": "café"}\n'.encode("latin-1"))
    with pytest.raises(UserError, match=r"latin.jsonl:2: not UTF-8 .*save the file as UTF-8"):
        load_prompt_set(str(latin))
    odd = tmp_path / "odd.jsonl"
    odd.write_text(
        "\n".join(json.dumps(r) for r in [{"id": None, "text": "a"}, {"id": " ", "text": "b"}])
    )
    assert [p.id for p in load_prompt_set(str(odd)).prompts] == ["1", "2"]  # never "None"
    odd.write_text(json.dumps({"text": "a", "reference": 5}))
    with pytest.raises(UserError, match='odd.jsonl:1: "reference" must be a file path'):
        load_prompt_set(str(odd))
