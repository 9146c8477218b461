"""``musicgen-train prepare``: a source of audio -> validated, captioned, segmented token cache.

For each item of the source: hash its bytes; if the cache already holds every segment of that
content (cut with the same settings), reuse them; otherwise decode and validate it, caption it,
resample, cut it into segments and encode the missing ones with the model's EnCodec in batches
of equal length. Each encoded batch is committed as it lands (``cache.py``), so a killed prepare
resumes where it stopped. At the end the files are split into train/valid, the parts are packed
into shards, the manifest is written atomically and a report lists every skipped file with its
reason.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import signal
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from omegaconf import DictConfig, OmegaConf

from musicgen_train.data.cache import TokenCache, atomic_write_bytes, atomic_write_json
from musicgen_train.data.decoding import captured_stderr
from musicgen_train.data.encode import CodecEncoder
from musicgen_train.data.items import AudioItem, SkippedItem
from musicgen_train.data.paths import NotReadable
from musicgen_train.data.reuse import KnownSegments, complete
from musicgen_train.data.same_source import check_same_source
from musicgen_train.data.segment import SegmentPlan, frames_for
from musicgen_train.data.splits import assign_splits, build_report, final_entries, log_summary
from musicgen_train.data.stream import (
    FileChanged,
    conformed_blocks,
    hash_item,
    open_item,
    read_head,
    resampled_length,
    stream_segments,
)
from musicgen_train.data.validate import judge_level, validate_stream
from musicgen_train.data.writer import SegmentWriter
from musicgen_train.errors import UserError
from musicgen_train.locks import exclusive
from musicgen_train.logs import process_rank

# tqdm.auto draws a widget in Jupyter, but without ipywidgets (JupyterLab does not install it) it
# warns "IProgress not found" and falls back to the text bar: take the text bar directly then.
if importlib.util.find_spec("ipywidgets") is None:
    from tqdm import tqdm
else:
    from tqdm.auto import tqdm

__all__ = ["assign_splits", "ensure_token_cache", "prepare", "prepare_items", "run"]
log = logging.getLogger(__name__)
_REBUILT: set[str] = set()  # caches this process has (re)built
PREPARE_LOCK = ".prepare.lock"  # in the cache folder; clear() never removes it


def run(cfg: DictConfig) -> Path:
    """The CLI stage: prepare (incrementally) and print where the cache is."""
    report = prepare(cfg)
    print(f"token cache: {report['cache']}  (report: {report['cache']}/prepare_report.json)")
    return Path(report["cache"])


def ensure_token_cache(cfg: DictConfig) -> Path:
    """Prepare only what is missing from ``data.output`` and return the cache folder."""
    return Path(prepare(cfg)["cache"])


def prepare(cfg: DictConfig, encoder: CodecEncoder | None = None) -> dict:
    """Run the whole stage on ``cfg.data.source``; returns the report (also written to disk)."""
    from musicgen_train.data.sources import iter_source

    items = iter_source(cfg.data, Path(cfg.work_dir))
    return prepare_items(cfg, items, encoder=encoder)


# --- the pipeline ----------------------------------------------------------------------------


@dataclass
class _FileResult:
    key: str
    source: str
    duration: float
    entries: list[dict] = field(default_factory=list)


def settings_hash(plan: SegmentPlan, encoder: CodecEncoder) -> str:
    """Segments cut with other settings are other segments: this is part of their identity."""
    settings = {**plan.__dict__, "sample_rate": encoder.sample_rate, "channels": encoder.channels}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def prepare_items(
    cfg: DictConfig, items: Iterable[AudioItem | SkippedItem], encoder: CodecEncoder | None = None
) -> dict:
    encoder = encoder or CodecEncoder.from_config(cfg)
    cache = TokenCache(cfg.data.output)

    def waiting(holder: str) -> None:
        log.info("token cache %s is being prepared by %s: waiting for it", cache.root, holder)

    # One writer at a time: two runs sharing a cache (two recipes on one folder, DDP ranks) wait
    # for the first, then reuse what it encoded.
    with exclusive(cache.root / PREPARE_LOCK, wait=True, on_wait=waiting):
        return _prepare_into(cache, cfg, items, encoder)


def _prepare_into(cache: TokenCache, cfg: DictConfig, items, encoder: CodecEncoder) -> dict:
    data = cfg.data
    # data.overwrite rebuilds once per process: the pipeline and training both ensure the cache.
    overwrite = bool(data.get("overwrite", False)) and str(cache.root) not in _REBUILT
    check_same_source(cache.report_path, data.source, overwrite)
    cache.open_for(encoder.identity(), overwrite=overwrite)
    known = cache.recover()  # what an earlier run finished, killed or not
    previous_keys = {e["key"]: e["source"] for e in cache.manifest()}
    plan = SegmentPlan.from_config(data)
    settings = settings_hash(plan, encoder)
    by_key = KnownSegments(known, settings)
    writer = SegmentWriter(cache, encoder, data)
    caption_cfg = data.get("caption")
    caption_cfg = OmegaConf.to_container(caption_cfg, resolve=True) if caption_cfg else {}
    files: list[_FileResult] = []
    skipped: list[dict] = []
    counts = {"encoded": 0, "reused": 0}
    firsts: dict[str, str] = {}  # content hash -> the item that brought it first

    quiet = not data.get("progress", True) or process_rank() != 0  # DDP: rank 0 draws it
    bar = tqdm(items, desc="prepare", unit="file", disable=quiet)
    previous_sigterm = _sigterm_as_interrupt()
    previous_threads = torch.get_num_threads()
    if data.get("encode_threads"):
        torch.set_num_threads(int(data.encode_threads))
    try:
        for item in bar:
            result = _process_item(
                item, by_key, firsts, settings, plan, encoder, writer, caption_cfg, data
            )
            if isinstance(result, SkippedItem):
                skipped.append({"path": result.source, "reason": result.reason})
                continue
            result, reused = result
            files.append(result)
            counts["reused" if reused else "encoded"] += 1
            bar.set_postfix(ok=len(files), skipped=len(skipped), refresh=False)
        writer.finish()
    except BaseException as err:
        # Ctrl-C, kill or a crash: every batch encoded is already on disk; a re-run resumes.
        log.warning(
            "prepare stopped (%s): %d encoded segment(s) are kept, re-run to resume",
            type(err).__name__,
            writer.segments,
        )
        raise
    finally:
        bar.close()
        _restore_sigterm(previous_sigterm)
        torch.set_num_threads(previous_threads)

    entries = final_entries(files, cfg)
    if files:  # else (an empty folder, a drive not mounted) the cache stays as it was
        cache.commit(entries, int(data.get("shard_size", 256)))
    counts["segments_encoded"] = writer.segments
    if overwrite:
        _REBUILT.add(str(cache.root))
    kept = {f.key for f in files}
    kept_sources = {e["source"] for e in entries}  # a manifest's new keys for the same files
    now_skipped = {s["path"] for s in skipped}
    removed = [
        {
            "path": source,
            "reason": "now skipped (see skipped): dropped from the manifest"
            if source in now_skipped
            else "no longer in the source: dropped from the manifest",
        }
        for key, source in sorted(previous_keys.items())
        if files and key not in kept and source not in kept_sources
    ]
    report = build_report(cfg, cache, encoder, files, skipped, removed, entries, counts)
    atomic_write_json(cache.report_path, report)
    log_summary(report)
    if not files:
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:3])
        kept_note = f"; the token cache keeps its {len(previous_keys)} earlier file(s)"
        raise UserError(
            f"no usable audio in data.source={data.source}: "
            + (
                f"{len(skipped)} file(s) skipped ({reasons}{', ...' if len(skipped) > 3 else ''})"
                if skipped
                else "it holds no audio file (an empty folder or manifest? a drive not mounted?)"
            )
            + f"; see {cache.report_path}"
            + (kept_note if previous_keys else "")
        )
    return report


def _sigterm_as_interrupt():
    """`kill` stops prepare the way Ctrl-C does, so the batches already encoded are written."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _restore_sigterm(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _process_item(item, by_key, firsts, settings, plan, encoder, writer, caption_cfg, data):
    """Reuse, or validate + segment + queue for encoding, reading the file in blocks (memory
    does not grow with its length). Returns a SkippedItem or ``(_FileResult, reused)``. A copy
    of a file already read (the same bytes: a song in two folders) is skipped, so that it is
    neither trained on twice nor both in train and in valid."""
    if isinstance(item, SkippedItem):
        return item
    stat = _file_stat(item)
    previous = by_key.previous(item.key)
    if stat is not None and previous and all(e.get("file_stat") == stat for e in previous):
        digest = previous[0]["content_hash"]  # same size and mtime: not read again
    else:
        digest = _hash(item)
        if isinstance(digest, SkippedItem):
            return digest
    first = firsts.setdefault(digest, item.source)
    if first != item.source:
        return SkippedItem(item.source, f"the same audio as {first} (identical bytes): read once")
    done = by_key.done(item.key, digest, previous)
    limits = {"min_duration": float(data.min_duration), "silence_db": float(data.silence_db)}
    if complete(done):
        peak = done[0].get("file_peak")
        if peak is None:  # a cache made before peaks were kept: the file is scanned once
            info = validate_stream(item, **limits)
            if isinstance(info, SkippedItem):
                return info
            peak = info.peak
        reason = judge_level(done[0]["file_duration"], peak, **limits)
        if reason:  # data.min_duration or data.silence_db is stricter than when it was encoded
            return SkippedItem(item.source, reason)
        metadata = _jsonable({**done[0].get("estimated", {}), **item.metadata})
        result = _FileResult(item.key, item.source, done[0]["file_duration"])
        source = _source_of(item) if item.path is not None else done[0]["source"]
        for entry in done:
            entry = {**entry, "metadata": metadata, "source": source, "file_stat": stat,
                     "file_peak": peak}  # fmt: skip
            if entry["key"] != item.key:  # moved or renamed: the same codes under its new name
                segment_id = _segment_id(item.key, digest, settings, entry["segment"])
                entry.update(key=item.key, id=segment_id, origin=item.source)
            result.entries.append(entry)
        writer.caption(result.entries, metadata, caption_cfg)
        return result, True

    info = validate_stream(item, **limits)
    if isinstance(info, SkippedItem):
        return info
    entries: list[dict] = []  # the file's lines, so that a failed file leaves none waiting
    try:
        return _encode_file(item, info, digest, done, stat, settings, plan, encoder, writer,
                            caption_cfg, entries), False  # fmt: skip
    except (OSError, sf.LibsndfileError) as err:  # changed or removed since it was validated
        writer.discard(entries)
        reason = str(err) if isinstance(err, FileChanged) else f"cannot be read: {err}"
        return SkippedItem(item.source, reason)


