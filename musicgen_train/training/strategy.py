"""How training spreads over processes, GPUs and nodes: Lightning strategies from ``cfg.strategy``.

``strategy=auto`` lets Lightning choose (one device: no wrapper). ``ddp`` replicates the model
(gloo on CPU, nccl on GPU). ``fsdp`` shards it, one FSDP unit per MusicGen decoder layer.
``deepspeed_stage_2|3`` shard optimizer state (2) and the weights too (3), optionally offloaded
to CPU memory; DeepSpeed runs on CUDA only. Multi-node runs need nothing here: Lightning reads
its cluster environment (torchrun, SLURM) and ``trainer.num_nodes``.
"""

from __future__ import annotations

import importlib.util
from datetime import timedelta
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from musicgen_train.errors import UserError
from musicgen_train.training.strategy_config import (  # noqa: F401 (used and re-exported)
    FSDP_SHARDING,
    PROCESS_GROUP_BACKENDS,
    STRATEGIES,
    validate_strategy,
)


def build_strategy(cfg: DictConfig) -> Any:
    """The ``strategy=`` argument of the Trainer: ``"auto"`` or a configured Strategy object."""
    name = cfg.strategy.name
    if name == "auto":
        return "auto"
    if name == "ddp":
        return ddp_strategy(cfg.strategy)
    if name == "fsdp":
        return fsdp_strategy(cfg.strategy)
    require_cuda_for_deepspeed(cfg)
    return deepspeed_strategy(cfg.strategy)


def ddp_strategy(scfg: DictConfig):
    from lightning.pytorch.strategies import DDPStrategy

    # Frozen weights (T5, LoRA's base) never reach DDP; find_unused_parameters covers trainable
    # ones that can miss a gradient in a step (e.g. the text projection when every caption of
    # the batch was dropped for classifier-free guidance). Turn it off for speed when unneeded.
    return DDPStrategy(
        process_group_backend=scfg.process_group_backend,  # None: nccl on GPU, gloo on CPU
        find_unused_parameters=scfg.find_unused_parameters,
        static_graph=scfg.static_graph,
        gradient_as_bucket_view=scfg.gradient_as_bucket_view,
        start_method=scfg.start_method,
        timeout=timedelta(minutes=scfg.timeout_minutes),
    )


def decoder_layer_class() -> type[torch.nn.Module]:
    """The block FSDP wraps and checkpoints: one transformer layer of MusicGen's decoder."""
    from transformers.models.musicgen.modeling_musicgen import MusicgenDecoderLayer

    return MusicgenDecoderLayer


def fsdp_strategy(scfg: DictConfig):
    from lightning.pytorch.strategies import FSDPStrategy

    layer = decoder_layer_class()
    return FSDPStrategy(
        auto_wrap_policy={layer},
        activation_checkpointing_policy={layer} if scfg.activation_checkpointing else None,
        sharding_strategy=scfg.sharding_strategy,
        cpu_offload=scfg.cpu_offload,
        state_dict_type=scfg.state_dict_type,
        process_group_backend=scfg.process_group_backend,
        timeout=timedelta(minutes=scfg.timeout_minutes),
        # Frozen T5 and LoRA mix trainable and frozen weights inside one FSDP unit: FSDP
        # accepts that only with the original parameters kept visible.
        use_orig_params=True,
        limit_all_gathers=scfg.limit_all_gathers,
    )


def require_cuda_for_deepspeed(cfg: DictConfig) -> None:
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="auto")
    if not torch.cuda.is_available():
        reason = "no CUDA GPU is available here"
    elif accelerator not in ("auto", "gpu", "cuda"):
        reason = f"trainer.accelerator={accelerator} asks for another device"
    else:
        return
    raise UserError(
        f"strategy={cfg.strategy.name} needs CUDA GPUs (DeepSpeed runs on CUDA only) but {reason}:"
        " use strategy=ddp instead (strategy=fsdp needs CUDA too)"
    )


def deepspeed_strategy(scfg: DictConfig):
    """Lightning's DeepSpeedStrategy; its ``.config`` is the DeepSpeed JSON config it will use."""
    if importlib.util.find_spec("deepspeed") is None:
        raise UserError(
            f"strategy={scfg.name} needs the deepspeed package: "
            "pip install 'musicgen-train[distributed]'"
        )
    from lightning.pytorch.strategies import DeepSpeedStrategy

    stage = scfg.stage
    return DeepSpeedStrategy(
        stage=stage,
        offload_optimizer=scfg.offload_optimizer,
        # Offloading the weights themselves exists in stage 3 only.
        offload_parameters=scfg.offload_parameters and stage == 3,
        pin_memory=scfg.pin_memory,
        allgather_bucket_size=int(scfg.allgather_bucket_size),
        reduce_bucket_size=int(scfg.reduce_bucket_size),
        overlap_comm=scfg.overlap_comm,
        contiguous_gradients=scfg.contiguous_gradients,
        # Checkpoints without the frozen T5 copy per rank: smaller and what export needs.
        exclude_frozen_parameters=scfg.exclude_frozen_parameters,
        logging_batch_size_per_gpu=scfg.logging_batch_size_per_gpu,
        process_group_backend=scfg.process_group_backend,
        timeout=timedelta(minutes=scfg.timeout_minutes),
    )
