"""The DataModule over the token cache: batches, masks, crops, determinism, mid-epoch resume."""

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_train.config import load_config
from musicgen_train.data.cache import ShardReader, TokenCache
from musicgen_train.data.datamodule import ResumableSampler, TokenDataModule, TokenDataset
from musicgen_train.data.encode import CodecEncoder
from musicgen_train.data.prepare import prepare
from musicgen_train.errors import UserError

SR = 32000
PAD = 64  # the tiny model's codebook size = MusicGen's pad id


def data_config(args):
    from musicgen_train.data.config import validate as validate_data

    cfg = load_config(args, validate=False)
    validate_data(cfg)
    return cfg


def write_folder(root: Path, count: int = 9) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        seconds = 0.6 if i == 0 else 2.0  # one short segment among 1 s ones
        t = np.arange(int(seconds * SR)) / SR
        audio = 0.3 * np.sin(2 * np.pi * (150 + 35 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(root / f"clip{i}.wav", audio.astype(np.float32), SR)


def config_for(tmp: Path, *extra: str):
    return data_config(
        [
            "data=folder",
            f"++data.source={tmp / 'audio'}",
            f"data.output={tmp / 'cache'}",
            "data.segment_seconds=1",
            "data.min_duration=0.3",
            "data.valid_fraction=0.25",
            "data.progress=false",
            "data.batch_size=3",
            "data.num_workers=0",
            "data.crop_seconds=null",
            "model=tiny",
            "seed=5",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("dm")
    write_folder(tmp / "audio")
    cfg = config_for(tmp)
    prepare(cfg, encoder=CodecEncoder.from_config(cfg))
    return Path(cfg.data.output)


def module(cache_dir, **kwargs) -> TokenDataModule:
    options = {"batch_size": 3, "num_workers": 0, "crop_seconds": None, "seed": 5, **kwargs}
    dm = TokenDataModule(cache_dir, **options)
    dm.setup("fit")
    return dm


def collect(loader, limit=None):
    out = []
    for batch in loader:
        out.append(batch)
        if limit is not None and len(out) == limit:
            break
    return out


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(
        x["keys"] == y["keys"]
        and torch.equal(x["codes"], y["codes"])
        and torch.equal(x["padding_mask"], y["padding_mask"])
        for x, y in zip(a, b, strict=True)
    )


def test_cache_splits(cache_dir):
    entries = TokenCache(cache_dir).manifest()
    assert len(entries) == 1 + 8 * 2
    valid_files = {e["key"] for e in entries if e["split"] == "valid"}
    assert len(valid_files) == round(0.25 * 9)


def test_batches_shapes_and_padding_mask(cache_dir):
    dm = module(cache_dir)
    frames = {e["id"]: e["frames"] for e in TokenCache(cache_dir).manifest()}
    reader = ShardReader(cache_dir)
    by_id = {e["id"]: e for e in TokenCache(cache_dir).manifest()}
    seen = 0
    for batch in dm.train_dataloader():
        b = len(batch["keys"])
        assert len(batch["texts"]) == len(batch["metadata"]) == b <= 3
        assert batch["codes"].dtype == torch.long and batch["padding_mask"].dtype == torch.bool
        lengths = [frames[k] for k in batch["keys"]]
        assert batch["codes"].shape == (b, 4, max(lengths))
        assert batch["padding_mask"].shape == (b, max(lengths))
        for row, key in enumerate(batch["keys"]):
            n = frames[key]
            assert batch["padding_mask"][row].sum() == n and batch["padding_mask"][row, :n].all()
            assert (batch["codes"][row, :, n:] == PAD).all()
            np.testing.assert_array_equal(batch["codes"][row, :, :n], reader.codes(by_id[key]))
            assert batch["texts"][row] == by_id[key]["caption"]
        seen += b
    assert seen == len(dm.train_set)
    assert any(frames[k] == 30 for k in frames)  # the short clip pads somewhere


def test_random_crops_are_windows_of_the_segment(cache_dir):
    dm = module(cache_dir, crop_seconds=0.5)
    reader = ShardReader(cache_dir)
    by_id = {e["id"]: e for e in TokenCache(cache_dir).manifest()}
    starts = set()
    dm_loader = dm.train_dataloader()
    for _ in range(3):  # the sampler counts its own epochs: new crops each pass
        for batch in dm_loader:
            assert batch["codes"].shape[-1] == 25 and batch["padding_mask"].all()
            for row, key in enumerate(batch["keys"]):
                full = torch.from_numpy(reader.codes(by_id[key]).astype(np.int64))
                crop = batch["codes"][row]
                matches = [
                    s
                    for s in range(full.shape[-1] - 25 + 1)
                    if torch.equal(full[:, s : s + 25], crop)
                ]
                assert matches, key
                starts.add(matches[0])
    assert len(starts) > 5  # crops start at many places, not always at 0


def test_deterministic_under_seed(cache_dir):
    def two_epochs(seed):
        loader = module(cache_dir, seed=seed, crop_seconds=0.5).train_dataloader()
        return collect(loader), collect(loader)

    a0, a1 = two_epochs(5)
    b0, b1 = two_epochs(5)
    assert same_batches(a0, b0) and same_batches(a1, b1)
    assert [x["keys"] for x in a0] != [x["keys"] for x in a1]  # each epoch reshuffles
    c0, _ = two_epochs(6)
    assert [x["keys"] for x in a0] != [x["keys"] for x in c0]


@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_resume_yields_the_remaining_batches(cache_dir, workers):
    dm = module(cache_dir, crop_seconds=0.5, num_workers=workers)
    reference = dm.train_dataloader()
    expected = collect(reference) + collect(reference)  # epochs 0 and 1

    interrupted = dm.train_dataloader()
    first = collect(interrupted, limit=2)
    state = interrupted.state_dict()
    assert same_batches(first, expected[:2])

    fresh = module(cache_dir, crop_seconds=0.5, num_workers=workers).train_dataloader()
    fresh.load_state_dict(state)
    rest = collect(fresh) + collect(fresh)
    assert same_batches(rest, expected[2:])


def test_sampler_state_round_trip():
    sampler = ResumableSampler(10, seed=1)
    it = iter(sampler)
    taken = [next(it) for _ in range(4)]
    state = sampler.state_dict()
    assert state == {"epoch": 0, "yielded": 4}
    other = ResumableSampler(10, seed=1)
    other.load_state_dict(state)
    assert taken + list(other) == list(ResumableSampler(10, seed=1))
    # Saved on an epoch's last sample: the restored sampler starts the next epoch (not an empty
    # rest of this one), and Lightning's set_epoch does not move it.
    full = ResumableSampler(10, seed=1)
    first, second = list(full), list(full)
    assert full.state_dict() == {"epoch": 1, "yielded": 10} and first != second
    restored = ResumableSampler(10, seed=1)
    restored.load_state_dict({"epoch": 0, "yielded": 10})
    restored.set_epoch(5)
    assert list(restored) == second and restored.epoch == 1
    assert sorted(i for i, _ in taken + list(iter(ResumableSampler(10, 1)))[4:]) == list(range(10))


def test_validation_loader_is_the_valid_split_and_fixed(cache_dir):
    dm = module(cache_dir, crop_seconds=0.5)
    valid = {e["id"] for e in TokenCache(cache_dir).manifest() if e["split"] == "valid"}
    first, second = collect(dm.val_dataloader()), collect(dm.val_dataloader())
    assert {k for b in first for k in b["keys"]} == valid
    assert same_batches(first, second)


def test_from_config_builds_a_missing_cache(tmp_path):
    write_folder(tmp_path / "audio", count=3)
    cfg = config_for(tmp_path, "data.crop_seconds=0.4", "data.batch_size=2")
    dm = TokenDataModule.from_config(cfg)
    assert (dm.batch_size, dm.num_workers, dm.seed) == (2, 0, 5)
    with pytest.raises(UserError, match="musicgen-train prepare"):
        TokenDataset(cfg.data.output)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["codes"].shape[-1] == 20  # 0.4 s at 50 frames/s


class _KeyRecorder(L.LightningModule):
    """The smallest module that trains on the batches and remembers what it saw."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple] = []

    def training_step(self, batch, _index):
        self.seen.append((tuple(batch["keys"]), batch["codes"].sum().item()))
        return (self.weight - batch["codes"].float().mean() / 64) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _SaveAt(L.Callback):
    """Save a checkpoint in the middle of an epoch, the way a crash would leave the last one."""

    def __init__(self, step, path):
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, *_args):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def _trainer(max_steps, root, callbacks=()):
    return L.Trainer(
        max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
        default_root_dir=root, callbacks=list(callbacks),
    )  # fmt: skip


def test_lightning_resumes_mid_epoch_exactly(cache_dir, tmp_path):
    straight = _KeyRecorder()
    _trainer(7, tmp_path).fit(straight, datamodule=module(cache_dir, crop_seconds=0.5))

    first = _KeyRecorder()  # "crashes" after step 4, the checkpoint is from step 3 (epoch 0)
    save = _SaveAt(3, tmp_path / "mid.ckpt")
    _trainer(4, tmp_path, [save]).fit(first, datamodule=module(cache_dir, crop_seconds=0.5))
    resumed = _KeyRecorder()
    _trainer(7, tmp_path).fit(
        resumed, datamodule=module(cache_dir, crop_seconds=0.5), ckpt_path=tmp_path / "mid.ckpt"
    )
    assert len(straight.seen) == 7
    assert first.seen[:3] + resumed.seen == straight.seen


def test_loader_workers_live_across_epochs_only_when_there_are_workers():
    # A collection of a few files makes epochs of one or two steps: workers started again at
    # every epoch made 40 steps of recipe=custom take 1.5x as long (docs/data.md).
    from musicgen_train.data.datamodule import TokenDataModule

    module = TokenDataModule.__new__(TokenDataModule)
    module.batch_size, module.num_workers = 2, 2
    dataset = type("D", (), {"pad_id": 0})()
    assert module._loader_options(dataset)["persistent_workers"] is True
    module.num_workers = 0
    assert module._loader_options(dataset)["persistent_workers"] is False
