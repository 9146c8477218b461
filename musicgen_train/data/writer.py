"""Segments -> codes on disk: batches of equal length through the codec, each committed at once.

Every codec call's output is written as one part and journaled before the next call (see
``cache.py``), so a kill -9 loses only the segments in flight. Segments wait for a batch of their
length, but never many: when more than ``2 x data.encode_batch_size`` wait (the odd-length tails
of many files), the oldest group is encoded as it is. Memory and what a kill can lose stay
bounded by the batch size, whatever the number or the length of the files.
"""

from __future__ import annotations

import numpy as np

from musicgen_train.data.cache import TokenCache
from musicgen_train.data.encode import CodecEncoder
from musicgen_train.data.segment import Segment


class SegmentWriter:
    def __init__(self, cache: TokenCache, encoder: CodecEncoder, data):
        self.cache, self.encoder = cache, encoder
        self.number = cache.next_part_number()
        self.batch_size = int(data.get("encode_batch_size", 8))
        self.max_waiting = 2 * self.batch_size
        self.waiting: dict[int, list[tuple[np.ndarray, dict]]] = {}  # oldest group first
        self.segments = 0  # encoded by this run

    def add(self, segment: Segment, entry: dict, entries: list[dict]) -> None:
        """Queue ``segment``; ``entry`` (appended to ``entries``, the file's lines) gets its
        ``part`` and ``index`` when its batch is written."""
        entries.append(entry)
        length = segment.audio.shape[-1]
        group = self.waiting.setdefault(length, [])
        group.append((segment.audio, entry))
        if len(group) >= self.batch_size:
            self._encode(length)
        while sum(len(g) for g in self.waiting.values()) > self.max_waiting:
            self._encode(next(iter(self.waiting)))

    def discard(self, entries: list[dict]) -> None:
        """Forget the waiting segments of ``entries`` (a file that failed half-way): they are
        not encoded for nothing. Segments already encoded stay in parts no line will name,
        which the next commit removes."""
        drop = {id(entry) for entry in entries}
        for length in list(self.waiting):
            group = [(audio, e) for audio, e in self.waiting[length] if id(e) not in drop]
            if group:
                self.waiting[length] = group
            else:
                del self.waiting[length]

    def caption(self, entries: list[dict], metadata: dict, caption_cfg: dict) -> None:
        from musicgen_train.data.captions import build_caption

        text = build_caption(metadata, caption_cfg)
        for entry in entries:
            entry["caption"] = text

    def _encode(self, length: int) -> None:
        group = self.waiting.pop(length)
        audio = np.stack([audio for audio, _ in group])
        codes = self.encoder.encode(audio)
        chroma = self.encoder.chroma_texts(audio)  # melody models: kept in the segment's line
        for text, (_, entry) in zip(chroma or (), group, strict=False):
            entry["chroma"] = text
        self.cache.write_part(self.number, codes, [entry for _, entry in group])
        self.number += 1
        self.segments += len(group)

    def finish(self) -> None:
        for length in list(self.waiting):
            self._encode(length)
