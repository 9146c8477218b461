"""audiocraft MusicGen fine-tunes -> Hugging Face model folders.

audiocraft keeps a fine-tune in one of two layouts:

- exported (``audiocraft.utils.export``): ``state_dict.bin`` holds ``{"best_state": LM weights,
  "xp.cfg": its training config (YAML), "version", "exported"}`` and
  ``compression_state_dict.bin`` holds the EnCodec weights the same way, or only the name of a
  pretrained codec (``{"pretrained": "facebook/encodec_32khz"}``);
- a solver checkpoint (``checkpoint.th``): ``{"model": latest LM weights, "best_state":
  {"model": ...}, "fsdp_best_state": {"model": ...}, "xp.cfg", optimizer state, ...}``; the best
  state is taken, as audiocraft's own export does.

The LM's names follow transformers' published conversion (``convert_musicgen_transformers.py``);
the EnCodec's follow ``convert_encodec_checkpoint_to_pytorch.py``. The converted model is a base
MusicGen (its T5 text encoder, processor and, unless the fine-tune brings its own, its codec)
whose decoder and text projection are replaced by the fine-tune's weights, every shape checked.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from musicgen_train.errors import UserError
from musicgen_train.model.loader import LoadedModel
from musicgen_train.model.tiny import cache_root, tiny_config
from musicgen_train.sources import safe_load
from musicgen_train.sources.audiocraft_names import (
    KNOWN_BASES,
    audiocraft_lm_name,
    codec_name,
    lm_name,
    unwrap,
    weight_norm_as,
)
from musicgen_train.sources.checkpoint import DEFAULT_GENERATION
from musicgen_train.sources.model_folder import (
    atomic_folder,
    save_model_folder,
    set_generation_defaults,
    verified_conversion,
)
from musicgen_train.sources.safe_load import UnsafeCheckpointError

log = logging.getLogger(__name__)

LM_FILE = "state_dict.bin"
CODEC_FILE = "compression_state_dict.bin"
SOLVER_FILE = "checkpoint.th"


class AudiocraftError(UserError):
    """An audiocraft checkpoint that is missing, unreadable or does not fit its base model."""


@dataclass
class AudiocraftSource:
    """What an audiocraft checkpoint holds, with audiocraft's names."""

    lm_file: Path
    lm: dict[str, torch.Tensor]
    weights: str  # which state: best_state, fsdp_best_state, model, or the file itself
    codec_file: Path | None = None
    codec: dict[str, torch.Tensor] | None = None
    codec_pretrained: str | None = None  # a codec named, not included
    xp_cfg: dict = field(default_factory=dict)
    version: str | None = None

    def shape(self) -> tuple[int, int, int, int]:
        """(hidden size, layers, codebooks, codebook size) of the LM."""
        emb = self.lm.get("emb.0.weight")
        if emb is None or emb.dim() != 2:
            raise AudiocraftError(f"{self.lm_file} has no emb.0.weight: not a MusicGen LM")
        found = (re.match(r"transformer\.layers\.(\d+)\.", k) for k in self.lm)
        layers = {int(m.group(1)) for m in found if m}
        codebooks = sum(1 for k in self.lm if re.fullmatch(r"emb\.\d+\.weight", k))
        return int(emb.shape[1]), len(layers), codebooks, int(emb.shape[0]) - 1


def _torch_load(path: Path):
    # A solver checkpoint pickles its OmegaConf config: the safe loader's allowlist covers it.
    try:
        return safe_load.load(path)
    except UnsafeCheckpointError:
        raise
    except Exception as err:  # torch raises many types for unreadable files
        raise AudiocraftError(f"{path} cannot be read as a torch file ({_short(err)})") from err


def _short(err: Exception) -> str:
    return " ".join(str(err).split())[:200]


def _plain_cfg(value) -> dict:
    """audiocraft's training config (YAML text or an OmegaConf object) as a dict, {} if none."""
    try:
        if isinstance(value, str):
            value = OmegaConf.create(value)
        if isinstance(value, DictConfig):
            value = OmegaConf.to_container(value, resolve=False)
    except Exception as err:  # a config we cannot read only leaves the model card shorter
        log.warning("audiocraft's xp.cfg could not be read (%s)", _short(err))
        return {}
    return dict(value) if isinstance(value, Mapping) else {}


def _is_weights(value) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def _lm_state(package, path: Path) -> tuple[dict, str]:
    """The LM weights of a loaded file and which of its states they are."""
    if _is_weights(package):
        return dict(package), "file"  # a bare lm.state_dict()
    if not isinstance(package, Mapping):
        raise AudiocraftError(f"{path} is not an audiocraft MusicGen checkpoint (no state dict)")
    if _is_weights(package.get("best_state")):
        return dict(package["best_state"]), "best_state"  # exported
    for key in ("fsdp_best_state", "best_state"):  # a solver checkpoint, as audiocraft exports
        state = package.get(key) or {}
        if isinstance(state, Mapping) and _is_weights(state.get("model")):
            return dict(state["model"]), key
    if _is_weights(package.get("model")):
        log.warning("%s has no best state: its latest weights ('model') are imported", path)
        return dict(package["model"]), "model"
    raise AudiocraftError(
        f"{path} is not an audiocraft MusicGen checkpoint: none of best_state, "
        "fsdp_best_state['model'] or model holds weights"
    )


