"""Segments -> codes on disk: batches of equal length through the codec, written as shards."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from musicgen_train.data.cache import TokenCache
from musicgen_train.data.encode import CodecEncoder
from musicgen_train.data.segment import Segment


class ShardWriter:
    """Batches segments of equal length through the codec and writes full shards."""

    def __init__(self, cache: TokenCache, encoder: CodecEncoder, first_shard: int, data):
        self.cache, self.encoder, self.number = cache, encoder, first_shard
        self.batch_size = int(data.get("encode_batch_size", 8))
        self.shard_size = int(data.get("shard_size", 256))
        self.waiting: dict[int, list[tuple[Segment, dict]]] = defaultdict(list)
        self.encoded: list[tuple[np.ndarray, dict]] = []

    def add(self, segment: Segment, entry: dict, result) -> None:
        # The entry is shared with the file's result: shard and index are filled in when written.
        result.entries.append(entry)
        group = self.waiting[segment.audio.shape[-1]]
        group.append((segment, entry))
        if len(group) >= self.batch_size:
            self._encode(segment.audio.shape[-1])

    def caption(self, entries: list[dict], metadata: dict, caption_cfg: dict) -> None:
        from musicgen_train.data.captions import build_caption

        text = build_caption(metadata, caption_cfg)
        for entry in entries:
            entry["caption"] = text

    def _encode(self, length: int) -> None:
        group = self.waiting.pop(length)
        codes = self.encoder.encode(np.stack([segment.audio for segment, _ in group]))
        self.encoded.extend(zip(codes, (entry for _, entry in group), strict=True))
        if len(self.encoded) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the segments encoded so far as one shard and journal them."""
        if not self.encoded:
            return
        name = self.cache.write_shard(self.number, [codes for codes, _ in self.encoded])
        self.number += 1
        for index, (_, entry) in enumerate(self.encoded):
            entry.update(shard=name, index=index)
        self.cache.append_journal([entry for _, entry in self.encoded])
        self.encoded = []

    def finish(self) -> None:
        for length in list(self.waiting):
            self._encode(length)
        self.flush()
