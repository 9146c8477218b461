"""Evaluation with melody references and audio prompts (evaluation/conditioning.py): which
audio each prompt is conditioned on, the clips generated with it, and what the report says."""

from __future__ import annotations

import json

import numpy as np
import pytest
from evaluation_models import tone

from musicgen_train.audio import read_audio, write_audio
from musicgen_train.config import load_config
from musicgen_train.errors import ConfigError
from musicgen_train.evaluation.conditioning import conditioning_for, load_for
from musicgen_train.evaluation.prompts import heldout_prompts, load_prompt_set
from musicgen_train.evaluation.run import evaluate, generate_clips
from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.sources import load_musicgen

RATE = 32_000


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("set")
    write_audio(folder / "ref-a.wav", tone(1.0, 44_100, 392.0), 44_100)
    write_audio(folder / "ref-b.wav", tone(1.0, 44_100, 440.0), 44_100)
    write_audio(folder / "mel.wav", tone(1.0, RATE, 330.0), RATE)
    write_audio(folder / "start.wav", tone(0.2, RATE, 220.0), RATE)
    rows = [
        {"id": "a", "text": "a calm hum", "reference": "ref-a.wav", "melody": "mel.wav"},
        {"id": "b", "text": "a bright whistle", "reference": "ref-b.wav"},
        {"id": "c", "text": "drums", "audio_prompt": "start.wav"},
    ]
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _ecfg(**values):
    return {"melody": "auto", "audio_prompt": "auto", "audio_prompt_seconds": 0.3, **values}


def test_which_audio_each_prompt_is_conditioned_on(prompt_file):
    prompts = load_prompt_set(str(prompt_file))
    folder = prompt_file.parent
    auto = conditioning_for(_ecfg(), prompts, melody_model=True)
    # a: its melody file; b: its own reference (audiocraft's way); c: nothing to use.
    assert [c and c.path for c in auto.melody] == [folder / "mel.wav", folder / "ref-b.wav", None]
    assert [c and c.path for c in auto.audio_prompt] == [None, None, folder / "start.wav"]
    assert auto.summary["melody"].endswith("2 of 3 prompts; 1 from the prompts' own audio")
    assert auto.summary["audio_prompt"] == "the prompt set's audio_prompt files: 1 of 3 prompts"

    text = conditioning_for(_ecfg(), prompts, melody_model=False)
    assert text.melody == [None] * 3 and text.summary["melody"] == "none (a text model)"

    own = conditioning_for(
        _ecfg(melody="reference", audio_prompt="reference"), prompts, melody_model=True
    )
    assert [c and c.path.name for c in own.melody] == ["ref-a.wav", "ref-b.wav", None]
    # Continuation from the first 0.3 s of each prompt's own audio, at the model's rate.
    clip = own.audio_prompt[0]
    assert (clip.offset, clip.duration) == (0.0, 0.3)
    audio = load_for(clip, RATE, 1)
    assert audio.shape == (1, int(0.3 * RATE))
    expected = tone(0.3, RATE, 392.0)
    # 16-bit file, resampled 44.1 -> 32 kHz (the filter rings at the cut ends)
    assert np.abs(audio - expected)[:, 200:-200].max() < 2e-3
    assert own.summary["audio_prompt_seconds"] == 0.3

    none = conditioning_for(_ecfg(melody="none", audio_prompt="none"), prompts, True)
    assert not any(none.any(i) for i in range(3))
    with pytest.raises(ConfigError, match="eval.melody='chroma'"):
        load_config(["eval.melody=chroma"])


def test_conditioned_clips_are_the_engine_s_continuations(prompt_file, tmp_path):
    loaded = load_musicgen("tiny-melody")
    prompts = load_prompt_set(str(prompt_file))
    cond = conditioning_for(_ecfg(), prompts, melody_model=True)
    params = GenerationParams(duration=0.3, seed=11, top_k=20)
    clips = generate_clips(loaded, prompts, params, tmp_path, 1, 4, cond)
    engine = GenerationEngine(loaded)
    wanted = int(0.3 * RATE)
    for i, prompt in enumerate(prompts.prompts):
        made, rate = read_audio(clips[i][0].path)
        assert rate == RATE and made.shape == (1, wanted)  # the continuation only
        melody, start = cond.melody[i], cond.audio_prompt[i]
        alone = engine.generate(
            [prompt.text],
            GenerationParams(duration=0.3, seed=11 + i, top_k=20),
            melody=None if melody is None else load_for(melody, RATE, 1),
            audio_prompt=None if start is None else load_for(start, RATE, 1),
        )[0][..., -wanted:]
        expected = np.round(np.clip(alone, -1, 1) * 32767) / 32767  # the 16-bit file
        assert np.abs(made - expected).max() < 1e-4


def test_the_report_says_what_was_used(prompt_file, work_home, tmp_path):
    cfg = load_config(
        [
            f"eval.prompts={prompt_file}",
            "eval.reference=prompts",
            "eval.generation.duration=0.5",
            "eval.bootstrap.samples=20",
            "eval.report_spectrograms=0",
            "eval.clap_score=false",
            "eval.text_adherence.enabled=false",
            "eval.fad_inf.enabled=false",
            "eval.compare_with=tiny",
        ]
    )
    report = evaluate(cfg, model_source="tiny-melody", output_dir=tmp_path / "eval")
    melody, text = report["models"]
    assert melody["conditioning"]["melody"].startswith("the prompt set's melody files, else")
    assert text["conditioning"]["melody"] == "none (a text model)"
    assert melody["conditioning"]["audio_prompt"].endswith("1 of 3 prompts")
    assert report["generation"]["melody"] == melody["conditioning"]["melody"]
    saved = json.loads((tmp_path / "eval" / "eval_report.json").read_text())
    assert saved["models"][0]["conditioning"] == melody["conditioning"]
    assert "melody=the prompt set" in (tmp_path / "eval" / "report.html").read_text()
    for row in melody["per_prompt"]:
        audio, rate = read_audio(row["audio"][0])
        assert audio.shape[-1] == int(0.5 * rate)


def test_heldout_prompts_carry_their_segment(tmp_path):
    write_audio(tmp_path / "song.wav", tone(4.0, RATE), RATE)
    rows = [
        {
            "id": "s1",
            "split": "valid",
            "caption": "a tune",
            "source": "song.wav",
            "offset": 1.0,
            "duration": 2.0,
        },
        {
            "id": "s2",
            "split": "valid",
            "caption": "gone",
            "source": "missing.wav",
            "offset": 0.0,
            "duration": 2.0,
        },
    ]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = heldout_prompts(tmp_path).prompts
    segment = prompts[0].segment
    assert (segment.path, segment.offset, segment.duration) == (tmp_path / "song.wav", 1.0, 2.0)
    assert prompts[1].segment is None
    cond = conditioning_for(_ecfg(), heldout_prompts(tmp_path), melody_model=True)
    assert cond.melody[0] == segment and cond.melody[1] is None
