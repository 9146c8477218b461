"""A Hugging Face dataset (hub id or ``save_to_disk`` folder), its audio left undecoded."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from unittest import mock

from musicgen_train.data.items import AudioItem, SkippedItem
from musicgen_train.data.metadata import normalize_metadata
from musicgen_train.errors import UserError
from musicgen_train.model.hub_access import hub_kwargs, hub_offline

Item = AudioItem | SkippedItem


def _is_saved_hf_dataset(folder: Path) -> bool:
    """A ``save_to_disk`` folder (a Dataset or a DatasetDict)."""
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def load_hf_dataset(hf_cfg: Mapping, source: str | Path):
    """The chosen split of a dataset from disk or the hub, its audio left undecoded."""
    import datasets

    split = hf_cfg.get("split") or "train"
    # From the cache only, at once, when the hub cannot be reached (see model/hub_access.py):
    # datasets would otherwise retry the dataset card for half a minute.
    cache_only = not isinstance(source, Path) and bool(hub_kwargs(str(source)))
    offline = (
        mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True)
        if cache_only
        else contextlib.nullcontext()
    )
    try:
        if isinstance(source, Path):
            dataset = datasets.load_from_disk(str(source))
        else:
            with offline:
                dataset = datasets.load_dataset(source, hf_cfg.get("config_name"), split=split)
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
    column = hf_cfg.get("audio_column") or "audio"
    if column not in dataset.column_names:
        raise UserError(
            f"data.hf.audio_column={column!r} is not a column of {source}: "
            f"columns are {dataset.column_names}"
        )
    text_column = hf_cfg.get("text_column")
    if text_column and text_column not in dataset.column_names:
        raise UserError(
            f"data.hf.text_column={text_column!r} is not a column of {source}: "
            f"columns are {dataset.column_names}"
        )
    if isinstance(dataset.features[column], datasets.Audio):
        # Decoding here would need torchcodec; prepare decodes the bytes with soundfile.
        dataset = dataset.cast_column(column, datasets.Audio(decode=False))
    return dataset, split


def iter_hf_dataset(data_cfg: Mapping, source: str | Path) -> Iterator[Item]:
    hf_cfg = data_cfg.get("hf") or {}
    dataset, split = load_hf_dataset(hf_cfg, source)  # errors now, not at the first item
    column = hf_cfg.get("audio_column") or "audio"
    return _hf_items(dataset, split, source, column, hf_cfg.get("text_column"))


def _hf_items(dataset, split: str, source, column: str, text_column: str | None) -> Iterator[Item]:
    for index, row in enumerate(dataset):
        where = f"{source}[{split}][{index}]"
        audio = row.pop(column)
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
