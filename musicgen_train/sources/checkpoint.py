"""Training checkpoints -> plain Hugging Face model folders, without the training code.

A Lightning ``.ckpt`` holds only what trained (plus EMA) and the config it trained with; the rest
comes back from the base model that config names, shaped by the same rule training used
(``model.finetune.configure_trainable``), so reading a checkpoint needs no LightningModule.
A DeepSpeed ZeRO checkpoint is a folder of shards that is first consolidated into one fp32
state dict. ``checkpoint_to_pretrained`` caches the result by the checkpoint's
content, so ``model=<run>/checkpoints/last.ckpt`` converts once and loads fast afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from omegaconf import DictConfig, OmegaConf

from musicgen_train.errors import UserError
from musicgen_train.model import lora as lora_wiring
from musicgen_train.model.codec import attach_codec, has_codec
from musicgen_train.model.ema import EMA
from musicgen_train.model.finetune import configure_trainable, trainable_parameters
from musicgen_train.model.loader import LoadedModel
from musicgen_train.model.lora import ADAPTER_DIR
from musicgen_train.model.tiny import cache_root
from musicgen_train.sources import safe_load
from musicgen_train.sources.model_folder import (
    atomic_folder,
    save_model_folder,
    set_generation_defaults,
    verified_conversion,
)
from musicgen_train.sources.safe_load import UnsafeCheckpointError

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


def checkpoint_dir(run_dir: str | Path) -> Path:
    """Where a run's checkpoints live: ``<run_dir>/checkpoints``."""
    return Path(run_dir) / "checkpoints"


def best_from_last(folder: Path, key: str = "checkpoint") -> Path:
    """The best checkpoint that ``last.ckpt`` in ``folder`` records (Lightning's callback state);
    ``key`` is the setting that asked for it, for the error line. A run folder that was moved or
    copied still finds its best file by name in ``folder``."""
    last = folder / "last.ckpt"
    if not last.exists():
        raise CheckpointError(f"{key}=best: {last} does not exist, so there is no best to find")
    try:
        state = safe_load.load(last)
    except UnsafeCheckpointError:
        raise
    except Exception as err:  # torch raises many types for unreadable files
        raise CheckpointError(
            f"{key}=best: {last} is corrupt or truncated, so the best checkpoint it records "
            f"cannot be read ({_short(err)}); give {key}=<path to a .ckpt file> instead"
        ) from err
    recorded = []
    callbacks = state.get("callbacks") if isinstance(state, dict) else None
    for name, value in (callbacks or {}).items():
        if str(name).startswith("ModelCheckpoint") and (value or {}).get("best_model_path"):
            recorded.append(Path(value["best_model_path"]))
    for best in recorded:
        for candidate in (folder / best.name, best):  # this run's own copy first
            if candidate.is_file():
                return candidate
    if recorded:
        raise CheckpointError(
            f"{key}=best: {last} records {recorded[0]} as the best checkpoint, but neither it nor "
            f"{folder / recorded[0].name} exists; give {key}=<path to a .ckpt file>"
        )
    raise CheckpointError(f"{key}=best: {last} records no best checkpoint")


