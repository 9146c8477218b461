"""Training reads the token cache through this DataModule.

Batches are ``{"texts", "metadata", "codes" [B, K, T], "padding_mask" [B, T], "keys"}``. Codes
shorter than the longest of the batch are padded with the model's pad id (= codebook size) and
masked out (``padding_mask`` is True on real frames). A cache made for a melody model adds
``"chroma"`` ``[B, F, 12]``: each segment's one-hot chroma (cropped with its codes), shorter ones
padded with the null chroma (pitch class 0, what ``generate`` uses for "no melody").

Exact resume: the train loader is torchdata's ``StatefulDataLoader`` and its sampler yields
``(index, crop_seed)`` pairs computed from ``(seed, epoch, position)`` alone. Its state is just
the epoch and how many samples were handed out, so a loader restored mid-epoch (by Lightning
from a checkpoint) yields exactly the remaining batches, random crops included, whatever the
number of workers. The sampler counts its epochs itself: Lightning's epoch counter comes back
one ahead from a checkpoint taken on an epoch's last batch, so it is not used for shuffling.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning import LightningDataModule
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader

from musicgen_train.data.cache import ShardReader, TokenCache
from musicgen_train.errors import UserError


def derive_seed(*numbers: int) -> int:
    return int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(1)[0])


class TokenDataset(Dataset):
    """Segments of one split of a token cache. An item is asked for by ``index`` or by
    ``(index, crop_seed)``; without a crop seed the crop is fixed by ``(seed, index)``, so
    validation sees the same windows every time."""

    def __init__(
        self,
        cache_dir: str | Path,
        split: str | None = None,
        crop_frames: int | None = None,
        seed: int = 0,
    ):
        cache = TokenCache(cache_dir)
        if not cache.manifest_path.exists():
            raise UserError(
                f"no token cache in {cache.root} (manifest.jsonl is missing): run "
                f"`musicgen-train prepare data.output={cache.root}` first"
            )
        self.info = cache.info()
        self.entries = [e for e in cache.manifest() if split is None or e["split"] == split]
        self.crop_frames = crop_frames
        self.seed = seed
        self.reader = ShardReader(cache.root)
        codec = (self.info or {}).get("codec", {})
        chroma = codec.get("chroma")
        # codec frames -> chroma frames (e.g. 50/s -> 7.8125/s)
        self.chroma_per_frame = (
            chroma["sampling_rate"] / chroma["hop_length"] / codec["frame_rate"] if chroma else None
        )

    @property
    def pad_id(self) -> int:
        return int(self.info["codec"]["codebook_size"])

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, request: int | tuple[int, int]) -> dict:
        index, crop_seed = request if isinstance(request, tuple) else (request, None)
        entry = self.entries[index]
        codes = self.reader.codes(entry)
        start, frames = 0, codes.shape[-1]
        if self.crop_frames and codes.shape[-1] > self.crop_frames:
            rng = np.random.default_rng(
                crop_seed if crop_seed is not None else derive_seed(self.seed, index)
            )
            start = int(rng.integers(0, codes.shape[-1] - self.crop_frames + 1))
            codes = codes[:, start : start + self.crop_frames]
        item = {
            "key": entry["id"],
            "text": entry["caption"],
            "metadata": entry.get("metadata", {}),
            "codes": torch.from_numpy(codes.astype(np.int64)),
        }
        if self.chroma_per_frame is not None:
            item["chroma"] = self._chroma(entry, start, codes.shape[-1], frames)
        return item

    def _chroma(self, entry: dict, start: int, length: int, frames: int) -> torch.Tensor:
        """The chroma frames that cover codec frames ``[start, start + length)``."""
        from musicgen_train.model.chroma import chroma_from_text

        if "chroma" not in entry:
            raise UserError(
                f"segment {entry['id']} of {self.reader.shards_dir.parent} has no chroma: the "
                "cache was made for another model; rebuild it with data.overwrite=true"
            )
        chroma = chroma_from_text(entry["chroma"])
        if length == frames:
            return chroma
        first = int(start * self.chroma_per_frame)
        last = max(first + 1, int(np.ceil((start + length) * self.chroma_per_frame)))
        return chroma[first:last]


def collate_tokens(items: list[dict], pad_id: int) -> dict:
    """Pad to the longest item with ``pad_id``; the mask marks real frames."""
    frames = max(item["codes"].shape[-1] for item in items)
    num_codebooks = items[0]["codes"].shape[0]
    codes = torch.full((len(items), num_codebooks, frames), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), frames), dtype=torch.bool)
    for row, item in enumerate(items):
        length = item["codes"].shape[-1]
        codes[row, :, :length] = item["codes"]
        mask[row, :length] = True
    batch = {
        "texts": [item["text"] for item in items],
        "metadata": [item["metadata"] for item in items],
        "codes": codes,
        "padding_mask": mask,
        "keys": [item["key"] for item in items],
    }
    if "chroma" in items[0]:
        longest = max(item["chroma"].shape[0] for item in items)
        chroma = torch.zeros(len(items), longest, items[0]["chroma"].shape[-1])
        chroma[..., 0] = 1.0  # the null chroma where a segment is shorter
        for row, item in enumerate(items):
            chroma[row, : item["chroma"].shape[0]] = item["chroma"]
        batch["chroma"] = chroma
    return batch


class _Collate:
    """A picklable collate function (worker processes receive it)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict:
        return collate_tokens(items, self.pad_id)


