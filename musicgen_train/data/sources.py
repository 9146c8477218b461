"""Where training audio comes from: a folder, an audiocraft manifest, a Hugging Face dataset, demo.

``iter_source(data_cfg, work_dir)`` yields one ``AudioItem`` per audio file with its caption
metadata, or a ``SkippedItem`` naming what could not be used and why. It only discovers files and
metadata; decoding and validation happen in the prepare stage, so a corrupt file with an audio
name is still yielded and reported there.

Caption metadata of a file in a folder comes from the first of: a row of ``metadata.jsonl`` or
``metadata.csv`` (Hugging Face audiofolder convention: ``file_name`` plus columns), a sidecar
``<name>.json`` (audiocraft's music-info fields), a sidecar ``<name>.txt`` (the description),
or nothing (then the description is ``data.caption.default``).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from unittest import mock

from musicgen_train.audio import AUDIO_EXTENSIONS
from musicgen_train.data.items import AudioItem, SkippedItem
from musicgen_train.errors import UserError
from musicgen_train.model.hub_access import hub_kwargs, hub_offline

Item = AudioItem | SkippedItem
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
MANIFEST_NAMES = ("data.jsonl", "data.jsonl.gz")
# Audio that libsndfile cannot read: reported, so that nothing vanishes without a word.
UNSUPPORTED_AUDIO = (".m4a", ".aac", ".wma", ".mp4", ".ape", ".alac", ".webm")
# Columns that hold a ready caption: they become the "description" field.
TEXT_COLUMNS = ("description", "text", "caption", "prompt")


def iter_source(data_cfg: Mapping, work_dir: str | Path) -> Iterator[Item]:
    """Dispatch on ``data.source``: ``demo`` | folder | ``data.jsonl`` | HF dataset id or folder.
    A file without any metadata gets ``data.caption.default`` as its description, so that
    estimated tempo and key add to it ("jazz. 96 bpm, G major") rather than replace it."""
    items = _items(data_cfg, work_dir)  # a source that cannot be read fails here, at once
    default = str((data_cfg.get("caption") or {}).get("default") or "").strip()
    return _with_default_description(items, default) if default else items


def _with_default_description(items: Iterator[Item], default: str) -> Iterator[Item]:
    for item in items:
        if isinstance(item, AudioItem) and not item.metadata:
            item.metadata = {"description": default}
        yield item


def _items(data_cfg: Mapping, work_dir: str | Path) -> Iterator[Item]:
    source = str(data_cfg.get("source") or "").strip()
    if not source:
        raise UserError("data.source is empty: give a folder, a data.jsonl, a dataset id or demo")
    if source == "demo":
        from musicgen_train.data.demo import ensure_demo_folder

        seed = int(data_cfg.get("demo_seed") or 0)
        return iter_folder(ensure_demo_folder(Path(work_dir) / "demo_data" / f"seed{seed}", seed))
    path = Path(source).expanduser()
    if path.is_dir():
        if _is_saved_hf_dataset(path):
            return iter_hf_dataset(data_cfg, path)
        manifest = next((path / n for n in MANIFEST_NAMES if (path / n).is_file()), None)
        return iter_manifest(manifest) if manifest else iter_folder(path)
    if path.is_file():
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            return iter_manifest(path)
        raise UserError(
            f"data.source={source!r} is a file but not a .jsonl manifest: give a folder of "
            "audio, an audiocraft data.jsonl, a Hugging Face dataset or demo"
        )
    if source.startswith(("/", ".", "~")) or source.count("/") > 1 or path.suffix:
        raise UserError(f"data.source={source!r}: there is no such folder or file")
    return iter_hf_dataset(data_cfg, source)  # "name" or "owner/name": a hub dataset id


# --- metadata helpers --------------------------------------------------------------------------


def normalize_metadata(row: Mapping, text_column: str | None = None) -> dict:
    """Keep usable caption fields: drop empty values, and move a ready caption column
    (the configured one, else ``text``, ``caption`` or ``prompt`` when there is no
    ``description``) to ``description``."""
    metadata = {k: v for k, v in row.items() if _present(v)}
    if text_column:  # chosen by the user: it is the description
        if text_column in metadata:
            metadata["description"] = metadata.pop(text_column)
        return metadata
    column = next((c for c in TEXT_COLUMNS if c in metadata), None)
    if column and "description" not in metadata:
        metadata["description"] = metadata.pop(column)
    return metadata


def _present(value) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, list | tuple):
        return any(_present(v) for v in value)
    return isinstance(value, int | float | bool)


def _read_json_object(path: Path) -> dict:
    """A sidecar json; raises ValueError with the file and the reason."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"sidecar {path.name} is not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise ValueError(f"sidecar {path.name} holds a {type(value).__name__}, not an object")
    return value