def _short(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text if len(text) < 200 else text[:197] + "..."


def resolve_checkpoint(value: str, run_dir: str | Path) -> Path:
    """``best`` / ``last`` inside ``<run_dir>/checkpoints``, or a path; it must exist."""
    folder = checkpoint_dir(run_dir)
    if value == "last":
        path = folder / "last.ckpt"
    elif value == "best":
        if not (folder / "last.ckpt").exists():
            raise CheckpointError(
                f"checkpoint=best: no checkpoints in {folder} (train first, or give "
                "checkpoint=<path to a .ckpt file or DeepSpeed checkpoint folder>)"
            )
        path = best_from_last(folder)
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
            _hash_stream(handle, digest)
    return digest.hexdigest()


def _hash_stream(handle: BinaryIO, digest) -> None:
    while chunk := handle.read(1 << 20):
        digest.update(chunk)


@dataclass(frozen=True)
class PinnedCheckpoint:
    """A checkpoint file held open: hashed and loaded from the same bytes (see pin_checkpoint).
    ``handle`` is None for a DeepSpeed folder, which is hashed and read by path."""

    path: Path
    sha256: str
    handle: BinaryIO | None = None


@contextmanager
def pin_checkpoint(path: Path) -> Iterator[PinnedCheckpoint]:
    """Open the checkpoint once, so that what export hashes (its tags, its duplicate check) is
    what it loads: a training run still saving replaces ``last.ckpt`` by a rename and deletes
    an older ``best`` file, and an open file keeps the bytes it had."""
    path = Path(path)
    if path.is_dir():
        yield PinnedCheckpoint(path, content_hash(path))
        return
    try:
        handle = open(path, "rb")  # noqa: SIM115 - held for the caller's block
    except FileNotFoundError as err:
        raise CheckpointError(
            f"checkpoint {path} was removed before it could be read (a training run still "
            "saving checkpoints replaces them): run export again, or name a checkpoint file"
        ) from err
    with handle:
        digest = hashlib.sha256()
        _hash_stream(handle, digest)
        yield PinnedCheckpoint(path, digest.hexdigest(), handle)


def _consolidate_deepspeed(folder: Path, out_file: Path) -> Path:
    try:
        import deepspeed  # noqa: F401
    except ImportError as err:
        raise CheckpointError(
            f"{folder} is a DeepSpeed ZeRO checkpoint; consolidating it needs deepspeed: "
            "pip install 'musicgen-train[distributed]'"
        ) from err
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    safe_load.check_deepspeed_folder(folder)  # DeepSpeed's own reading unpickles fully
    try:
        convert_zero_checkpoint_to_fp32_state_dict(str(folder), str(out_file))
    except Exception as err:
        raise CheckpointError(
            f"could not consolidate DeepSpeed checkpoint {folder}: {err}"
        ) from err
    return out_file


# The base model a checkpoint's config names may itself be any source (``tiny``, a hub id, a
# registry URI): the resolver passes in how to load it, so this module never imports it back.
LoadBase = Callable[[DictConfig], LoadedModel]


def checkpoint_config(path: str | Path) -> DictConfig | None:
    """The training config a Lightning ``.ckpt`` holds, read without loading its weights
    (memory-mapped); None for anything else or a file that is not ours."""
    path = Path(path).expanduser()
    if path.suffix != ".ckpt" or not path.is_file():
        return None
    try:
        state = safe_load.load(path, mmap=True)
    except Exception:  # unreadable: loading the model will say why, in its own words
        return None
    cfg = (state.get("hyper_parameters") or {}).get("cfg") if isinstance(state, dict) else None
    return OmegaConf.create(cfg) if cfg else None


@dataclass
class CheckpointModel:
    """What a checkpoint holds, rebuilt on the base model: the model (trained weights in place,
    LoRA still a peft decoder), its processor, the training config and the EMA if one was kept."""

    model: object
    processor: object
    cfg: DictConfig
    ema: EMA | None

    def trainable_parameters(self) -> list:
        return trainable_parameters(self.model)

    def export_model(self, merge_lora: bool = True, use_ema: bool = True):
        """A plain ``MusicgenForConditionalGeneration`` with EMA weights and LoRA merged (in
        place: read the checkpoint again for the raw weights)."""
        if use_ema and self.ema is not None:
            self.ema.copy_to(self.trainable_parameters())
        if merge_lora:
            self.model = lora_wiring.merge_lora(self.model)
        return self.model.eval()


def _read_file(source: Path | BinaryIO, shown: Path) -> dict:
    try:
        state = safe_load.load(source, name=shown)
    except UnsafeCheckpointError:
        raise
    except Exception as err:  # torch raises many types for unreadable files
        raise CheckpointError(_load_failure(shown, err)) from err
    if not isinstance(state, dict) or "cfg" not in (state.get("hyper_parameters") or {}):
        raise CheckpointError(
            f"checkpoint {shown} was not written by musicgen-train (no config in its hparams)"
        )
    return state


def _rebuild(state: dict, shown: Path, load_base: LoadBase) -> CheckpointModel:
    cfg = OmegaConf.create(state["hyper_parameters"]["cfg"])
    loaded = load_base(cfg)
    model = loaded.model
    configure_trainable(model, cfg.finetune)
    trained = {k.removeprefix("model."): v for k, v in state.get("state_dict", {}).items()}
    expected = dict(trainable_parameters(model))
    missing = [name for name in expected if name not in trained]
    known = model.state_dict().keys()  # tied weights and buffers included (DeepSpeed saves all)
    unknown = [name for name in trained if name not in known]
    if missing or unknown:
        example = (missing or unknown)[0]
        raise CheckpointError(
            f"checkpoint {shown} does not fit its model: {len(missing)} trained weights missing, "
            f"{len(unknown)} unknown (e.g. {example}); written with another finetune mode "
            "(full / lora) or LoRA target list?"
        )
    try:
        model.load_state_dict(trained, strict=False)
    except RuntimeError as err:
        raise CheckpointError(_load_failure(shown, err)) from err
    ema = None
    if "ema" in state:
        ema = EMA(expected.items(), float(state["ema"]["decay"]))
        try:
            ema.load_state_dict(state["ema"])
        except KeyError as err:
            raise CheckpointError(f"checkpoint {shown} does not fit its model: {err}") from err
    if not has_codec(model):
        attach_codec(model, loaded.path)
    return CheckpointModel(model=model.eval(), processor=loaded.processor, cfg=cfg, ema=ema)


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


def load_checkpoint_model(path: Path | PinnedCheckpoint, load_base: LoadBase) -> CheckpointModel:
    """The model of a ``.ckpt`` file or DeepSpeed folder (or a pinned one), rebuilt on the CPU
    over the base model ``load_base`` loads for the checkpoint's config."""
    if isinstance(path, PinnedCheckpoint) and path.handle is not None:
        path.handle.seek(0)
        return _rebuild(_read_file(path.handle, path.path), path.path, load_base)
    path = Path(path.path if isinstance(path, PinnedCheckpoint) else path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        with tempfile.TemporaryDirectory(prefix="zero-to-fp32-") as tmp:
            consolidated = _consolidate_deepspeed(path, Path(tmp) / "consolidated.ckpt")
            return _rebuild(_read_file(consolidated, path), path, load_base)
    return _rebuild(_read_file(path, path), path, load_base)


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
    train_cfg = module.cfg
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


def converted_name(path: Path, sha256: str) -> str:
    """The name of a checkpoint's converted folder: its name and content digest. An evaluation
    report records the folder it loaded, so export can tell which bytes were evaluated."""
    return f"{path.stem}-{sha256[:16]}"


def checkpoint_to_pretrained(path: str | Path, load_base: LoadBase) -> Path:
    """A cached HF folder (EMA weights, LoRA merged) of a checkpoint, keyed by its content."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    folder = cache_root() / "checkpoints" / converted_name(path, content_hash(path))
    if verified_conversion(folder, path):
        return folder
    log.info("converting checkpoint %s into a model folder (once)", path)
    module = load_checkpoint_model(path, load_base)
    with atomic_folder(folder) as tmp:
        write_checkpoint_folder(tmp, module)
    return folder
