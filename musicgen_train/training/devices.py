"""Whether ``trainer.accelerator`` / ``trainer.devices`` / ``strategy`` fit this machine.

Checked before Lightning starts, so a setting the machine cannot run is one line naming the key,
the value and what is here, instead of Lightning's traceback (``MisconfigurationException: You
requested gpu: [0, 1, 2, 3] But your machine only has: [0]``). Only counts are read: CUDA is
never initialised here (``torch.cuda.device_count`` asks the driver, not a device).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from musicgen_train.errors import UserError


def plain_devices(devices):
    """``trainer.devices`` as Lightning takes it: a list of GPU indices arrives as a ListConfig."""
    return OmegaConf.to_container(devices) if isinstance(devices, ListConfig) else devices


def check_devices(cfg: DictConfig) -> None:
    """One line for a GPU setting without a GPU, FSDP off CUDA, or more devices than exist."""
    accelerator, cuda = cfg.trainer.accelerator, torch.cuda.is_available()
    mps = accelerator == "gpu" and torch.backends.mps.is_available()  # Lightning's gpu: either
    if accelerator in ("gpu", "cuda") and not (cuda or mps):
        raise UserError(
            f"trainer.accelerator={accelerator} needs a GPU, and none is available here (CUDA "
            "available: False): use trainer.accelerator=cpu, or auto to take a GPU when present"
        )
    if cfg.strategy.name == "fsdp" and not (cuda and accelerator in ("auto", "gpu", "cuda")):
        reason = "no CUDA GPU is available here" if not cuda else f"accelerator={accelerator}"
        raise UserError(
            f"strategy=fsdp needs CUDA GPUs (Lightning's FSDP runs on CUDA only) but {reason}: "
            "use strategy=ddp instead"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise UserError(
            "trainer.accelerator=mps needs an Apple GPU, and none is available here: use "
            "trainer.accelerator=auto (a CUDA GPU when present, else the CPU)"
        )
    devices = plain_devices(cfg.trainer.devices)
    if devices == "auto" or accelerator == "tpu":
        return  # Lightning takes what there is (TPUs: Lightning's own checks)
    target = device_kind(accelerator)
    if target == "cuda":
        _check_count(devices, torch.cuda.device_count(), "GPU")
    elif target == "mps":
        _check_count(devices, 1, "Apple GPU (mps)")
    else:
        _check_cpu(devices, accelerator)


def device_kind(accelerator: str) -> str:
    """What Lightning's accelerator setting resolves to here: cuda, mps or cpu."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "cuda"
    if accelerator in ("gpu", "mps", "auto") and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _check_count(devices, available: int, what: str) -> None:
    """``devices`` (a count, -1 = all, or a list of indices) against ``available`` devices."""
    shown = f"trainer.devices={devices}"
    have = f"this machine has {available} {what}{'s' if available != 1 else ''}"
    if isinstance(devices, list):
        missing = [i for i in devices if i >= available]
        if missing:
            renumbered = "; CUDA_VISIBLE_DEVICES renumbers them" if what == "GPU" else ""
            raise UserError(
                f"{shown} names {what} {', '.join(map(str, missing))}, which does not exist: "
                f"{have} (indices 0 to {available - 1}{renumbered})"
            )
    elif devices > available:
        raise UserError(
            f"{shown} asks for {devices} {what}s, but {have}: use trainer.devices={available} "
            "(or -1 / auto for all of them)"
        )


def _check_cpu(devices, accelerator: str) -> None:
    """On the CPU, ``devices`` is a number of processes: no GPU indices, no -1 (all GPUs), and
    several processes only when asked for by name (``accelerator=auto`` on a machine without a
    GPU would quietly turn ``devices=4`` meant for GPUs into 4 CPU processes)."""
    why = "" if accelerator == "cpu" else ", no GPU found"
    where = f"training runs on the CPU here (trainer.accelerator={accelerator}{why})"
    if isinstance(devices, list) or devices == -1:
        raise UserError(
            f"trainer.devices={devices} selects GPUs, but {where}: give a number of CPU "
            "processes (trainer.devices=1), or run on a machine with GPUs"
        )
    if devices > 1 and accelerator != "cpu":
        raise UserError(
            f"trainer.devices={devices} asks for {devices} GPUs, but {where}: use "
            f"trainer.devices=1, or trainer.accelerator=cpu to train in {devices} CPU processes"
        )
