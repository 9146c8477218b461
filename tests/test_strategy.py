"""Strategies built from config: DDP, FSDP's auto-wrap on decoder layers, DeepSpeed's config dict
and its one-line error without CUDA."""

import importlib.util
import subprocess
import sys
from datetime import timedelta

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch.distributed.fsdp import CPUOffload, ShardingStrategy
from transformers.models.musicgen.modeling_musicgen import MusicgenDecoderLayer

from musicgen_train.config import load_config
from musicgen_train.errors import ConfigError, UserError
from musicgen_train.training.strategy import build_strategy, deepspeed_strategy

needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="deepspeed is not installed (pip install 'musicgen-train[distributed]')",
)


def test_auto_is_lightnings_choice():
    assert build_strategy(load_config(["strategy=auto"])) == "auto"


def test_ddp_from_config():
    strategy = build_strategy(load_config(["strategy=ddp", "strategy.timeout_minutes=5"]))
    assert isinstance(strategy, DDPStrategy)
    assert strategy._ddp_kwargs["find_unused_parameters"] is True
    assert strategy._ddp_kwargs["gradient_as_bucket_view"] is True
    assert strategy._start_method == "popen"
    assert strategy._timeout == timedelta(minutes=5)
    assert strategy._process_group_backend is None  # Lightning: gloo on CPU, nccl on CUDA

    tuned = build_strategy(
        load_config(
            [
                "strategy=ddp",
                "strategy.find_unused_parameters=false",
                "strategy.process_group_backend=gloo",
            ]
        )
    )
    assert tuned._ddp_kwargs["find_unused_parameters"] is False
    assert tuned._process_group_backend == "gloo"


def test_fsdp_wraps_each_decoder_layer(tiny_loaded):
    strategy = build_strategy(load_config(["strategy=fsdp"]))
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert strategy.kwargs["use_orig_params"] is True
    assert strategy._activation_checkpointing_kwargs == {}
    policy = strategy.kwargs["auto_wrap_policy"]
    assert policy._module_classes == {MusicgenDecoderLayer}
    # Run the policy on a real model: it targets exactly the decoder's layers.
    model = tiny_loaded.model
    targets = policy._run_policy(model, ignored_modules=set(), root_kwargs={})
    layers = list(model.decoder.model.decoder.layers)
    assert len(layers) == model.config.decoder.num_hidden_layers
    assert set(targets) == set(layers)


def test_fsdp_options_from_config():
    strategy = build_strategy(
        load_config(
            [
                "strategy=fsdp",
                "strategy.sharding_strategy=SHARD_GRAD_OP",
                "strategy.activation_checkpointing=true",
                "strategy.cpu_offload=true",
            ]
        )
    )
    assert strategy.sharding_strategy == ShardingStrategy.SHARD_GRAD_OP
    assert strategy.cpu_offload == CPUOffload(offload_params=True)
    checkpointing = strategy._activation_checkpointing_kwargs["auto_wrap_policy"]
    assert checkpointing._module_classes == {MusicgenDecoderLayer}


@needs_deepspeed
def test_deepspeed_stage_2_config_dict():
    cfg = load_config(
        [
            "strategy=deepspeed_stage_2",
            "strategy.offload_optimizer=true",
            "strategy.allgather_bucket_size=50000000",
        ]
    )
    zero = deepspeed_strategy(cfg.strategy).config["zero_optimization"]
    assert zero["stage"] == 2
    assert zero["offload_optimizer"]["device"] == "cpu"
    assert zero["offload_optimizer"]["pin_memory"] is True
    assert "offload_param" not in zero
    assert zero["allgather_bucket_size"] == 50_000_000
    assert zero["reduce_bucket_size"] == 200_000_000
    assert zero["overlap_comm"] is True and zero["contiguous_gradients"] is True


@needs_deepspeed
def test_deepspeed_stage_3_offloads_weights_too():
    cfg = load_config(
        [
            "strategy=deepspeed_stage_3",
            "strategy.offload_optimizer=true",
            "strategy.offload_parameters=true",
            "strategy.pin_memory=false",
        ]
    )
    strategy = deepspeed_strategy(cfg.strategy)
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_param"]["device"] == "cpu"
    assert zero["offload_param"]["pin_memory"] is False
    assert zero["offload_optimizer"]["device"] == "cpu"
    assert strategy.exclude_frozen_parameters is True
    # Without offload the config asks for none.
    plain = deepspeed_strategy(load_config(["strategy=deepspeed_stage_3"]).strategy)
    assert "offload_param" not in plain.config["zero_optimization"]
    assert "offload_optimizer" not in plain.config["zero_optimization"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_deepspeed_without_cuda_is_one_clear_error():
    # (not "or strategy=fsdp": Lightning's FSDP needs CUDA too)
    with pytest.raises(UserError, match=r"needs CUDA GPUs .* use strategy=ddp instead \(strategy="):
        build_strategy(load_config(["strategy=deepspeed_stage_2"]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_cli_deepspeed_on_cpu_exits_2_with_one_line(work_home):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "musicgen_train.cli",
            "train",
            "strategy=deepspeed_stage_3",
            "trainer.max_steps=1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("musicgen-train: error:")]
    assert len(lines) == 1, done.stderr[-2000:]
    assert "strategy=deepspeed_stage_3 needs CUDA GPUs" in lines[0]
    assert "use strategy=ddp instead" in lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        # Lightning: ValueError "The strategy `fsdp` requires a GPU accelerator" (traceback)
        ("strategy=fsdp", "strategy=fsdp needs CUDA GPUs (Lightning's FSDP runs on CUDA only)"),
        # Lightning: MisconfigurationException "No supported gpu backend found!" (traceback)
        ("trainer.accelerator=cuda", "trainer.accelerator=cuda needs a GPU, and none is"),
    ],
)
def test_gpu_settings_on_cpu_are_one_line(work_home, capsys, override, expected):
    from musicgen_train.cli import main

    assert main(["train", override, "trainer.max_steps=1", "logger=csv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"musicgen-train: error: {expected}") and err.count("\n") == 1
    assert not (work_home / "cache").exists()  # stopped before any work


@pytest.mark.parametrize(
    ("override", "key"),
    [
        (["strategy.name=horovod"], "strategy.name"),
        (["strategy=fsdp", "strategy.sharding_strategy=HALF"], "strategy.sharding_strategy"),
        (["strategy=ddp", "strategy.start_method=thread"], "strategy.start_method"),
        (
            ["strategy=deepspeed_stage_2", "strategy.offload_parameters=true"],
            "strategy.offload_parameters",
        ),
        (["strategy=deepspeed_stage_2", "strategy.stage=3"], "strategy.stage"),
    ],
)
def test_bad_strategy_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(override)
