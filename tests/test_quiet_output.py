"""Quiet defaults and evaluations on the dashboards.

``python train.py`` with its output piped to a file prints one line per thing a user must know:
no library chatter, no progress bar redrawn hundreds of times, and still the run folder, the
best checkpoint and the registered model. Evaluations (the final one and those during
training) reach the run's logger: metrics as ``eval/<metric>``, plots as images, clips as audio.
"""

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from musicgen_train.audio import write_audio
from musicgen_train.config import load_config
from musicgen_train.evaluation.callback import (
    evaluation_metrics,
    log_evaluation,
    report_clips,
)
from musicgen_train.logs import DropNoise, is_terminal, quiet_libraries
from musicgen_train.training.loggers import build_loggers

ROOT = Path(__file__).resolve().parent.parent
SR = 32000

# What a library says about itself; none of it may reach a user's log.
NOISE = {
    "anonymous": "The anonymous setting has no effect",
    "deepspeed": "Setting accelerator to CPU",
    "mlflow tables": "Creating initial MLflow database tables",
    "mlflow update": "Updating database tables",
    "alembic": "Context impl SQLiteImpl",
    "gpu census": "GPU available:",
    "tpu census": "TPU available:",
    "lightning tips": "💡 Tip",
    "setting echo": "was configured so",
    "summary echo": "Trainer already configured with model summary",
    "summary table": "┏━━",
    "validation bar": "Validation DataLoader",
    "training bar": "Epoch 0:",
    "wandb banner": "Tracking run with wandb version",
    "wandb offline banner": "W&B syncing is set to `offline`",
    "wandb footer": "You can sync this run to the cloud",
}


@pytest.fixture(scope="module")
def piped_run(tmp_path_factory):
    """``python train.py`` (10 steps, an evaluation during training) with output to a pipe."""
    home = tmp_path_factory.mktemp("quiet-home")
    env = {**os.environ, "MUSICGEN_TRAIN_HOME": str(home), "PYTHONPATH": str(ROOT)}
    for name in ("WANDB_SILENT", "WANDB_MODE", "TQDM_MININTERVAL", "TRANSFORMERS_VERBOSITY"):
        env.pop(name, None)  # the defaults a user gets, not the test suite's
    args = [
        "trainer.max_steps=10",
        "trainer.val_check_interval=5",
        "callbacks.samples.every_n_steps=10",
        "callbacks.samples.duration=0.5",
        "callbacks.evaluation.every_n_epochs=2",  # the demo has 5 batches an epoch: at step 10
    ]
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=home,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    return home, done.stdout


@pytest.mark.slow
def test_piped_output_has_no_library_noise(piped_run):
    _, out = piped_run
    found = {name: text for name, text in NOISE.items() if text in out}
    assert not found, f"noise in the output: {found}\n{out}"
    assert out.count("wandb sync") == 1  # the sync advice, once
    # Progress off a terminal: prepare's bar shows its first and last state, training a line
    # per fifth of the run.
    assert out.count("\r") <= 2
    steps = re.findall(r"step (\d+)/10, epoch \d+: train/ce=", out)
    assert steps == ["2", "4", "6", "8", "10"]
    assert re.search(r"model: [\d,]+ parameters, [\d,]+ trainable", out)
    # 34 lines for the demo as it ships; here 10 more for the evaluation during training.
    assert out.count("\n") <= 45, out


@pytest.mark.slow
def test_piped_output_still_says_what_a_user_needs(piped_run):
    home, out = piped_run
    run_dir = home / "runs" / "demo"
    assert re.search(rf"run_dir +{re.escape(str(run_dir))}$", out, re.M)
    best = re.search(r"best_checkpoint +(\S+best-step=10-val_ce=[\d.]+\.ckpt)$", out, re.M)
    assert best and Path(best.group(1)).is_file()
    assert re.search(r"registered_model +models:/musicgen-demo/1$", out, re.M)
    assert "registered model: models:/musicgen-demo/1" in out
    assert re.search(r"eval_report +\S+report\.html$", out, re.M)
    assert re.search(r"W&B is offline .*wandb sync \S+/offline-run-\*-[0-9a-f]{8}$", out, re.M)