def _encode_file(
    item, info, digest, done, stat, settings, plan, encoder, writer, caption_cfg, entries
):
    metadata, estimated = _metadata(item, caption_cfg)
    source = _source_of(item) if item.path is not None else _keep_bytes(writer.cache, item, digest)
    rate = encoder.sample_rate
    total = resampled_length(info.frames, info.sample_rate, rate)
    count = len(plan.windows(total, rate))
    result = _FileResult(item.key, item.source, info.duration, entries)
    have = {e["segment"]: e for e in done}
    # A float file louder than full scale (a DAW's float bounce) is scaled to fit, not clipped:
    # the codec never saw audio beyond +-1. The report lists it (``adjusted``).
    gain = 1.0 / info.peak if info.peak > 1.0 else 1.0
    with open_item(item) as handle:
        blocks = conformed_blocks(handle, rate, encoder.channels)
        if gain != 1.0:
            blocks = (block * np.float32(gain) for block in blocks)
        for segment in stream_segments(blocks, total, rate, plan):
            entry = {
                "id": _segment_id(item.key, digest, settings, segment.index),
                "key": item.key,
                "source": source,
                "origin": item.source,
                "metadata": metadata,
                "estimated": estimated,
                "offset": round(segment.offset, 6),
                "duration": round(segment.duration, 6),
                "frames": frames_for(segment.audio.shape[-1], encoder.hop_length),
                "segment": segment.index,
                "file_segments": count,
                "file_duration": round(info.duration, 6),
                "file_peak": info.peak,  # with the duration: the limits of later runs apply
                "file_gain": round(gain, 6),
                **info.notes(),  # truncated, damaged, what the decoder printed: the report's
                "content_hash": digest,
                "file_stat": stat,
                "settings": settings,
            }
            if segment.index in have:  # finished by an interrupted run
                kept = have[segment.index].items()
                entry.update({k: v for k, v in kept if k in (*_WHERE, "chroma")})
                result.entries.append(entry)
            else:
                writer.add(segment, entry, result.entries)
    writer.caption(result.entries, metadata, caption_cfg)
    return result


