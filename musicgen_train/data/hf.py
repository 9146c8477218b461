"""A Hugging Face dataset (hub id or ``save_to_disk`` folder), its audio left undecoded.

With ``data.hf.streaming`` a hub dataset (or a downloaded repository) is read row by row as
prepare goes, never downloaded whole. Rows are keyed ``<split>/<row index>`` either way: a
dataset's row order is fixed, so a re-run (after Ctrl-C too) finds the codes of the rows it has
already encoded (their bytes are read again, to check they have not changed).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from unittest import mock

from musicgen_train.data.items import AudioItem, SkippedItem
from musicgen_train.data.metadata import TEXT_COLUMNS, normalize_metadata
from musicgen_train.errors import UserError
from musicgen_train.model.hub_access import hub_kwargs, hub_offline

Item = AudioItem | SkippedItem
log = logging.getLogger(__name__)


def _is_saved_hf_dataset(folder: Path) -> bool:
    """A ``save_to_disk`` folder (a Dataset or a DatasetDict)."""
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


# A dataset repository downloaded as it is on the hub (``huggingface-cli download --repo-type
# dataset ... --local-dir``, or a git clone): parquet files, at the top or in data/ or config
# folders. ``datasets.load_dataset`` reads such a folder as it reads the hub id.
_REPO_PATTERNS = ("*.parquet", "*/*.parquet", "*/*/*.parquet")


def _is_dataset_repo(folder: Path) -> bool:
    return any(next(folder.glob(pattern), None) for pattern in _REPO_PATTERNS)


def load_hf_dataset(hf_cfg: Mapping, source: str | Path):
    """The chosen split of a dataset from disk or the hub, its audio left undecoded; with
    ``data.hf.streaming`` an ``IterableDataset`` that reads the rows as they are iterated."""
    dataset, split, _column = _open(hf_cfg, source)
    return dataset, split


def _open(hf_cfg: Mapping, source: str | Path):
    """``(dataset, split, audio column)``, the columns checked."""
    import datasets

    split = hf_cfg.get("split") or "train"
    streaming = bool(hf_cfg.get("streaming"))
    # From the cache only, at once, when the hub cannot be reached (see model/hub_access.py):
    # datasets would otherwise retry the dataset card for half a minute.
    cache_only = not isinstance(source, Path) and bool(hub_kwargs(str(source)))
    if cache_only and streaming:  # streaming reads the hub's files; it never uses the cache
        why = "HF_HUB_OFFLINE=1 is set" if hub_offline() else "the hub cannot be reached"
        raise UserError(
            f"data.hf.streaming=true reads data.source={str(source)!r} from the hub, but {why}: "
            "set data.hf.streaming=false to read it from the Hugging Face cache"
        )
    offline = (
        mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True)
        if cache_only
        else contextlib.nullcontext()
    )
    stream = {"streaming": True} if streaming else {}
    try:
        if isinstance(source, Path) and _is_saved_hf_dataset(source):
            # memory-mapped, read row by row whether streamed or not: nothing to download
            dataset = datasets.load_from_disk(str(source))
        elif isinstance(source, Path):  # a downloaded dataset repository
            dataset = datasets.load_dataset(
                str(source), hf_cfg.get("config_name"), split=split, **stream
            )
        else:
            with offline:
                dataset = datasets.load_dataset(
                    source, hf_cfg.get("config_name"), split=split, **stream
                )
    except Exception as err:  # the hub, the cache and the loaders raise many types
        if cache_only:
            why = "HF_HUB_OFFLINE=1 is set" if hub_offline() else "the hub cannot be reached"
            raise UserError(
                f"data.source={str(source)!r} is not a local folder or file, nor a Hugging Face "
                f"dataset in the cache ({why}): load it once on a machine with network (the "
                "cache is ~/.cache/huggingface), or point data.source at a local folder"
            ) from err
        hub = "a local folder or file, nor a Hugging Face dataset that can be loaded"
        what = "a readable dataset folder" if isinstance(source, Path) else hub
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise UserError(f"data.source={str(source)!r} is not {what} ({reason})") from err
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise UserError(
                f"data.hf.split={split!r} is not in the dataset {source}: "
                f"choose one of {sorted(dataset)}"
            )
        dataset = dataset[split]
    columns = _columns(dataset)
    named = hf_cfg.get("audio_column") or "audio"
    column = _audio_column(columns, named)
    if column != named:
        log.info("data.hf.audio_column=%r is not a column: reading its Audio column %r", named,
                 column)  # fmt: skip
    if column not in columns:
        raise UserError(
            f"data.hf.audio_column={column!r} is not a column of {source}: "
            f"columns are {list(columns)}"
        )
    text_column = hf_cfg.get("text_column")
    if text_column and text_column not in columns:
        raise UserError(
            f"data.hf.text_column={text_column!r} is not a column of {source}: "
            f"columns are {list(columns)}"
        )
    if not text_column:
        _warn_without_captions(columns, source, column)
    if dataset.features is not None and isinstance(columns[column], datasets.Audio):
        # Decoding here would need torchcodec; prepare decodes the bytes with soundfile.
        dataset = dataset.cast_column(column, datasets.Audio(decode=False))
    return dataset, split, column


def _columns(dataset) -> dict:
    """Column name -> feature. A streamed dataset may not know its features (``None``) until
    it is read: they are then guessed from its first row (audio as ``{"bytes", "path"}`` or
    raw bytes, text as str), at the cost of reading that row twice."""
    if dataset.features is not None:
        return dict(dataset.features)
    first = next(iter(dataset), None) or {}
    return {name: _feature_of(value) for name, value in first.items()}


def _feature_of(value):
    import datasets

    if isinstance(value, bytes) or (isinstance(value, dict) and "bytes" in value):
        return datasets.Audio(decode=False)
    return datasets.Value("string") if isinstance(value, str) else None


def _audio_column(columns: dict, column: str) -> str:
    """``column``, or, when the dataset has no such column, its one ``Audio`` column (many
    datasets call it song, wav, mp3 or audio_file)."""
    import datasets

    audio = [name for name, f in columns.items() if isinstance(f, datasets.Audio)]
    return column if column in columns or len(audio) != 1 else audio[0]


def _warn_without_captions(columns: dict, source, audio_column: str) -> None:
    """Every clip would be captioned data.caption.default ("music"): say which text columns
    there are, since a dataset's caption column is often called otherwise (main_caption,
    tags, ...)."""
    if any(c in columns for c in TEXT_COLUMNS):
        return
    strings = ("string", "large_string")
    texts = [name for name, f in columns.items()
             if name != audio_column and getattr(f, "dtype", None) in strings]  # fmt: skip
    log.warning(
        "%s has no caption column (%s): captions are made of its other columns, else "
        "data.caption.default. Its text columns are %s: choose one with data.hf.text_column=NAME",
        source, "/".join(TEXT_COLUMNS), texts or "none",
    )  # fmt: skip


def iter_hf_dataset(data_cfg: Mapping, source: str | Path) -> Iterator[Item]:
    hf_cfg = data_cfg.get("hf") or {}
    dataset, split, column = _open(hf_cfg, source)  # errors now, not at the first item
    return _hf_items(dataset, split, source, column, hf_cfg.get("text_column"))


def _hf_items(dataset, split: str, source, column: str, text_column: str | None) -> Iterator[Item]:
    for index, row in enumerate(_rows(dataset, source)):
        where = f"{source}[{split}][{index}]"
        audio = row.pop(column, None)  # a streamed row need not have every column
        metadata = normalize_metadata(row, text_column)
        if isinstance(audio, dict):
            data, path = audio.get("bytes"), audio.get("path")
        else:
            data, path = (audio, None) if isinstance(audio, bytes) else (None, audio)
        key = f"{split}/{index:06d}"
        if data:
            yield AudioItem(key=key, source=where, data=bytes(data), metadata=metadata)
        elif isinstance(path, str) and Path(path).is_file():
            yield AudioItem(key=key, source=where, path=Path(path), metadata=metadata)
        else:
            yield SkippedItem(source=where, reason=f"no audio bytes and no readable file {path!r}")


def _rows(dataset, source) -> Iterator[dict]:
    """The dataset's rows; a read that fails midway (a dropped connection while streaming, a
    damaged data file) is one line saying so, not a traceback from inside ``datasets``."""
    rows, index = iter(dataset), 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as err:  # fsspec, aiohttp, pyarrow and datasets raise many types
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            raise UserError(
                f"reading data.source={str(source)!r} failed at row {index} ({reason}): the rows "
                "before it are encoded and kept; re-run prepare to resume"
            ) from err
        yield row
        index += 1