@pytest.mark.slow
def test_wandb_offline_run_holds_both_evaluations(piped_run):
    """The offline run's files: eval metrics in its log, plots and clips as media, for the
    evaluation during training (step 10) and the final one."""
    home, _ = piped_run
    (run,) = (home / "runs" / "demo" / "wandb").glob("offline-run-*")
    (log_file,) = run.glob("*.wandb")
    data = log_file.read_bytes()
    media = run / "files" / "media"
    images = sorted(p.name for p in (media / "images" / "eval").glob("*.png"))
    audio = sorted(p.name for p in (media / "audio" / "eval").glob("*.wav"))
    # two plots (FAD per prompt, spectrograms) and four clips, per evaluation
    assert len([n for n in images if n.startswith("fad_logmel_per_prompt")]) == 2
    assert len([n for n in images if n.startswith("spectrograms_model")]) == 2
    assert len(audio) == 8
    report = next((home / "runs" / "demo" / "eval").rglob("eval_report.json"))
    import json

    metrics = json.loads(report.read_text())["metrics"]
    for name, value in metrics.items():
        if value is not None:  # the final evaluation's value, as wandb stored it
            assert f"eval/{name}".encode() in data
            assert repr(float(value)).encode() in data


# --- the same for the other loggers, without training ----------------------------------------