def _sidecar_metadata(audio: Path, info_path: Path | None = None) -> dict | None:
    """Metadata from ``<name>.json`` (music info) or ``<name>.txt`` (the description)."""
    json_path = info_path or audio.with_suffix(".json")
    if json_path.is_file():
        return normalize_metadata(_read_json_object(json_path))
    txt_path = audio.with_suffix(".txt")
    if txt_path.is_file():
        try:
            text = txt_path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"sidecar {txt_path.name} is not readable text ({err})") from err
        return {"description": text} if text else {}
    return None


# --- a folder of audio -----------------------------------------------------------------------


def _is_audio_name(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS


def _walk(root: Path) -> Iterator[Path]:
    """Every file below ``root`` in a stable order, hidden files and folders left out."""
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            yield path


def iter_folder(root: Path) -> Iterator[Item]:
    """Every audio file below ``root`` (nested folders too) with its caption metadata."""
    root = Path(root)
    files = list(_walk(root))
    table: dict[Path, tuple[dict, str]] = {}  # audio file -> (metadata, "metadata.jsonl:line")
    for metadata_file in (f for f in files if f.name in METADATA_FILES):
        yield from _read_metadata_table(metadata_file, table)
    for path in files:
        row = table.pop(path.resolve(), None)
        if path.suffix.lower() in UNSUPPORTED_AUDIO:
            reason = f"{path.suffix} cannot be read with libsndfile: convert it to flac or wav"
            yield SkippedItem(source=str(path), reason=reason)
            continue
        if not _is_audio_name(path):  # sidecars, metadata tables, cover art, notes
            if row:
                reason = f"{path.name} does not have an audio extension {AUDIO_EXTENSIONS}"
                yield SkippedItem(source=row[1], reason=reason)
            continue
        try:
            metadata = row[0] if row else _sidecar_metadata(path) or {}
        except ValueError as err:
            yield SkippedItem(source=str(path), reason=str(err))
            continue
        key = path.relative_to(root).as_posix()
        yield AudioItem(key=key, source=str(path), path=path, metadata=metadata)
    for audio, (_metadata, where) in table.items():  # rows naming files elsewhere
        yield SkippedItem(source=where, reason=f"{audio} is not inside {root} (or is hidden)")


def _read_metadata_table(
    metadata_file: Path, table: dict[Path, tuple[dict, str]]
) -> Iterator[SkippedItem]:
    """Fill ``table`` (resolved audio path -> metadata, line) from one metadata.jsonl / .csv; a
    row that cannot be used becomes a SkippedItem naming the file and line."""
    for line, row in _metadata_rows(metadata_file):
        where = f"{metadata_file}:{line}"
        if isinstance(row, str):  # the reason the line could not be parsed
            yield SkippedItem(source=where, reason=row)
            continue
        name = row.pop("file_name", None)
        if not isinstance(name, str) or not name.strip():
            yield SkippedItem(source=where, reason="the row has no file_name")
            continue
        audio = (metadata_file.parent / name.strip()).resolve()
        if not audio.is_file():
            yield SkippedItem(source=where, reason=f"file_name {name!r} does not exist")
            continue
        if audio in table:
            yield SkippedItem(source=where, reason=f"file_name {name!r} is listed twice")
            continue
        table[audio] = (normalize_metadata(row), where)


def _metadata_rows(path: Path) -> Iterator[tuple[int, dict | str]]:
    """(line number, row) for each data line; a str row is why the line is unusable."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        yield 0, f"cannot read {path.name}: {err}"
        return
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))  # quoted cells may span lines
        if not reader.fieldnames or "file_name" not in reader.fieldnames:
            yield 1, f"{path.name} has no file_name column (columns: {reader.fieldnames})"
            return
        for row in reader:
            if None in row:  # more cells than header columns
                yield reader.line_num, f"the row has more cells than the {path.name} header"
            else:
                yield reader.line_num, {k: v for k, v in row.items() if k}
        return
    yield from _jsonl_rows(text.splitlines())


def _jsonl_rows(lines: list[str]) -> Iterator[tuple[int, dict | str]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            yield number, f"not valid JSON: {err.msg} (column {err.colno})"
            continue
        if isinstance(row, dict):
            yield number, row
        else:
            yield number, f"a JSON {type(row).__name__}, not an object"


# --- an audiocraft manifest ------------------------------------------------------------------


def iter_manifest(manifest: Path) -> Iterator[Item]:
    """audiocraft's ``data.jsonl``: ``{path, duration, sample_rate, amplitude, weight,
    info_path}`` per line; metadata from ``info_path`` or the sidecar ``<audio>.json``."""
    manifest = Path(manifest)
    opener = gzip.open if manifest.name.endswith(".gz") else open
    try:
        with opener(manifest, "rt", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read the manifest {manifest}: {err}") from err
    for number, row in _jsonl_rows(lines):
        where = f"{manifest}:{number}"
        if isinstance(row, str):
            yield SkippedItem(source=where, reason=row)
            continue
        if not isinstance(row.get("path"), str) or not row["path"].strip():
            yield SkippedItem(source=where, reason="the line has no path")
            continue
        audio = _manifest_path(manifest, row["path"])
        if not audio.is_file():
            yield SkippedItem(source=where, reason=f"path {row['path']!r} does not exist")
            continue
        info = row.get("info_path")
        try:
            info_path = _manifest_path(manifest, info) if isinstance(info, str) and info else None
            if info_path is not None and not info_path.is_file():
                raise ValueError(f"info_path {info!r} does not exist")
            metadata = _sidecar_metadata(audio, info_path) or {}
        except ValueError as err:
            yield SkippedItem(source=where, reason=str(err))
            continue
        yield AudioItem(key=f"{number}:{row['path']}", source=str(audio), path=audio,
                        metadata=metadata)  # fmt: skip


def _manifest_path(manifest: Path, value: str) -> Path:
    """audiocraft writes absolute paths; relative ones are taken from the manifest's folder,
    then from the working directory."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    beside = manifest.parent / path
    return beside if beside.exists() or not path.exists() else path.resolve()


# --- a Hugging Face dataset ----------------------------------------------------------------


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


def validate_source_config(cfg) -> None:
    """Compose-time checks of ``data.source``, ``data.demo_seed`` and ``data.hf.*`` (called by
    ``musicgen_train.data.config``); whether the source exists is checked when it is read."""
    from omegaconf import OmegaConf

    from musicgen_train.errors import ConfigError

    source = OmegaConf.select(cfg, "data.source")
    if source is not None and not isinstance(source, str):
        raise ConfigError(
            f"data.source={source!r} is not allowed: give demo, a folder, a data.jsonl or a "
            "Hugging Face dataset id"
        )
    seed = OmegaConf.select(cfg, "data.demo_seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ConfigError(f"data.demo_seed={seed!r} is not allowed: it must be a whole number")
    for key, optional in (("audio_column", False), ("text_column", True), ("split", False),
                          ("config_name", True)):  # fmt: skip
        value = OmegaConf.select(cfg, f"data.hf.{key}", default="<unset>")
        if value == "<unset>" or (optional and value is None):
            continue
        if not isinstance(value, str) or not value.strip():
            what = "a column name" if "column" in key else "a name"
            raise ConfigError(f"data.hf.{key}={value!r} is not allowed: give {what}")
