"""Stereo and melody end to end on their tiny models: prepare (two channels, chroma in the token
cache), batches, training (loss falls), dropout of the chroma, decoding and generation."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_train.config import load_config
from musicgen_train.data.cache import ShardReader, TokenCache
from musicgen_train.data.datamodule import TokenDataset, collate_tokens
from musicgen_train.data.prepare import prepare
from musicgen_train.model.chroma import chroma_from_text
from musicgen_train.model.codec import decode_codes
from musicgen_train.training.melody import melody_inputs
from musicgen_train.training.module import MusicgenLightningModule

SR = 32000


def write_stereo(path: Path, seconds: float, left: float, right: float) -> np.ndarray:
    """Left and right are different tones (right quieter): a downmix would lose them."""
    t = np.arange(int(seconds * SR)) / SR
    audio = np.stack([0.4 * np.sin(2 * np.pi * left * t), 0.2 * np.sin(2 * np.pi * right * t)])
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio.T.astype(np.float32), SR, subtype="FLOAT")
    return audio.astype(np.float32)


def config(model: str, source: Path, output: Path, *extra: str):
    return load_config(
        [
            "logger=csv",
            "data=folder",
            f"++data.source={source}",
            f"data.output={output}",
            "data.segment_seconds=1",
            "data.min_duration=0.3",
            "data.encode_batch_size=2",
            "data.progress=false",
            f"model={model}",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def stereo_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("stereo")
    audio = {
        name: write_stereo(root / "src" / f"{name}.wav", 2.0, left, right)
        for name, left, right in (("a", 220.0, 330.0), ("b", 440.0, 550.0), ("c", 262.0, 392.0))
    }
    cfg = config("tiny-stereo", root / "src", root / "cache")
    prepare(cfg)
    return cfg, root / "cache", audio


@pytest.fixture(scope="module")
def melody_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("melody")
    for name, freq in (("a440", 440.0), ("g392", 392.0), ("c262", 261.63)):
        write_stereo(root / "src" / f"{name}.wav", 2.0, freq, freq)
    cfg = config("tiny-melody", root / "src", root / "cache")
    prepare(cfg)
    return cfg, root / "cache"


def test_stereo_prepare_keeps_both_channels_interleaved(stereo_cache):
    from musicgen_train.sources import load_musicgen

    cfg, cache, audio = stereo_cache
    codec = TokenCache(cache).info()["codec"]
    assert (codec["channels"], codec["num_codebooks"], codec["model_id"]) == (2, 8, "tiny-stereo")
    model = load_musicgen("tiny-stereo").model
    entry = next(e for e in TokenCache(cache).manifest() if e["origin"].endswith("a.wav"))
    codes = ShardReader(cache).codes(entry).copy()  # [8, 50]
    assert codes.shape == (8, 50)
    segment = torch.from_numpy(audio["a"][:, entry["segment"] * SR : (entry["segment"] + 1) * SR])
    with torch.no_grad():  # independent: each channel through the mono codec on its own
        left, right = (
            model.audio_encoder.encode(segment[c][None, None], bandwidth=1.2).audio_codes[0, 0]
            for c in range(2)
        )
    assert np.array_equal(codes[0::2], left.numpy()) and np.array_equal(codes[1::2], right.numpy())
    assert not np.array_equal(codes[0::2], codes[1::2])  # the channels were not downmixed
    # ... and the codes decode back to two channels, each the decoding of its own codebooks
    audio_out = decode_codes(model.audio_encoder, torch.from_numpy(codes)[None], channels=2)
    assert audio_out.shape == (1, 2, SR)
    with torch.no_grad():
        alone = model.audio_encoder.decode(left[None, None], [None]).audio_values[0, 0]
    assert torch.allclose(audio_out[0, 0], alone, atol=1e-6)


def overfit(module: MusicgenLightningModule, batch: dict, steps: int = 25) -> list[float]:
    torch.manual_seed(0)
    module.model.decoder.eval()  # no dropout: the loss curve is that of the weights alone
    optimizer = torch.optim.AdamW([p for _, p in module.trainable_parameters()], lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = module(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def test_stereo_trains_on_8_codebooks(stereo_cache):
    cfg, cache, _ = stereo_cache
    module = MusicgenLightningModule(cfg)
    data = TokenDataset(cache)
    batch = collate_tokens([data[i] for i in range(4)], data.pad_id)
    assert batch["codes"].shape == (4, 8, 50)
    result = module(batch)
    assert result["labels"].shape == (4, 50 + 3, 8)  # pairs delayed together: 3 extra frames
    assert result["ce_per_codebook"].shape == (8,)
    assert torch.isclose(result["loss"], result["ce_per_codebook"].mean(), atol=1e-5)
    losses = overfit(module, batch)
    assert losses[0] > 3.9  # ~ln(64) = 4.16 untrained
    assert losses[-1] < losses[0] - 1.0


def test_melody_prepare_stores_each_segments_chroma(melody_cache):
    cfg, cache = melody_cache
    info = TokenCache(cache).info()["codec"]
    assert info["chroma"]["hop_length"] == 4096 and info["chroma"]["num_chroma"] == 12
    expected = {"a440": 9, "g392": 7, "c262": 0}  # a pure tone's pitch class
    entries = TokenCache(cache).manifest()
    assert len(entries) == 6
    for entry in entries:
        pitch = expected[Path(entry["origin"]).stem]
        assert len(entry["chroma"]) == SR // 4096 + 1  # one frame per hop of a 1 s segment
        assert set(entry["chroma"]) == {f"{pitch:x}"}


def test_melody_batches_crop_chroma_with_codes(melody_cache):
    _, cache = melody_cache
    whole = TokenDataset(cache)
    item = whole[0]
    assert item["chroma"].shape == (8, 12) and item["codes"].shape == (4, 50)
    assert torch.equal(item["chroma"], chroma_from_text(whole.entries[0]["chroma"]))
    cropped = TokenDataset(cache, crop_frames=20, seed=3)[(0, 11)]
    assert cropped["codes"].shape == (4, 20)
    assert 3 <= cropped["chroma"].shape[0] <= 5  # 20 frames = 0.4 s = 3.1 chroma frames
    short = {**item, "chroma": item["chroma"][:5]}
    batch = collate_tokens([item, short], whole.pad_id)
    assert batch["chroma"].shape == (2, 8, 12)
    assert (batch["chroma"][1, 5:].argmax(-1) == 0).all()  # padded with the null chroma


@pytest.fixture(scope="module")
def melody_module(melody_cache):
    cfg, _ = melody_cache
    return MusicgenLightningModule(cfg)


def melody_batch(cache: Path) -> dict:
    data = TokenDataset(cache)
    return collate_tokens([data[i] for i in range(len(data))], data.pad_id)


def test_melody_forward_uses_the_chroma_and_its_null(melody_module, melody_cache):
    module, batch = melody_module, melody_batch(melody_cache[1])
    module.eval()
    with torch.no_grad():
        with_chroma = module(batch)["loss"]
        dropped = module(batch, None, torch.ones(6, dtype=torch.bool))["loss"]
        labels = module(batch)["labels"]
        # the chroma reaches the decoder: its logits change when the chroma is blanked
        logits = [
            module.model(**melody_inputs(module, batch, None, rows), labels=labels).logits
            for rows in (None, torch.ones(6, dtype=torch.bool))
        ]
        # transformers' own default when no chroma is given is the null chroma as well
        inputs = melody_inputs(module, {**batch, "chroma": None})
        default = module.model(**inputs, labels=labels).loss
    assert (logits[0] - logits[1]).abs().max() > 1e-3
    assert not torch.equal(with_chroma, dropped)
    assert torch.isclose(dropped, default, atol=1e-6)
    inputs = melody_inputs(module, batch, torch.tensor([1, 0, 0, 0, 0, 1], dtype=torch.bool))
    assert inputs["attention_mask"][0].sum() == 0 and inputs["attention_mask"][1].sum() > 0
    assert (inputs["input_features"][0].argmax(-1) == 0).all()  # caption and chroma together
    assert torch.equal(inputs["input_features"][1], batch["chroma"][1])


def test_melody_trains(melody_module, melody_cache):
    module = melody_module
    module.train()
    losses = overfit(module, melody_batch(melody_cache[1]))
    assert losses[0] > 3.9
    assert losses[-1] < losses[0] - 1.0


def test_generation_with_a_melody_and_in_stereo(tmp_path):
    from musicgen_train.errors import UserError
    from musicgen_train.generation import GenerationEngine, GenerationParams, melody_conditioning
    from musicgen_train.sources import load_musicgen

    params = GenerationParams(duration=0.2, seed=0, top_k=50)
    stereo = GenerationEngine(load_musicgen("tiny-stereo")).generate(["a", "b"], params)
    assert stereo.shape == (2, 2, int(0.2 * SR))
    assert not np.allclose(stereo[:, 0], stereo[:, 1])

    melody = load_musicgen("tiny-melody")
    reference = tmp_path / "ref.wav"
    write_stereo(reference, 3.0, 440.0, 440.0)
    conditioning = melody_conditioning(melody, reference, batch=2)
    assert conditioning["input_features"].shape == (2, 3 * SR // 4096 + 1, 12)
    assert (conditioning["input_features"].argmax(-1) == 9).all()
    engine = GenerationEngine(melody)
    seen = []  # what generate projects into the decoder's prefix: our chroma, then its null half
    hook = melody.model.audio_enc_to_dec_proj.register_forward_hook(
        lambda _module, args, _out: seen.append(args[0].argmax(-1))
    )
    try:
        audio = engine.generate(["a", "b"], params, **conditioning)
    finally:
        hook.remove()
    assert audio.shape == (2, 1, int(0.2 * SR))
    # One seeded row at a time (as alone), each with guidance: its chroma, then the null one.
    assert len(seen) == 2 and all(s.shape == (2, 24) for s in seen)
    assert all((s[0] == 9).all() and (s[1] == 0).all() for s in seen)
    with pytest.raises(UserError, match="melody= needs a melody model"):
        melody_conditioning(load_musicgen("tiny-stereo"), reference, batch=1)
    with pytest.raises(UserError, match="cannot be read as audio"):
        (tmp_path / "bad.wav").write_text("nope")
        melody_conditioning(melody, tmp_path / "bad.wav", batch=1)


def test_real_checkpoints_missing_is_one_line():
    from musicgen_train.errors import ModelNotFoundError
    from musicgen_train.sources import load_musicgen

    for name in ("facebook/musicgen-melody", "facebook/musicgen-stereo-small"):
        with pytest.raises(ModelNotFoundError) as err:
            load_musicgen(name)
        assert f"checkpoint '{name}' is not available" in str(err.value)
        assert "\n" not in str(err.value)
        assert load_config([f"model={name.split('/')[1]}"]).model.id == name
    assert json.dumps(load_config(["recipe=stereo"]).model.channels) == "2"


class InterruptedEncoder:
    """The real encoder, interrupted (as Ctrl-C) before its ``after``-th batch."""

    def __init__(self, encoder, after: int):
        self.inner, self.after, self.batches = encoder, after, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, audio):
        if self.batches == self.after:
            raise KeyboardInterrupt
        self.batches += 1
        return self.inner.encode(audio)


def test_interrupted_melody_prepare_keeps_the_chroma(tmp_path, melody_cache):
    from musicgen_train.data.encode import CodecEncoder

    cfg, straight = melody_cache
    source = cfg.data.source
    resumed = config("tiny-melody", source, tmp_path / "resumed")
    encoder = CodecEncoder.from_config(resumed)
    with pytest.raises(KeyboardInterrupt):
        prepare(resumed, encoder=InterruptedEncoder(encoder, after=2))
    assert len(TokenCache(resumed.data.output).known_entries()) == 4  # 2 batches of 2
    prepare(resumed, encoder=encoder)
    chroma = {e["id"]: e["chroma"] for e in TokenCache(straight).manifest()}
    again = {e["id"]: e["chroma"] for e in TokenCache(resumed.data.output).manifest()}
    assert again == chroma and len(again) == 6


def test_melody_prepare_resumed_inside_a_file_keeps_its_chroma(tmp_path):
    """A file whose first segments were encoded before the interruption: those keep the chroma
    the first run computed, the rest get theirs."""
    from musicgen_train.data.encode import CodecEncoder

    for name, freq in (("a440", 440.0), ("g392", 392.0)):
        write_stereo(tmp_path / "src" / f"{name}.wav", 3.0, freq, freq)
    cfg = config("tiny-melody", tmp_path / "src", tmp_path / "cache")
    encoder = CodecEncoder.from_config(cfg)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, encoder=InterruptedEncoder(encoder, after=1))
    assert len(TokenCache(cfg.data.output).known_entries()) == 2  # a440's first two segments
    prepare(cfg, encoder=encoder)
    entries = TokenCache(cfg.data.output).manifest()
    assert len(entries) == 6
    for entry in entries:
        pitch = {"a440": "9", "g392": "7"}[Path(entry["origin"]).stem]
        assert entry["chroma"] == pitch * (SR // 4096 + 1)