class ResumableSampler(Sampler):
    """Shuffles by ``(seed, epoch)`` and hands out ``(index, crop_seed)``; its state (epoch,
    samples yielded) is all a restored loader needs to continue exactly.

    ``epoch`` is the sampler's own count of passes, kept in its state: after a resume from a
    checkpoint on an epoch's last batch, Lightning's ``current_epoch`` is one ahead of the data,
    so ``set_epoch`` (which Lightning calls with it) changes nothing. A pass is over when the
    next one starts, not when the generator runs out: Lightning stops asking once it has had
    ``len(loader)`` batches."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch = 0  # the pass handed out last (or now)
        self.yielded = 0  # how many samples of that pass were handed out
        self._resume_at: int | None = None  # set by load_state_dict for the next __iter__

    def set_epoch(self, epoch: int) -> None:
        """Ignored on purpose: the epoch is the sampler's own count (see the class doc)."""

    def __len__(self) -> int:
        return self.size

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng(derive_seed(self.seed, epoch)).permutation(self.size)

    def __iter__(self):
        if self._resume_at is not None:
            start, self._resume_at = self._resume_at, None
        else:
            if self.yielded:  # the previous pass handed out samples: this is the next one
                self.epoch += 1
            start = 0
        self.yielded = start
        epoch = self.epoch
        order = self.order(epoch)
        for position in range(start, self.size):
            self.yielded = position + 1
            yield int(order[position]), derive_seed(self.seed, epoch, position)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict) -> None:
        epoch, yielded = int(state["epoch"]), int(state["yielded"])
        if yielded >= self.size:  # saved on the epoch's last sample: the next pass comes next
            epoch, yielded = epoch + 1, 0
        self.epoch, self.yielded, self._resume_at = epoch, yielded, yielded


class TokenDataModule(LightningDataModule):
    def __init__(
        self,
        cache_dir: str | Path,
        batch_size: int = 8,
        num_workers: int = 0,
        crop_seconds: float | None = None,
        seed: int = 0,
        cfg: DictConfig | None = None,
    ):
        super().__init__()
        self.cache_dir = Path(cache_dir)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.crop_seconds = crop_seconds
        self.seed = int(seed)
        self.cfg = cfg  # with a config, prepare_data() builds a missing cache
        self.train_set: TokenDataset | None = None
        self.valid_set: TokenDataset | None = None

    @classmethod
    def from_config(cls, cfg: DictConfig) -> TokenDataModule:
        data = cfg.data
        return cls(
            cache_dir=data.output,
            batch_size=data.batch_size,
            num_workers=data.num_workers,
            crop_seconds=data.get("crop_seconds"),
            seed=cfg.seed,
            cfg=cfg,
        )

    def prepare_data(self) -> None:
        """Runs once (rank 0): build the cache when it does not exist yet."""
        if self.cfg is not None and not TokenCache(self.cache_dir).manifest_path.exists():
            from musicgen_train.data.prepare import ensure_token_cache

            ensure_token_cache(self.cfg)

    def crop_frames(self, info: dict) -> int | None:
        if self.crop_seconds is None:
            return None
        return max(1, round(float(self.crop_seconds) * float(info["codec"]["frame_rate"])))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        info = TokenCache(self.cache_dir).info() or {"codec": {"frame_rate": 50}}
        crop = self.crop_frames(info)
        self.train_set = TokenDataset(self.cache_dir, "train", crop, self.seed)
        self.valid_set = TokenDataset(self.cache_dir, "valid", crop, self.seed)
        if len(self.train_set) == 0:
            raise UserError(f"the token cache {self.cache_dir} holds no training segments")

    def _loader_options(self, dataset: TokenDataset) -> dict:
        return {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "collate_fn": _Collate(dataset.pad_id),
            # Workers live across epochs: a small collection (an epoch of one or two steps)
            # otherwise started them again at every epoch (docs/data.md: 59.9 s against 39.6 s
            # for 40 steps). Crops come from the sampler, not the workers.
            "persistent_workers": self.num_workers > 0,
        }

    def train_dataloader(self) -> StatefulDataLoader:
        self.setup()
        sampler = ResumableSampler(len(self.train_set), self.seed, shuffle=True)
        return StatefulDataLoader(
            self.train_set, sampler=sampler, **self._loader_options(self.train_set)
        )

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.valid_set, shuffle=False, **self._loader_options(self.valid_set))
