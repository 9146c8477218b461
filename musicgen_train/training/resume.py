"""What a resumed run checks in its checkpoint, and which changed settings it applies.

A checkpoint holds the trained weights only (the frozen ones come back from ``model.id``), so
it fits a run only with the same model and the same trainable set (``finetune`` full or LoRA,
and LoRA's rank and targets): anything else is one line naming what differs, before any state
is touched. The optimizer's hyperparameters (``optim.lr``, ``betas``, ``weight_decay``, ``eps``)
and the schedule are another matter: Lightning restores the checkpoint's values into AdamW and
the scheduler, so ``ckpt_path=last optim.lr=1e-5`` used to go on at the old learning rate without
a word. A changed value is applied to the restored optimizer and said in one line; unchanged
settings leave the restored state exactly as saved (bitwise-exact resume).
"""

from __future__ import annotations

import logging

from omegaconf import OmegaConf

from musicgen_train.errors import UserError

log = logging.getLogger(__name__)

# Settings that decide which weights exist and what shape they have.
IDENTITY = ("model.id", "finetune.name", "finetune.lora.r", "finetune.lora.target_modules")
# Settings that fit the same weights but change what they compute: said, not refused.
SCALING = ("finetune.lora.alpha",)


def _scale(alpha, cfg) -> str:
    rank = _select(cfg, "finetune.lora.r")
    return f"{float(alpha) / float(rank):g}" if alpha is not None and rank else "?"


def _select(cfg, key: str):
    value = OmegaConf.select(OmegaConf.create(cfg or {}), key, default=None)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _differences(saved: dict, current, keys) -> list[tuple[str, object, object]]:
    return [
        (k, _select(saved, k), _select(current, k))
        for k in keys
        if _select(saved, k) != _select(current, k)
    ]


def check_fits(module, checkpoint: dict, ckpt_path: str | None) -> None:
    """A ``UserError`` when the checkpoint's weights are not those ``module`` trains."""
    state = checkpoint.get("state_dict", {})
    saved = {k.removeprefix("model.") for k in state}
    mine = dict(module.trainable_parameters())
    problems = [f"it lacks {n}" for n in sorted(set(mine) - saved)[:1]]
    own = module.state_dict()
    problems += [f"it has {k}, which this model does not" for k in sorted(set(state) - set(own))]
    problems += [
        f"{k} is {tuple(v.shape)} there and {tuple(own[k].shape)} here"
        for k, v in state.items()
        # (a tensor ZeRO-3 has partitioned away is empty here: nothing to compare)
        if k in own and own[k].numel() and tuple(v.shape) != tuple(own[k].shape)
    ]
    saved_cfg = checkpoint.get("hyper_parameters", {}).get("cfg") or {}
    if not problems:
        for key, before, now in _differences(saved_cfg, module.cfg, SCALING):
            log.warning(
                "resumed with %s %r -> %r: the same LoRA weights now scale by alpha/r = %s "
                "instead of %s (resume with %s=%r to keep the trained model's output)",
                key, before, now, _scale(now, module.cfg), _scale(before, saved_cfg), key, before,
            )  # fmt: skip
        return
    differ = _differences(saved_cfg, module.cfg, IDENTITY)
    what = (
        "; ".join(f"{k}={a!r} there, {b!r} here" for k, a, b in differ)
        if differ
        else "its weights differ"
    )
    raise UserError(
        f"ckpt_path={ckpt_path or 'the checkpoint'} does not fit this run ({what}; "
        f"{problems[0]}): resume with the settings it was trained with, or leave ckpt_path out "
        "to start a fresh run"
    )


def changed_optim_settings(optimizer, cfg) -> list[tuple[str, object, object]]:
    """``optim.*`` values of ``cfg`` that differ from those of the (restored) optimizer. Read
    from the optimizer itself, not from the checkpoint's saved config: a run resumed with other
    values before wrote its own config beside the optimizer's old values."""
    opt = cfg.optim
    group = optimizer.param_groups[0]  # configure_optimizers' first group: the decayed matrices
    pairs = {
        "optim.lr": (group.get("initial_lr", group["lr"]), float(opt.lr)),
        "optim.betas": (tuple(group["betas"]), tuple(float(b) for b in opt.betas)),
        "optim.weight_decay": (group["weight_decay"], float(opt.weight_decay)),
        "optim.eps": (group["eps"], float(opt.eps)),
    }
    return [(k, _plain(old), new) for k, (old, new) in pairs.items() if _plain(old) != new]


def _plain(value):
    return tuple(float(v) for v in value) if isinstance(value, tuple | list) else float(value)


def apply_optim_settings(trainer, cfg) -> None:
    """Put this run's ``optim.*`` into the restored AdamW and scheduler (called at train start,
    after Lightning has restored them); the schedule's position is kept. Unchanged values leave
    the restored state untouched."""
    if not trainer.optimizers:
        return
    optimizer = trainer.optimizers[0]
    changes = changed_optim_settings(optimizer, cfg)
    if not changes:
        return
    opt = cfg.optim
    configs = trainer.lr_scheduler_configs
    scheduler = configs[0].scheduler if configs else None
    for index, group in enumerate(optimizer.param_groups):
        group["initial_lr"] = float(opt.lr)
        group["betas"] = tuple(float(b) for b in opt.betas)
        group["eps"] = float(opt.eps)
        group["weight_decay"] = float(opt.weight_decay) if index == 0 else 0.0
    if scheduler is not None and hasattr(scheduler, "lr_lambdas"):
        scheduler.base_lrs = [float(opt.lr)] * len(optimizer.param_groups)
        lrs = [
            base * fn(scheduler.last_epoch)
            for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
        ]
        for group, lr in zip(optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        scheduler._last_lr = lrs
    else:
        for group in optimizer.param_groups:
            group["lr"] = float(opt.lr)
    shown = ", ".join(f"{k} {a} -> {b}" for k, a, b in changes)
    log.info("resumed with changed settings, applied from step %d: %s", trainer.global_step, shown)


def restore_ema(module, checkpoint: dict) -> None:
    """EMA turned on when resuming a run trained without it: the average starts from the
    checkpoint's weights (not from the base model's, which the module was built with)."""
    if module.ema is None:
        return
    if "ema" in checkpoint:
        module.ema.load_state_dict(checkpoint["ema"])
        decay = float(module.cfg.finetune.ema.decay)
        if module.ema.decay != decay:
            log.info(
                "resumed with changed settings: finetune.ema.decay %s -> %s",
                module.ema.decay,
                decay,
            )
            module.ema.decay = decay
        return
    state = checkpoint.get("state_dict", {})
    # (DeepSpeed's checkpoint has no state_dict: its engine has loaded the weights already)
    params = dict(module.trainable_parameters())
    for name in module.ema.shadow:
        value = state.get(f"model.{name}", params[name])
        module.ema.shadow[name] = value.detach().float().clone()
    log.info("finetune.ema is on but the checkpoint has no EMA: it starts from its weights")
