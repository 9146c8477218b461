"""Loggers built from config: W&B offline with its sync hint, CSV, TensorBoard, MLflow (SQLite),
and audio samples written for every logger."""

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import soundfile as sf
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

from musicgen_train.config import load_config
from musicgen_train.errors import ConfigError, UserError
from musicgen_train.training.loggers import build_loggers, log_audio, wandb_mode

SR = 32000


def _trainer(loggers, tmp_path) -> pl.Trainer:
    return pl.Trainer(
        logger=loggers,
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def _tones(seconds=(0.5, 0.25)):
    t = [np.arange(int(SR * s)) / SR for s in seconds]
    return [0.3 * np.sin(2 * np.pi * 440 * x).astype(np.float32)[None] for x in t]


@pytest.fixture
def no_wandb_env(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_wandb_mode_follows_key_env_and_config(monkeypatch, no_wandb_env):
    lcfg = load_config(["logger=wandb"]).logger
    assert wandb_mode(lcfg)[0] == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(lcfg) == ("online", "WANDB_API_KEY is set")
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert wandb_mode(lcfg)[0] == "offline"
    assert wandb_mode(load_config(["logger.mode=disabled"]).logger)[0] == "disabled"
    monkeypatch.setenv("WANDB_MODE", "sideways")
    with pytest.raises(UserError, match="WANDB_MODE='sideways'"):
        wandb_mode(lcfg)


def test_wandb_offline_writes_its_run_and_prints_the_sync_command(
    work_home, tmp_path, capsys, no_wandb_env
):
    cfg = load_config(["logger=wandb"])
    (logger,) = build_loggers(cfg, tmp_path / "run")
    assert isinstance(logger, WandbLogger)
    hint = [line for line in capsys.readouterr().out.splitlines() if "wandb sync" in line]
    assert len(hint) == 1 and "no WANDB_API_KEY is set" in hint[0]
    pattern = hint[0].split("wandb sync ", 1)[1]
    try:
        logger.log_metrics({"train/ce": 3.5}, step=1)
        trainer = _trainer([logger], tmp_path)
        paths = log_audio(
            trainer, "samples", _tones(), SR, ["calm piano", "drums"], tmp_path / "run"
        )
        config = dict(logger.experiment.config)
    finally:
        logger.experiment.finish()
    assert config["recipe"] == "demo" and config["logger"]["name"] == "wandb"
    (run_dir,) = Path("/").glob(pattern.lstrip("/"))
    assert run_dir.parent == tmp_path / "run" / "wandb"
    assert list(run_dir.glob("run-*.wandb"))
    media = sorted((run_dir / "files" / "media" / "audio").rglob("*.wav"))
    assert len(media) == 2 and len(paths) == 2


def test_wandb_log_model_needs_online(work_home, tmp_path, no_wandb_env):
    with pytest.raises(UserError, match="logger.log_model=True .* needs online"):
        build_loggers(load_config(["logger.log_model=true"]), tmp_path)


def test_csv_logger_and_audio_files(work_home, tmp_path):
    run = tmp_path / "run"
    (logger,) = build_loggers(load_config(["logger=csv"]), run)
    assert isinstance(logger, CSVLogger)
    logger.log_metrics({"train/ce": 2.0}, step=3)
    logger.save()
    assert Path(logger.log_dir) == run / "csv" / "version_0"
    assert "train/ce" in (run / "csv" / "version_0" / "metrics.csv").read_text()

    trainer = _trainer([logger], tmp_path)
    stereo = np.stack([_tones()[0][0], -_tones()[0][0]])
    audios = [*_tones(), stereo]
    captions = ["calm piano melody", "Upbeat drums & bass!", "stereo"]
    paths = log_audio(trainer, "samples", audios, SR, captions, run)
    folder = run / "samples" / "step-000000"
    assert [p.name for p in paths] == [
        "samples-00-calm-piano-melody.wav",
        "samples-01-upbeat-drums-bass.wav",
        "samples-02-stereo.wav",
    ]
    for path, audio in zip(paths, audios, strict=True):
        assert path.parent == folder
        info = sf.info(path)
        assert info.samplerate == SR
        assert info.frames == audio.shape[-1]
        assert info.channels == audio.shape[0]
    data, _ = sf.read(paths[0])
    np.testing.assert_allclose(data, audios[0][0], atol=1 / 2**14)  # PCM 16 rounding
    lines = [json.loads(x) for x in (folder / "captions.jsonl").read_text().splitlines()]
    assert [x["caption"] for x in lines] == captions
    # The step redone after a resume writes its files again: one line each, not two.
    log_audio(trainer, "samples", audios[:1], SR, captions[:1], run)
    lines = [json.loads(x) for x in (folder / "captions.jsonl").read_text().splitlines()]
    assert sorted(x["file"] for x in lines) == [p.name for p in paths]


def test_tensorboard_gets_audio_summaries(work_home, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    (logger,) = build_loggers(load_config(["logger=tensorboard"]), run)
    assert isinstance(logger, TensorBoardLogger)
    assert Path(logger.log_dir).parent == run / "tensorboard"
    paths = log_audio(_trainer([logger], tmp_path), "samples", _tones(), SR, ["a", "b"], run)
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"audio": 0})
    events.Reload()
    assert sorted(events.Tags()["audio"]) == ["samples/0", "samples/1"]
    clip = events.Audio("samples/1")[0]
    assert clip.sample_rate == SR and clip.length_frames == SR // 4
    assert len(paths) == 2 and all(p.exists() for p in paths)


def test_mlflow_logs_to_sqlite_under_work_dir(work_home, tmp_path):
    cfg = load_config(["logger=mlflow"])
    (logger,) = build_loggers(cfg, tmp_path / "run")
    assert isinstance(logger, MLFlowLogger)
    assert logger._tracking_uri == f"sqlite:///{work_home.resolve() / 'mlflow.db'}"
    logger.log_metrics({"val/ce": 1.25}, step=2)
    log_audio(_trainer([logger], tmp_path), "samples", _tones((0.1,)), SR, ["x"], tmp_path / "run")
    logger.finalize("success")
    run = logger.experiment.get_run(logger.run_id)
    assert run.data.metrics["val/ce"] == 1.25
    assert run.data.tags["mlflow.runName"] == "demo"
    artifacts = work_home / "mlflow-artifacts" / logger.run_id / "artifacts" / "samples"
    assert [p.name for p in artifacts.rglob("*.wav")] == ["samples-00-x.wav"]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        (["logger.name=neptune"], "logger.name"),
        (["logger.mode=sometimes"], "logger.mode"),
        (["logger=csv", "logger.flush_every_n_steps=0"], "logger.flush_every_n_steps"),
        (["logger=mlflow", "logger.experiment_name="], "logger.experiment_name"),
    ],
)
def test_bad_logger_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(override)
