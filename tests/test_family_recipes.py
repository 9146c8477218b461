"""``recipe=stereo`` and ``recipe=melody`` end to end on their tiny models: prepare, train,
samples, evaluate, export and register; the export loads with transformers' class of its family."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_train.audio import write_audio
from musicgen_train.cli import main

FAST = [
    "data.segment_seconds=2",
    "data.valid_fraction=0.34",
    "data.batch_size=2",
    "data.num_workers=0",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.val_before_training=false",
    "trainer.precision=32",
    "callbacks.checkpoint.every_n_train_steps=2",
    "callbacks.samples.every_n_steps=4",
    "callbacks.samples.duration=0.5",
    "finetune.gradient_checkpointing=false",
    "logger=csv",
    "eval.embedders=[logmel]",
    "eval.generation.duration=1.0",
    "eval.bootstrap.samples=20",
    "eval.report_spectrograms=0",
    "eval.text_adherence.enabled=false",
]


@pytest.fixture
def stereo_folder(tmp_path):
    folder = tmp_path / "songs"
    t = np.arange(3 * 32_000) / 32_000
    for i in range(6):
        left, right = 110.0 * (1 + i % 3), 165.0 * (1 + i % 2)
        audio = np.stack([0.4 * np.sin(2 * np.pi * left * t), 0.3 * np.sin(2 * np.pi * right * t)])
        write_audio(folder / f"take-{i}.wav", audio.astype(np.float32), 32_000)
        (folder / f"take-{i}.txt").write_text(("a low drone", "a bright whistle", "a hum")[i % 3])
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe, model, cls",
    [
        ("stereo", "tiny-stereo", "MusicgenForConditionalGeneration"),
        ("melody", "tiny-melody", "MusicgenMelodyForConditionalGeneration"),
    ],
)
def test_family_recipe_runs_end_to_end(work_home, stereo_folder, capsys, recipe, model, cls):
    import transformers

    args = [f"recipe={recipe}", f"model={model}", f"data.source={stereo_folder}"]
    assert main(["run", *args, "data.name=songs", *FAST]) == 0
    run_dir = work_home / "runs" / f"{recipe}-songs"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert f"models:/musicgen-{recipe}-songs/1" in capsys.readouterr().out

    cache = json.loads((work_home / "cache" / f"songs-{model}" / "cache_info.json").read_text())
    channels = 2 if recipe == "stereo" else 1
    assert cache["codec"]["channels"] == channels
    assert ("chroma" in cache["codec"]) == (recipe == "melody")

    samples = sorted(run_dir.glob("samples/**/*.wav"))
    assert samples and all(sf.info(p).channels == channels for p in samples)

    export = work_home / "exports" / f"musicgen-{recipe}-songs"
    loaded = getattr(transformers, cls).from_pretrained(export)  # transformers' own class
    assert loaded.config.decoder.audio_channels == channels
    assert loaded.config.decoder.num_codebooks == 4 * channels
    if recipe == "melody":
        settings = json.loads((export / "preprocessor_config.json").read_text())
        assert settings["feature_extractor_type"] == "MusicgenMelodyFeatureExtractor"
    with torch.no_grad():  # it generates: stereo gives two channels
        audio = loaded.generate(
            input_ids=torch.ones(1, 3, dtype=torch.long), do_sample=True, max_new_tokens=8
        )
    assert audio.shape[1] == channels
