"""Evaluation benchmarks: one JSON object per line.

1. Embedding throughput per embedder (seconds of audio embedded per second of wall time), with
   real-shaped networks holding random weights (no download): VGGish (72M parameters), CLAP
   (``ClapConfig()`` defaults = HTSAT-tiny + RoBERTa, the shape of laion/larger_clap_music's
   audio tower), EnCodec 32 kHz (MusicGen's codec), and the weight-free log-mel baseline.
   Input: 10 s clips at 32 kHz (what MusicGen writes); each embedder resamples to its own rate.
2. Fréchet distance at 128, 512 and 2048 dimensions: ours (symmetric eigen-decomposition) against
   the textbook formula with ``scipy.linalg.sqrtm(S1 @ S2)`` on the same inputs: time and value
   difference; plus a rank-deficient case (fewer frames than dimensions).

3. Estimators against sample size, on Gaussians whose distance is known (no audio needed):
   KAD vs FAD bias and spread; the coverage of the bootstrap interval (of the expected FAD at
   this n, and of the true distance); FAD-inf with both samplings (ours and fadtk's).

    python bench/evaluate.py            # about 3-5 minutes on 2 CPU cores
    python bench/evaluate.py estimators # only 3., about a minute
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


def _gaussian_case(rng, n, dim, shift, scale):
    return rng.normal(size=(n, dim)) * scale + shift


def bench_kad_vs_fad(reps: int = 20) -> None:
    """Bias and spread of FAD and KAD against the number of generated frames.

    Reference: 4000 frames of N(0, I) (FAD: its exact statistics). Generated: N(0.1, 1.15^2 I),
    16-d; the known FD = d (0.1^2 + 0.15^2). KAD's large-n value: the mean of 3 sets of 4000.
    """
    from musicgen_train.evaluation import Statistics, fad, statistics_from_embeddings
    from musicgen_train.evaluation.kad import kernel_audio_distance

    dim, shift, scale = 16, 0.1, 1.15
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(4000, dim))
    exact = Statistics(np.zeros(dim), np.eye(dim), 0)
    true_fd = dim * (shift**2 + (scale - 1.0) ** 2)
    kad_large = float(
        np.mean(
            [
                kernel_audio_distance(reference, _gaussian_case(rng, 4000, dim, shift, scale))
                for _ in range(3)
            ]
        )
    )
    for n in (50, 100, 200, 500, 1000, 2000):
        fads, kads = [], []
        start, wall = time.process_time(), time.perf_counter()
        for _ in range(reps):
            frames = _gaussian_case(rng, n, dim, shift, scale)
            fads.append(fad(statistics_from_embeddings(frames), exact))
            kads.append(kernel_audio_distance(reference, frames))
        emit(
            bench="kad_vs_fad",
            dim=dim,
            frames=n,
            reps=reps,
            fad_true=round(true_fd, 4),
            fad_mean=round(float(np.mean(fads)), 4),
            fad_relative_bias=round(float(np.mean(fads)) / true_fd - 1.0, 4),
            fad_relative_spread=round(float(np.std(fads, ddof=1)) / true_fd, 4),
            kad_large_n=round(kad_large, 4),
            kad_mean=round(float(np.mean(kads)), 4),
            kad_relative_bias=round(float(np.mean(kads)) / kad_large - 1.0, 4),
            kad_relative_spread=round(float(np.std(kads, ddof=1)) / kad_large, 4),
            cpu_seconds=round(time.process_time() - start, 3),
            wall_seconds=round(time.perf_counter() - wall, 3),
        )


def bench_bootstrap_coverage(trials: int = 200, samples: int = 100) -> None:
    """How often the 95% bootstrap interval (over clips) holds (a) the expected FAD at this
    number of clips and (b) the true distance. Clips: 10 frames each, 8-d Gaussians."""
    from musicgen_train.evaluation import Statistics, bootstrap_fad, fad, statistics_from_embeddings

    dim, shift, scale, per_clip = 8, 0.2, 1.2, 10
    true_fd = dim * (shift**2 + (scale - 1.0) ** 2)
    reference = Statistics(np.zeros(dim), np.eye(dim), 0)
    rng = np.random.default_rng(1)
    for clips in (20, 40, 100):
        expected = float(
            np.mean(
                [
                    fad(
                        statistics_from_embeddings(
                            _gaussian_case(rng, clips * per_clip, dim, shift, scale)
                        ),
                        reference,
                    )
                    for _ in range(2000)
                ]
            )
        )
        hold_expected = hold_true = 0
        for trial in range(trials):
            songs = [_gaussian_case(rng, per_clip, dim, shift, scale) for _ in range(clips)]
            _, (low, high) = bootstrap_fad(songs, reference, samples=samples, seed=trial)
            hold_expected += low <= expected <= high
            hold_true += low <= true_fd <= high
        emit(
            bench="bootstrap_coverage",
            nominal=0.95,
            clips=clips,
            frames=clips * per_clip,
            dim=dim,
            trials=trials,
            fad_true=round(true_fd, 4),
            fad_expected_at_n=round(expected, 4),
            covers_expected_at_n=hold_expected / trials,
            covers_true=hold_true / trials,
        )


def bench_fad_inf(reps: int = 10) -> None:
    """FAD-inf with subsets drawn without replacement (ours) and with replacement (fadtk)."""
    from musicgen_train.evaluation import Statistics, fad_inf

    dim, shift, scale = 32, 0.15, 1.2
    true_fd = dim * (shift**2 + (scale - 1.0) ** 2)
    reference = Statistics(np.zeros(dim), np.eye(dim), 0)
    rng = np.random.default_rng(2)
    for frames in (600, 1000, 5000):
        for sampling in ("without_replacement", "fadtk"):
            values, r2 = [], []
            for rep in range(reps):
                data = _gaussian_case(rng, frames, dim, shift, scale)
                result = fad_inf(data, reference, seed=rep, sampling=sampling)
                values.append(result.value)
                r2.append(result.r2)
            emit(
                bench="fad_inf",
                sampling=sampling,
                frames=frames,
                dim=dim,
                reps=reps,
                fad_true=round(true_fd, 4),
                fad_inf_mean=round(float(np.mean(values)), 4),
                fad_inf_std=round(float(np.std(values, ddof=1)), 4),
                r2_mean=round(float(np.mean(r2)), 3),
            )


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["estimators"]:
        bench_kad_vs_fad()
        bench_bootstrap_coverage()
        bench_fad_inf()
        raise SystemExit(0)
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
    bench_kad_vs_fad()
    bench_bootstrap_coverage()
    bench_fad_inf()