def find_files(path: Path) -> tuple[Path, Path | None]:
    """The LM file of ``path`` (a file or a folder) and the codec file beside it, if any."""
    path = Path(path).expanduser()
    if not path.exists():
        raise AudiocraftError(f"audiocraft checkpoint {path} does not exist")
    if path.is_dir():
        lm = next((path / n for n in (LM_FILE, SOLVER_FILE) if (path / n).is_file()), None)
        if lm is None:
            raise AudiocraftError(f"{path} holds neither {LM_FILE} nor {SOLVER_FILE}")
        folder = path
    else:
        lm, folder = path, path.parent
    codec = folder / CODEC_FILE
    return lm, codec if codec.is_file() and codec != lm else None


def is_audiocraft_source(path: Path) -> bool:
    """A folder holding state_dict.bin or checkpoint.th (and no config.json), or such a file."""
    if path.is_dir():
        has_lm = (path / LM_FILE).is_file() or (path / SOLVER_FILE).is_file()
        return has_lm and not (path / "config.json").exists()
    return path.is_file() and (path.name == LM_FILE or path.suffix == ".th")


def read_source(path: str | Path) -> AudiocraftSource:
    lm_file, codec_file = find_files(Path(path))
    package = _torch_load(lm_file)
    lm, weights = _lm_state(package, lm_file)
    source = AudiocraftSource(
        lm_file=lm_file,
        lm={unwrap(k): v for k, v in lm.items()},
        weights=weights,
        xp_cfg=_plain_cfg(package.get("xp.cfg")) if isinstance(package, Mapping) else {},
        version=str(package.get("version")) if isinstance(package, Mapping) else None,
    )
    if codec_file is not None:
        codec = _torch_load(codec_file)
        source.codec_file = codec_file
        if isinstance(codec, Mapping) and codec.get("pretrained"):
            source.codec_pretrained = str(codec["pretrained"])
        elif isinstance(codec, Mapping) and _is_weights(codec.get("best_state")):
            source.codec = {unwrap(k): v for k, v in codec["best_state"].items()}
        else:
            raise AudiocraftError(
                f"{codec_file} holds neither EnCodec weights (best_state) nor a pretrained name"
            )
    return source


def matching_base(source: AudiocraftSource) -> str:
    """The base model whose decoder has the LM's shape: a hub MusicGen, or ``tiny``."""
    shape = source.shape()
    tiny = tiny_config().decoder
    known = {
        **KNOWN_BASES,
        (tiny.hidden_size, tiny.num_hidden_layers, tiny.num_codebooks, tiny.vocab_size): "tiny",
    }
    if shape not in known:
        hidden, layers, codebooks, card = shape
        raise AudiocraftError(
            f"{source.lm_file}: no known MusicGen has hidden size {hidden}, {layers} layers, "
            f"{codebooks} codebooks of {card}: give the base model with base=<hub id or folder>"
        )
    return known[shape]


