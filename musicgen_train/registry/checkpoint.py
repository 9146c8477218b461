"""Training checkpoints -> plain Hugging Face model folders.

A Lightning ``.ckpt`` holds only what trained (plus EMA); the rest comes back from the base model
its config names. A DeepSpeed ZeRO checkpoint is a folder of shards that is first consolidated
into one fp32 state dict. ``checkpoint_to_pretrained`` caches the result by the checkpoint's
content, so ``model=<run>/checkpoints/last.ckpt`` converts once and loads fast afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from musicgen_train.errors import UserError
from musicgen_train.model.tiny import cache_root
from musicgen_train.registry.checksums import ChecksumError, has_checksums, verify_checksums
from musicgen_train.registry.model_folder import (
    ADAPTER_DIR,
    atomic_folder,
    save_model_folder,
    set_generation_defaults,
)

log = logging.getLogger(__name__)

# Used when neither the export config nor the training config holds export.generation.
DEFAULT_GENERATION = {
    "duration": 8.0,
    "guidance_scale": 3.0,
    "temperature": 1.0,
    "top_k": 250,
    "top_p": 0.0,
}


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, or does not fit the model it names."""


def is_deepspeed_checkpoint(path: Path) -> bool:
    # DeepSpeed writes a folder holding a "latest" tag file and/or a "checkpoint" subfolder.
    return path.is_dir() and ((path / "latest").exists() or (path / "checkpoint").is_dir())


def resolve_checkpoint(value: str, run_dir: str | Path) -> Path:
    """``best`` / ``last`` inside ``<run_dir>/checkpoints``, or a path; it must exist."""
    from musicgen_train.training.callbacks import checkpoint_dir

    folder = checkpoint_dir(run_dir)
    if value == "last":
        path = folder / "last.ckpt"
    elif value == "best":
        from musicgen_train.training.train import resolve_ckpt_path

        if not (folder / "last.ckpt").exists():
            raise CheckpointError(
                f"checkpoint=best: no checkpoints in {folder} (train first, or give "
                "checkpoint=<path to a .ckpt file or DeepSpeed checkpoint folder>)"
            )
        path = Path(resolve_ckpt_path("best", Path(run_dir)))
    else:
        path = Path(value).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint={value}: {path} does not exist")
    if path.is_dir() and not is_deepspeed_checkpoint(path):
        raise CheckpointError(
            f"checkpoint={value}: {path} is a folder but not a DeepSpeed checkpoint "
            "(no 'latest' file or 'checkpoint' subfolder)"
        )
    return path.resolve()


def content_hash(path: Path) -> str:
    """sha256 over the checkpoint's bytes (every file of a DeepSpeed folder, by name)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _consolidate_deepspeed(folder: Path, out_file: Path) -> Path:
    try:
        import deepspeed  # noqa: F401
    except ImportError as err:
        raise CheckpointError(
            f"{folder} is a DeepSpeed ZeRO checkpoint; consolidating it needs deepspeed: "
            "pip install 'musicgen-train[distributed]'"
        ) from err
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    try:
        convert_zero_checkpoint_to_fp32_state_dict(str(folder), str(out_file))
    except Exception as err:
        raise CheckpointError(
            f"could not consolidate DeepSpeed checkpoint {folder}: {err}"
        ) from err
    return out_file


def _load_file(path: Path, shown: Path):
    from musicgen_train.training.module import MusicgenLightningModule

    try:
        with warnings.catch_warnings():
            # Frozen weights are left out of checkpoints on purpose; they come from the base.
            warnings.filterwarnings("ignore", message="Found keys that are in the model state")
            return MusicgenLightningModule.load_from_checkpoint(str(path), map_location="cpu")
    except UserError:
        raise
    except Exception as err:  # torch raises many types for unreadable or mismatched files
        raise CheckpointError(_load_failure(shown, err)) from err


def _load_failure(path: Path, err: Exception) -> str:
    text = " ".join(str(err).split())
    if "size mismatch" in text:
        first = text[text.index("size mismatch") :][:240]
        return (
            f"checkpoint {path} does not fit the model its config names (another model shape?): "
            f"{first}"
        )
    if "hyper_parameters" in text or "'cfg'" in text or "missing 1 required" in text:
        return f"checkpoint {path} was not written by musicgen-train (no config in its hparams)"
    if isinstance(err, KeyError):
        return f"checkpoint {path} does not fit its model: {text}"
    return f"checkpoint {path} is corrupt or truncated and cannot be read ({text[:200]})"


def load_checkpoint_module(path: Path):
    """The training module of a ``.ckpt`` file or DeepSpeed folder, on the CPU."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        with tempfile.TemporaryDirectory(prefix="zero-to-fp32-") as tmp:
            consolidated = _consolidate_deepspeed(path, Path(tmp) / "consolidated.ckpt")
            return _load_file(consolidated, path)
    return _load_file(path, path)


def training_config(module) -> DictConfig:
    return OmegaConf.create(module.hparams["cfg"])


def _save_adapter_apart(model, adapter_dir: Path) -> bool:
    """With LoRA kept apart: write the adapter, then strip it from the model (in place)."""
    from peft import PeftModel

    if not isinstance(model.decoder, PeftModel):
        return False
    model.decoder.save_pretrained(adapter_dir)
    model.decoder = model.decoder.unload()  # the base decoder, adapters removed, not merged
    return True


def write_checkpoint_folder(
    folder: Path,
    module,
    *,
    merge_lora: bool = True,
    use_ema: bool = True,
    generation: Mapping | None = None,
    readme: str | None = None,
) -> dict:
    """Write the HF folder of ``module`` into the (empty) ``folder``; return what was done."""
    train_cfg = training_config(module)
    ema_present = getattr(module, "ema", None) is not None
    generation = dict(generation or OmegaConf.select(train_cfg, "export.generation") or {})
    generation = {**DEFAULT_GENERATION, **generation}
    model = module.export_model(merge_lora=merge_lora, use_ema=use_ema)
    adapter = _save_adapter_apart(model, Path(folder) / ADAPTER_DIR)
    set_generation_defaults(model, generation)
    save_model_folder(folder, model, module.processor, readme=readme)
    return {
        "base_model": str(train_cfg.model.id),
        "finetune": str(OmegaConf.select(train_cfg, "finetune.name")),
        "lora": OmegaConf.select(train_cfg, "finetune.name") == "lora",
        "merge_lora": not adapter,
        "ema_weights": bool(use_ema and ema_present),
        "generation": generation,
    }


def checkpoint_to_pretrained(path: str | Path) -> Path:
    """A cached HF folder (EMA weights, LoRA merged) of a checkpoint, keyed by its content."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    key = content_hash(path)[:16]
    folder = cache_root() / "checkpoints" / f"{path.stem}-{key}"
    if has_checksums(folder):
        try:
            verify_checksums(folder)
            return folder
        except ChecksumError as err:
            log.warning("converting %s again: %s", path, err)
    log.info("converting checkpoint %s into a model folder (once)", path)
    module = load_checkpoint_module(path)
    with atomic_folder(folder) as tmp:
        write_checkpoint_folder(tmp, module)
    return folder
