"""``recipe=custom`` on a folder of your own: the run is named after the data, evaluation asks
for the held-out captions, and evaluating the printed checkpoint reuses the run's token cache."""

from __future__ import annotations

import json
import re

import pytest
from evaluation_models import tone

from musicgen_train.audio import write_audio
from musicgen_train.cli import main

CAPTIONS = ("a low calm drone", "a bright whistle", "a middle hum")

FAST = [
    "model=tiny",  # the recipe's shape on the tiny model: the whole path in a minute
    "data.segment_seconds=2",
    "data.valid_fraction=0.34",
    "data.batch_size=2",
    "data.num_workers=0",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.val_before_training=false",
    "trainer.precision=32",
    "callbacks.checkpoint.every_n_train_steps=2",
    "callbacks.samples.every_n_steps=0",
    "finetune.gradient_checkpointing=false",
    "logger=csv",
    "eval.embedders=[logmel]",
    "eval.generation.duration=1.0",
    "eval.bootstrap.samples=20",
    "eval.report_spectrograms=0",
    "eval.text_adherence.enabled=false",
]


@pytest.fixture
def own_folder(tmp_path):
    folder = tmp_path / "my songs"
    for i in range(9):
        caption = CAPTIONS[i % 3]
        write_audio(folder / f"take-{i}.wav", tone(3.0, 32_000, 110 * (1 + i % 3)), 32_000)
        (folder / f"take-{i}.txt").write_text(caption)
    return folder


@pytest.mark.slow
def test_custom_recipe_on_your_own_folder(work_home, own_folder, capsys, recwarn):
    args = ["recipe=custom", f"data.source={own_folder}", "data.name=mysongs", *FAST]
    assert main(["run", *args]) == 0
    run_dir = work_home / "runs" / "custom-mysongs"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (work_home / "runs" / "demo").exists()

    report = json.loads(next((run_dir / "eval").glob("*/eval_report.json")).read_text())
    manifest = work_home / "cache" / "mysongs-tiny" / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    heldout = {r["caption"] for r in rows if r["split"] == "valid"}
    assert report["prompt_set"]["name"] == "heldout"
    assert report["prompt_set"]["prompts"] == len(heldout) >= 1
    out = capsys.readouterr().out
    assert "models:/musicgen-custom-mysongs/1" in out
    # LoRA with checkpointing on a small folder: no library advice a user cannot act on
    library_talk = re.compile(r"checkpointing` is deprecated|smaller than the logging interval")
    assert [str(w.message) for w in recwarn if library_talk.search(str(w.message))] == []

    # The checkpoint path as printed, passed back unquoted; no second token cache.
    best = next((run_dir / "checkpoints").glob("best-step=*.ckpt"))
    caches = sorted(p.name for p in (work_home / "cache").iterdir() if p.is_dir())
    assert main(["evaluate", f"model={best}", *args[:3], *FAST[1:]]) == 0
    assert sorted(p.name for p in (work_home / "cache").iterdir() if p.is_dir()) == caches
