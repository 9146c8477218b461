"""Training settings that used to fail mid-run with Lightning's or peft's traceback, or to train
nothing at all, now fail when the config is composed (or before the first step) in one line."""

import pytest

from musicgen_train.config import load_config
from musicgen_train.errors import ConfigError, UserError
from musicgen_train.training.lengths import check_training_length, max_training_frames
from musicgen_train.training.loggers import build_loggers


@pytest.mark.parametrize(
    "overrides,named",
    [
        # Lightning: "You have passed invalid value 1.5 for limit_val_batches" (a traceback).
        (["trainer.limit_val_batches=1.5"], "trainer.limit_val_batches=1.5"),
        # Lightning stopped at the first validation: "could not find the monitored key".
        (["callbacks.checkpoint.monitor=val/loss"], "callbacks.checkpoint.monitor='val/loss'"),
        (["callbacks.checkpoint.monitor=val/caption_gain"], "callbacks.checkpoint.mode=max"),
        (["callbacks.checkpoint.mode=max"], "callbacks.checkpoint.mode=min"),
        # alpha / r = 0: the adapters add nothing and get no gradient; dropout 1 likewise.
        (["finetune=lora", "finetune.lora.alpha=0"], "finetune.lora.alpha=0"),
        (["finetune=lora", "finetune.lora.dropout=1.0"], "finetune.lora.dropout=1"),
        # peft: "No `target_modules` passed but also no `target_parameters` found".
        (["finetune=lora", "finetune.lora.target_modules=[enc_to_dec_proj]"], "'q_proj'"),
    ],
)
def test_settings_that_cannot_train_fail_when_composed(overrides, named):
    with pytest.raises(ConfigError) as err:
        load_config(overrides)
    assert named in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.limit_val_batches=3"],  # an integer: batches
        ["trainer.limit_val_batches=0.25"],
        ["callbacks.checkpoint.monitor=val/caption_gain", "callbacks.checkpoint.mode=max"],
        ["callbacks.checkpoint.monitor=val/ce_q2"],
        ["finetune=lora", "finetune.lora.target_modules=[q_proj,enc_to_dec_proj]"],
    ],
)
def test_sound_settings_still_compose(overrides):
    load_config(overrides)


def test_a_segment_longer_than_the_position_table_is_one_line(tiny_loaded):
    model = tiny_loaded.model
    # 2048 positions less the 4-step delay pattern: 2044 frames, 40.88 s at 50 frames/s.
    assert max_training_frames(model) == 2044
    check_training_length(model, load_config(["data.segment_seconds=40", "data.crop_seconds=null"]))
    with pytest.raises(UserError) as err:
        check_training_length(
            model, load_config(["data.segment_seconds=60", "data.crop_seconds=null"])
        )
    message = str(err.value)
    assert "data.segment_seconds=60 is longer than tiny can attend to (40.9 s" in message
    assert "data.crop_seconds=40" in message
    # A crop of the long segments is what trains, so it is what counts.
    check_training_length(model, load_config(["data.segment_seconds=60", "data.crop_seconds=30"]))


def test_a_melody_model_loses_its_chroma_positions():
    from musicgen_train.sources import load_without_codec

    model = load_without_codec("tiny-melody").model
    assert max_training_frames(model) == 2048 - 235 - 4  # 36.18 s
    with pytest.raises(UserError, match="data.crop_seconds=38 is longer than"):
        check_training_length(
            model, load_config(["data.segment_seconds=40", "data.crop_seconds=38"])
        )


def test_dashboard_runs_are_named_after_the_run_folder(work_home, tmp_path):
    # (MLflow's run takes the same name, from the same helper.)
    cfg = load_config(["logger=wandb", "data.name=mysongs"])
    assert cfg.run_name == "demo-mysongs"
    (wandb,) = build_loggers(cfg, tmp_path / "run")
    assert wandb._wandb_init["name"].startswith("demo-mysongs-")


def test_a_run_that_fails_at_its_data_leaves_the_last_checkpoint_in_place(work_home, tmp_path):
    from musicgen_train.training.train import resolve_ckpt_path, train

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run")
    cfg = load_config(
        ["logger=csv", "data=folder", f"data.source={tmp_path / 'typo'}", f"run_dir={run_dir}"]
    )
    with pytest.raises(UserError, match="no such folder"):
        train(cfg)
    # Moved aside before, so the ckpt_path=last tried next started from scratch.
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == b"an earlier run"
    assert resolve_ckpt_path("last", run_dir) == "last"


def test_a_run_too_short_to_validate_says_so(caplog):
    from musicgen_train.training.train import validates_before_the_end

    # The demo recipe validates every 25 training batches.
    assert not validates_before_the_end(load_config(["trainer.max_steps=10"]).trainer)
    assert "trainer.val_check_interval=25 training batches is beyond its 10" in caplog.text
    assert "set trainer.val_check_interval=10" in caplog.text
    # Accumulated batches count: 4 steps of 8 batches reach batch 25.
    long_enough = ["trainer.max_steps=4", "trainer.accumulate_grad_batches=8"]
    assert validates_before_the_end(load_config(long_enough).trainer)
    assert validates_before_the_end(load_config(["trainer.val_check_interval=0.5"]).trainer)


def test_wandb_gets_the_config_once(work_home, tmp_path):
    from types import SimpleNamespace

    from lightning.pytorch.utilities.parsing import AttributeDict

    (wandb,) = build_loggers(load_config(["logger=wandb"]), tmp_path / "run")
    assert wandb._wandb_init["config"]["optim"]["lr"] == 3e-3  # the whole config, at init
    updates = []
    wandb._experiment = SimpleNamespace(
        config=SimpleNamespace(update=lambda params, **kw: updates.append(params))
    )
    # What Lightning logs at fit: the module's hparams, the same config again under "cfg".
    wandb.log_hyperparams(AttributeDict(cfg={"optim": {"lr": 3e-3}}))
    wandb.log_hyperparams({"extra": 1})
    assert updates == [{"extra": 1}]