def _evaluation(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0])
    plot = tmp_path / "fad_x_per_prompt.png"
    fig.savefig(plot)
    plt.close(fig)
    t = np.arange(SR // 4) / SR
    clips = []
    for i, freq in enumerate((220.0, 440.0, 880.0, 660.0, 330.0)):
        tone = (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)[None]
        clips.append(write_audio(tmp_path / f"p{i}.wav", tone, SR))
    rows = [{"text": f"prompt {i}", "audio": [str(c)]} for i, c in enumerate(clips)]
    report = {
        "metrics": {"fad_x": 3.25, "clap_score": None, "kad_x": 0.5},
        "models": [{"per_prompt": rows}],
        "plots": [str(plot)],
    }
    return report


def test_report_metrics_and_clips_for_the_dashboard(tmp_path):
    report = _evaluation(tmp_path)
    assert evaluation_metrics(report) == {"eval/fad_x": 3.25, "eval/kad_x": 0.5}
    clips = report_clips(report)
    assert [c for _, c in clips] == ["prompt 0", "prompt 1", "prompt 2", "prompt 3"]
    assert all(p.is_file() for p, _ in clips)


def test_csv_tensorboard_mlflow_get_the_evaluation(work_home, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # mlflow sets it; restored after the test
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    report = _evaluation(tmp_path)
    metrics, clips = evaluation_metrics(report), report_clips(report)
    loggers = [
        build_loggers(load_config([f"logger={name}"]), tmp_path / "run")[0]
        for name in ("csv", "tensorboard", "mlflow")
    ]
    log_evaluation(loggers, metrics, report["plots"], clips, step=7, artifact_dir="eval")
    csv, tensorboard, mlflow = loggers

    rows = (Path(csv.log_dir) / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    values = dict(zip(header, rows[1].split(","), strict=True))
    assert float(values["eval/fad_x"]) == 3.25 and int(values["step"]) == 7

    tensorboard.experiment.flush()
    events = EventAccumulator(tensorboard.log_dir, size_guidance={"audio": 0, "images": 0})
    events.Reload()
    assert [e.value for e in events.Scalars("eval/kad_x")] == [0.5]
    assert events.Tags()["images"] == ["eval/fad_x_per_prompt"]
    image = events.Images("eval/fad_x_per_prompt")[0]
    assert (image.width, image.height, image.step) == (200, 100, 7)  # 2x1 inches at 100 dpi
    assert sorted(events.Tags()["audio"]) == [f"eval/audio/{i}" for i in range(4)]
    assert events.Audio("eval/audio/0")[0].length_frames == SR // 4

    mlflow.finalize("success")
    run = mlflow.experiment.get_run(mlflow.run_id)
    assert run.data.metrics == {"eval/fad_x": 3.25, "eval/kad_x": 0.5}
    artifacts = work_home / "mlflow-artifacts" / mlflow.run_id / "artifacts" / "eval"
    names = sorted(p.name for p in artifacts.iterdir())
    assert names == ["fad_x_per_prompt.png", "p0.wav", "p1.wav", "p2.wav", "p3.wav"]


# --- the filters themselves ----------------------------------------------------------------------


def _kept(records: list[tuple[str, int, str]]) -> list[str]:
    """The messages of ``records`` (logger, level, message) that reach a handler of their logger
    after quiet_libraries() (MLflow's loggers do not propagate to the root logger)."""
    quiet_libraries()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    loggers = {name: logging.getLogger(name) for name, _, _ in records}
    levels = {name: logger.level for name, logger in loggers.items()}
    for logger in loggers.values():
        logger.addHandler(handler)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.INFO)
    try:
        for name, level, message in records:
            loggers[name].log(level, message)
    finally:
        for name, logger in loggers.items():
            logger.removeHandler(handler)
            if name.startswith("lightning"):
                logger.setLevel(levels[name])
    return stream.getvalue().splitlines()


def test_library_noise_is_dropped_and_real_messages_kept():
    lightning, info, warning = "lightning.pytorch.utilities.rank_zero", logging.INFO, logging.WARN
    records = [
        (lightning, info, "GPU available: False, used: False"),
        (lightning, info, "TPU available: False, using: 0 TPU cores"),
        (lightning, info, "`Trainer(limit_val_batches=1.0)` was configured so 100% of batches"),
        (lightning, info, "💡 Tip: For seamless cloud logging, try installing litlogger"),
        (lightning, info, "`Trainer.fit` stopped: `max_steps=100` reached."),
        (lightning, warning, "GPU available but not used. You can set it by doing ..."),
        ("mlflow.store.db.utils", info, "Creating initial MLflow database tables..."),
        ("mlflow.store.db.utils", warning, "the database is locked"),
        ("alembic.runtime.migration", info, "Context impl SQLiteImpl."),
        ("alembic.runtime.migration", logging.ERROR, "migration failed"),
    ]
    assert _kept(records) == [
        "`Trainer.fit` stopped: `max_steps=100` reached.",
        "GPU available but not used. You can set it by doing ...",
        "the database is locked",
        "migration failed",
    ]


def test_log_lines_go_to_the_stderr_of_the_moment(monkeypatch):
    """The handler bound the stderr of its setup: once a test runner or notebook closed that
    stream, every later line was a "--- Logging error ---" traceback instead of the line."""
    from musicgen_train.logs import setup_logging

    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging()
    logging.getLogger("musicgen_train.test").info("one")
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("musicgen_train.test").info("two")
    assert second.getvalue() == "[musicgen-train] two\n"


def test_deepspeed_cpu_notice_is_dropped_and_its_other_warnings_kept():
    quiet_libraries()
    stream = io.StringIO()
    deepspeed = logging.getLogger("DeepSpeed")  # DeepSpeed's logger: its own handler, no parent
    handler = logging.StreamHandler(stream)
    deepspeed.addHandler(handler)
    try:
        deepspeed.warning(
            "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable "
            "to detect it."
        )
        deepspeed.warning("ZeRO stage 3 offload is slow")
    finally:
        deepspeed.removeHandler(handler)
    assert stream.getvalue() == "ZeRO stage 3 offload is slow\n"
    assert sum(isinstance(f, DropNoise) for f in deepspeed.filters) == 1  # added once


def test_progress_is_drawn_in_a_terminal_or_notebook_only(tmp_path):
    from musicgen_train.training.callbacks import LineProgress, build_callbacks

    class Tty(io.StringIO):
        def isatty(self):
            return True

    OutStream = type("OutStream", (io.StringIO,), {"__module__": "ipykernel.iostream"})
    assert is_terminal(Tty()) and is_terminal(OutStream())
    assert not is_terminal(io.StringIO()) and not is_terminal(None)
    with open(tmp_path / "log", "w") as closed:
        pass
    assert not is_terminal(closed)  # isatty() of a closed file raises ValueError
    bars = [c for c in build_callbacks(load_config([]), tmp_path) if "Progress" in type(c).__name__]
    assert [type(b) for b in bars] == [LineProgress]  # pytest captures stdout: not a terminal
