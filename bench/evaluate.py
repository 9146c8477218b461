"""Evaluation benchmarks: one JSON object per line.

1. Embedding throughput per embedder (seconds of audio embedded per second of wall time), with
   real-shaped networks holding random weights (no download): VGGish (72M parameters), CLAP
   (``ClapConfig()`` defaults = HTSAT-tiny + RoBERTa, the shape of laion/larger_clap_music's
   audio tower), EnCodec 32 kHz (MusicGen's codec), and the weight-free log-mel baseline.
   Input: 10 s clips at 32 kHz (what MusicGen writes); each embedder resamples to its own rate.
2. Fréchet distance at 128, 512 and 2048 dimensions: ours (symmetric eigen-decomposition) against
   the textbook formula with ``scipy.linalg.sqrtm(S1 @ S2)`` on the same inputs: time and value
   difference; plus a rank-deficient case (fewer frames than dimensions).

    python bench/evaluate.py            # about 2-4 minutes on 2 CPU cores
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import scipy.linalg
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CLIP_SECONDS = 10.0
RATE = 32_000


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def timed(function, repeats: int = 3):
    """``function()``'s result and its best wall time over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return result, min(times)


def real_shaped_embedders():
    from transformers import (
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapProcessor,
        EncodecModel,
        RobertaTokenizerFast,
    )

    from musicgen_train.evaluation.clap import ClapEmbedder
    from musicgen_train.evaluation.encodec_embedder import EncodecEmbedder
    from musicgen_train.evaluation.logmel import LogMelEmbedder
    from musicgen_train.evaluation.vggish import VGGish, VGGishEmbedder
    from musicgen_train.model.shapes import encodec_32khz_config

    torch.manual_seed(0)
    yield "logmel", LogMelEmbedder()
    yield "vggish", VGGishEmbedder(VGGish(), checkpoint="random weights, real shape")
    codec = EncodecModel(encodec_32khz_config())
    yield "encodec", EncodecEmbedder(codec, checkpoint="random weights, encodec_32khz shape")
    tokenizer = _offline_roberta_tokenizer(RobertaTokenizerFast)
    processor = ClapProcessor(feature_extractor=ClapFeatureExtractor(), tokenizer=tokenizer)
    model = ClapModel(ClapConfig())
    yield "clap", ClapEmbedder(model, processor, checkpoint="random weights, ClapConfig() shape")


def _offline_roberta_tokenizer(cls):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator(["music"], trainer)
    return cls(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )


def bench_embedders() -> None:
    audio = np.random.default_rng(0).normal(scale=0.1, size=(1, int(CLIP_SECONDS * RATE)))
    audio = audio.astype(np.float32)
    for name, embedder in real_shaped_embedders():
        parameters = sum(p.numel() for p in _modules(embedder) for p in p.parameters())
        embedder.embed(audio, RATE)  # warm-up (allocations, lazy init)
        frames, seconds = timed(lambda e=embedder: e.embed(audio, RATE), repeats=2)
        emit(
            bench="embedding_throughput",
            embedder=name,
            sample_rate=embedder.sample_rate,
            window=embedder.window,
            parameters=parameters,
            clip_seconds=CLIP_SECONDS,
            frames=int(frames.shape[0]),
            dim=int(frames.shape[1]),
            seconds=round(seconds, 4),
            audio_seconds_per_second=round(CLIP_SECONDS / seconds, 2),
            torch_threads=torch.get_num_threads(),
        )


def _modules(embedder) -> list[torch.nn.Module]:
    return [
        m
        for m in (getattr(embedder, a, None) for a in ("model", "codec"))
        if isinstance(m, torch.nn.Module)
    ]


def textbook_frechet(mu1, s1, mu2, s2) -> tuple[float, float]:
    """The usual implementation: sqrtm of the non-symmetric product, real part kept."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    imaginary = float(np.abs(np.imag(covmean)).max()) if np.iscomplexobj(covmean) else 0.0
    value = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(covmean))
    return float(value), imaginary


def bench_frechet() -> None:
    from musicgen_train.evaluation import frechet_distance, statistics_from_embeddings

    rng = np.random.default_rng(0)
    cases = [(128, 1024), (512, 2048), (2048, 4096), (512, 100)]  # (dim, frames); last: rank 99
    for dim, frames in cases:
        a = statistics_from_embeddings(rng.normal(size=(frames, dim)))
        b = statistics_from_embeddings(rng.normal(size=(frames, dim)) * 1.1 + 0.05)
        repeats = 1 if dim >= 2048 else 3
        inputs = (a.mu, a.cov, b.mu, b.cov)
        ours, ours_s = timed(lambda x=inputs: frechet_distance(*x), repeats)
        (textbook, imaginary), textbook_s = timed(lambda x=inputs: textbook_frechet(*x), repeats)
        emit(
            bench="frechet",
            dim=dim,
            frames=frames,
            rank=int(min(dim, frames - 1)),
            ours=ours,
            scipy_sqrtm=textbook,
            abs_difference=abs(ours - textbook),
            rel_difference=abs(ours - textbook) / max(abs(textbook), 1e-12),
            scipy_max_imaginary=imaginary,
            ours_seconds=round(ours_s, 4),
            scipy_seconds=round(textbook_s, 4),
            speedup=round(textbook_s / ours_s, 2),
        )
        same = frechet_distance(a.mu, a.cov, a.mu, a.cov)
        same_textbook, _ = textbook_frechet(a.mu, a.cov, a.mu, a.cov)
        emit(
            bench="frechet_identical", dim=dim, frames=frames, ours=same, scipy_sqrtm=same_textbook
        )


if __name__ == "__main__":
    # Other processes on the machine slow every figure down alike; say how busy it was.
    emit(
        bench="environment",
        cpu_count=os.cpu_count(),
        load_average=os.getloadavg(),
        torch=torch.__version__,
        numpy=np.__version__,
        scipy=scipy.__version__,
    )
    bench_frechet()
    bench_embedders()