def _fmt(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _decoder_weights(source: AudiocraftSource) -> dict[str, tuple[torch.Tensor, str]]:
    """transformers name -> (tensor, audiocraft name) of every LM weight."""
    out, unknown = {}, []
    for name, tensor in source.lm.items():
        targets = lm_name(name)
        if not targets:
            unknown.append(name)
        elif len(targets) == 3:
            if tensor.dim() != 2 or tensor.shape[0] % 3:
                raise AudiocraftError(
                    f"{source.lm_file}: {name} has shape {_fmt(tensor.shape)}, not q, k and v "
                    "stacked (3 * hidden size rows)"
                )
            for target, part in zip(targets, tensor.chunk(3, dim=0), strict=True):
                out[target] = (part, name)
        else:
            out[targets[0]] = (tensor, name)
    if unknown:
        raise AudiocraftError(
            f"{source.lm_file}: {unknown[0]} has no place in transformers' MusicGen "
            f"({len(unknown)} such weights; melody conditioners, layer scales and attention "
            "biases are not part of a text-to-music MusicGen)"
        )
    return out


def _codec_weights(source: AudiocraftSource, target_keys) -> dict[str, tuple[torch.Tensor, str]]:
    out = {}
    for name, tensor in (source.codec or {}).items():
        out[weight_norm_as(codec_name(name), target_keys)] = (tensor, name)
    return out


def _check_layout(source: AudiocraftSource, model, base: str) -> None:
    hidden, layers, codebooks, card = source.shape()
    decoder = model.config.decoder
    want = (decoder.hidden_size, decoder.num_hidden_layers, decoder.num_codebooks)
    want = (*want, decoder.vocab_size)
    if (hidden, layers, codebooks, card) != want:
        raise AudiocraftError(
            f"{source.lm_file} holds a decoder of hidden size {hidden}, {layers} layers, "
            f"{codebooks} codebooks of {card}; base {base} has hidden size {want[0]}, "
            f"{want[1]} layers, {want[2]} codebooks of {want[3]}: give a base of the same shape"
        )


def _load_weights(model, weights: dict, *, required: list[str], file: Path, base: str) -> None:
    """Copy ``weights`` into ``model``: each of ``required`` present, every shape equal."""
    target = model.state_dict()
    for name, (tensor, origin) in weights.items():
        if name not in target:
            raise AudiocraftError(f"{file}: {origin} (as {name}) has no counterpart in base {base}")
        if tuple(tensor.shape) != tuple(target[name].shape):
            raise AudiocraftError(
                f"{file}: {origin} has shape {_fmt(tensor.shape)} but {name} in base {base} "
                f"has shape {_fmt(target[name].shape)}"
            )
    missing = [name for name in required if name not in weights]
    if missing:
        origin = audiocraft_lm_name(missing[0])
        what = f"{origin} (for {missing[0]};" if origin else f"weight for {missing[0]} ("
        raise AudiocraftError(f"{file} has no {what} {len(missing)} weights missing)")
    with torch.no_grad():
        for name, (tensor, _) in weights.items():
            target[name].copy_(tensor.to(target[name].dtype))


def convert(source: AudiocraftSource, loaded: LoadedModel, base: str) -> dict:
    """Put the fine-tune's weights into ``loaded.model`` (in place); return what was done."""
    model = loaded.model
    _check_layout(source, model, base)
    keys = model.state_dict().keys()
    decoder = _decoder_weights(source)
    required = [k for k in keys if k.startswith(("decoder.", "enc_to_dec_proj."))]
    text = [k for k in decoder if k.startswith("text_encoder.")]
    if text:  # a fine-tuned T5 comes whole or not at all
        required += [k for k in keys if k.startswith("text_encoder.")]
    _load_weights(model, decoder, required=required, file=source.lm_file, base=base)
    codec = "base"
    if source.codec is not None:
        weights = _codec_weights(source, keys)
        required = [k for k in keys if k.startswith("audio_encoder.")]
        _load_weights(model, weights, required=required, file=source.codec_file, base=base)
        codec = str(source.codec_file)
    elif source.codec_pretrained:
        named = source.codec_pretrained
        log.info("%s names the codec %s: the base's codec is used", source.codec_file, named)
        codec = f"base ({source.codec_pretrained} named by {CODEC_FILE})"
    model.eval()
    return {
        "source": "audiocraft",
        "audiocraft_version": source.version or "unknown",
        "checkpoint": str(source.lm_file),
        "weights": source.weights,
        "base_model": base,
        "text_encoder": "fine-tuned (from the checkpoint)" if text else "base",
        "codec": codec,
    }


def import_audiocraft(
    path: str | Path, load_base: Callable[[str], LoadedModel], base: str | None = None
) -> tuple[LoadedModel, dict]:
    """The base model ``load_base(base)`` loads (base=None: the one of the fine-tune's shape),
    with the fine-tune's weights in place, and what was done."""
    source = read_source(path)
    base = str(base) if base else matching_base(source)
    loaded = load_base(base)
    facts = convert(source, loaded, base)
    return loaded, {**facts, "xp_cfg": source.xp_cfg}


def content_key(path: Path) -> str:
    """sha256 over the checkpoint files (LM, then codec) a source reads."""
    digest = hashlib.sha256()
    for file in [f for f in find_files(path) if f is not None]:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def audiocraft_to_pretrained(
    path: str | Path,
    load_base: Callable[[str], LoadedModel],
    *,
    generation: Mapping = DEFAULT_GENERATION,
    salt: str = "",
) -> Path:
    """A cached model folder of an audiocraft checkpoint over the base of its shape, keyed by
    the checkpoint's content (and ``salt``: what else decides the base, e.g. the tiny seed)."""
    path = Path(path).expanduser()
    key = hashlib.sha256(f"{content_key(path)}:{salt}".encode()).hexdigest()[:16]
    name = path.name if path.is_dir() else path.parent.name or path.stem
    folder = cache_root() / "audiocraft" / f"{name}-{key}"
    if verified_conversion(folder, path):
        return folder
    log.info("converting audiocraft checkpoint %s into a model folder (once)", path)
    loaded, _ = import_audiocraft(path, load_base)
    set_generation_defaults(loaded.model, generation)
    with atomic_folder(folder) as tmp:
        save_model_folder(tmp, loaded.model, loaded.processor)
    return folder
