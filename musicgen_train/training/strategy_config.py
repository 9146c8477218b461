"""What ``strategy=...`` may say, checked when the config is composed (no Lightning imported)."""

from __future__ import annotations

from omegaconf import DictConfig

from musicgen_train.config import check_choice, check_range
from musicgen_train.errors import ConfigError

STRATEGIES = ("auto", "ddp", "fsdp", "deepspeed_stage_2", "deepspeed_stage_3")
FSDP_SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "_HYBRID_SHARD_ZERO2")
PROCESS_GROUP_BACKENDS = (None, "gloo", "nccl", "mpi")


def validate_strategy(cfg: DictConfig) -> None:
    """Checks run when the config is composed (``musicgen_train.training.config.validate``)."""
    if "strategy" not in cfg or not isinstance(cfg.strategy, DictConfig):
        raise ConfigError(f"strategy is missing: choose one of {list(STRATEGIES)}")
    check_choice(cfg, "strategy.name", STRATEGIES)
    name = cfg.strategy.name
    if name == "auto":
        return
    check_choice(cfg, "strategy.process_group_backend", PROCESS_GROUP_BACKENDS)
    check_range(cfg, "strategy.timeout_minutes", 1)
    if name == "ddp":
        check_choice(cfg, "strategy.start_method", ("popen", "spawn", "fork", "forkserver"))
        for key in ("find_unused_parameters", "static_graph", "gradient_as_bucket_view"):
            check_choice(cfg, f"strategy.{key}", (True, False))
    elif name == "fsdp":
        check_choice(cfg, "strategy.sharding_strategy", FSDP_SHARDING)
        check_choice(cfg, "strategy.state_dict_type", ("full", "sharded"))
        for key in ("activation_checkpointing", "cpu_offload", "limit_all_gathers"):
            check_choice(cfg, f"strategy.{key}", (True, False))
    else:
        check_choice(cfg, "strategy.stage", (int(name[-1]),))
        for key in ("offload_optimizer", "offload_parameters", "pin_memory", "overlap_comm"):
            check_choice(cfg, f"strategy.{key}", (True, False))
        check_range(cfg, "strategy.allgather_bucket_size", 1)
        check_range(cfg, "strategy.reduce_bucket_size", 1)
        if cfg.strategy.offload_parameters and cfg.strategy.stage != 3:
            raise ConfigError(
                "strategy.offload_parameters=true needs strategy=deepspeed_stage_3 "
                "(stage 2 offloads the optimizer only: strategy.offload_optimizer=true)"
            )