_WHERE = ("shard", "part", "index")  # where a segment's codes are
ESTIMATE_SECONDS = 120.0  # tempo and key are estimated from a file's first two minutes


def _metadata(item: AudioItem, caption_cfg: dict) -> tuple[dict, dict]:
    """The item's metadata with tempo/key estimated where asked and missing; and what was."""
    from musicgen_train.data.captions import format_value, with_estimated_tempo_key

    metadata, estimated = dict(item.metadata), {}
    wanted = [f for f in ("bpm", "key") if not format_value(item.metadata.get(f))]
    if (caption_cfg or {}).get("estimate_tempo_key") and wanted:  # else the file is not read
        with open_item(item) as handle:
            audio, rate = read_head(handle, ESTIMATE_SECONDS)
        metadata = with_estimated_tempo_key(item.metadata, audio, rate, caption_cfg)
        estimated = {k: v for k, v in metadata.items() if k not in item.metadata}
    return _jsonable(metadata), _jsonable(estimated)


def _jsonable(value):
    """Metadata as plain JSON types (HF datasets hand out numpy scalars and arrays)."""
    return json.loads(
        json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))
    )


def _hash(item: AudioItem) -> str | SkippedItem:
    try:
        return hash_item(item)
    except NotReadable as err:
        return SkippedItem(source=item.source, reason=str(err))
    except OSError as err:
        return SkippedItem(source=item.source, reason=f"cannot be read: {err.strerror or err}")


def _file_stat(item: AudioItem) -> list[int] | None:
    """Size and modification time: an unchanged file is recognised without reading it."""
    if item.path is None:
        return None
    try:
        info = item.path.stat()
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


def _keep_bytes(cache: TokenCache, item: AudioItem, digest: str) -> str:
    """Audio that came as bytes (HF datasets) is kept in the cache as a file, so the manifest's
    ``source`` always names a readable file (evaluation cuts reference clips from it)."""
    raw = bytes(item.data)
    with captured_stderr([]):  # the scan reported what the decoder says about these bytes
        suffix = "." + sf.info(io.BytesIO(raw)).format.lower()
    path = cache.sources_dir / f"{digest[:24]}{suffix}"
    if not path.exists():
        cache.sources_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, raw)
    return str(path)


def _source_of(item: AudioItem) -> str:
    # Absolute, so that evaluation finds the file whatever folder it runs from.
    return str(item.path.resolve()) if item.path is not None else item.source


def _segment_id(key: str, digest: str, settings: str, index: int) -> str:
    file_id = hashlib.sha256(f"{key}\0{digest}\0{settings}".encode()).hexdigest()[:16]
    return f"{file_id}-{index:04d}"
