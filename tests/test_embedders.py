"""Embedders: each loads through its real code path and sees audio at its own rate."""

import numpy as np
import pytest
import torch
from evaluation_models import save_tiny_clap, save_tiny_encodec, save_tiny_vggish, tone
from omegaconf import OmegaConf

from musicgen_train.audio import write_audio
from musicgen_train.evaluation.cache import EmbeddingCache
from musicgen_train.evaluation.clips import Clip
from musicgen_train.evaluation.embedders import EmbedderUnavailable, build_embedder
from musicgen_train.evaluation.logmel import hertz_to_mel, log_mel_spectrogram, mel_matrix


def eval_cfg(**overrides):
    base = {
        "vggish": {"weights": None, "embedding_relu": False},
        "clap": {"checkpoint": None, "window_seconds": 10.0, "min_last_seconds": 1.0},
        "encodec": {"checkpoint": "model"},
    }
    return OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(overrides))


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return save_tiny_clap(tmp_path_factory.mktemp("clap"))


def record_inputs(module: torch.nn.Module) -> list[tuple]:
    shapes: list[tuple] = []

    def hook(_, args, kwargs):
        first = args[0] if args else next(iter(kwargs.values()))
        shapes.append(tuple(first.shape))

    module.register_forward_pre_hook(hook, with_kwargs=True)
    return shapes


# --- the front end ----------------------------------------------------------------------------


def test_mel_matrix_follows_the_htk_scale_and_zeroes_dc():
    weights = mel_matrix(64, 257, 16_000, 125.0, 7500.0)
    assert weights.shape == (257, 64) and np.all(weights[0] == 0) and np.all(weights >= 0)
    edges = np.linspace(hertz_to_mel(125.0), hertz_to_mel(7500.0), 66)
    centers_hz = 700.0 * (np.exp(edges[1:-1] / 1127.0) - 1.0)
    bins_hz = np.linspace(0, 8000, 257)
    # Each band's peak lies on the spectrum bin nearest its centre frequency.
    peaks = bins_hz[weights.argmax(axis=0)]
    assert np.all(np.abs(peaks - centers_hz) <= 8000 / 256)


def test_log_mel_puts_a_tone_in_its_band():
    spectrogram = log_mel_spectrogram(tone(1.0, 16_000, 1000.0)[0], 16_000)
    assert spectrogram.shape == (1 + (16_000 - 400) // 160, 64)
    edges = np.linspace(hertz_to_mel(125.0), hertz_to_mel(7500.0), 66)
    expected_band = int(np.argmin(np.abs(edges[1:-1] - hertz_to_mel(1000.0))))
    assert abs(int(spectrogram.mean(axis=0).argmax()) - expected_band) <= 1
    silence = log_mel_spectrogram(np.zeros(16_000), 16_000)
    np.testing.assert_allclose(silence, np.log(0.01))


# --- each embedder, at its own rate ----------------------------------------------------------


def test_logmel_baseline_windows_and_rate():
    embedder = build_embedder("logmel", eval_cfg())
    assert embedder.sample_rate == 16_000 and not embedder.comparable
    frames = embedder.embed(tone(3.0, 44_100), 44_100)
    # 3 s at 16 kHz = 298 frames of 10 ms; 1 s windows every 0.5 s: 1 + (298 - 100) // 50.
    assert frames.shape == (4, 128)
    assert embedder.embed(tone(0.2, 16_000), 16_000).shape == (1, 128)  # padded to one window
    # A stereo file is downmixed: the same tone on both channels gives the same frames.
    stereo = np.repeat(tone(3.0, 44_100), 2, axis=0)
    np.testing.assert_allclose(embedder.embed(stereo, 44_100), frames, rtol=1e-5, atol=1e-5)


def test_vggish_loads_a_state_dict_file_and_sees_16khz_patches(tmp_path):
    weights = save_tiny_vggish(tmp_path / "vggish.pth")
    embedder = build_embedder("vggish", eval_cfg(vggish={"weights": str(weights)}))
    shapes = record_inputs(embedder.model)
    frames = embedder.embed(tone(3.0, 32_000), 32_000)
    # 3 s at 16 kHz = 298 log-mel frames = 3 patches of 96x64 (at the wrong rate it would be 6).
    assert shapes == [(3, 1, 96, 64)]
    assert frames.shape == (3, 128)
    assert embedder.identity()["sample_rate"] == 16_000
    assert embedder.identity()["weights"] is not None


def test_vggish_has_no_final_relu_by_default_and_says_which(tmp_path):
    weights = save_tiny_vggish(tmp_path / "vggish.pth")
    plain = build_embedder("vggish", eval_cfg(vggish={"weights": str(weights)}))
    relu = build_embedder(
        "vggish", eval_cfg(vggish={"weights": str(weights), "embedding_relu": True})
    )
    audio = tone(3.0, 16_000)
    signed, rectified = plain.embed(audio, 16_000), relu.embed(audio, 16_000)
    assert (signed < 0).any()  # Google's / fadtk's embeddings are signed
    # The ReLU variant is exactly the rectified default: max(x, 0), computed independently.
    np.testing.assert_allclose(rectified, np.maximum(signed, 0.0), rtol=1e-6, atol=1e-7)
    assert plain.identity()["embedding_relu"] is False
    assert relu.identity()["embedding_relu"] is True
    assert "no final ReLU" in plain.identity()["window"]
    assert "final ReLU kept" in relu.identity()["window"]


def test_embedder_modules_never_import_the_registry():
    """No import circle within evaluation/: the registry loads modules by name, lazily."""
    import ast
    from pathlib import Path

    import musicgen_train.evaluation as package
    from musicgen_train.evaluation.embedders import REGISTRY

    folder = Path(package.__file__).parent
    graph = {}
    for path in folder.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports too
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        graph[f"musicgen_train.evaluation.{path.stem}"] = {
            n for n in names if n.startswith("musicgen_train.evaluation.")
        }
    for target in REGISTRY.values():
        module = target.split(":")[0]
        assert "musicgen_train.evaluation.embedders" not in graph[module], module

    def visit(node, stack):
        assert node not in stack, " -> ".join([*stack, node])
        for child in graph.get(node, ()):
            visit(child, [*stack, node])

    for node in graph:
        visit(node, [])


def test_vggish_real_shape_matches_the_release():
    from musicgen_train.evaluation.vggish import VGGish

    model = VGGish()
    assert sum(p.numel() for p in model.parameters()) == 72_141_184  # torchvggish's count
    assert model(torch.zeros(2, 1, 96, 64)).shape == (2, 128)


def test_vggish_without_weights_is_unavailable(tmp_path):
    with pytest.raises(EmbedderUnavailable, match="eval.vggish.weights is null"):
        build_embedder("vggish", eval_cfg())
    with pytest.raises(EmbedderUnavailable, match="does not exist"):
        build_embedder("vggish", eval_cfg(vggish={"weights": str(tmp_path / "none.pth")}))
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(EmbedderUnavailable, match="not a VGGish"):
        build_embedder("vggish", eval_cfg(vggish={"weights": str(tmp_path / "other.pth")}))


def test_clap_sees_48khz_windows_of_at_most_ten_seconds(clap_dir):
    embedder = build_embedder("clap", eval_cfg(clap={"checkpoint": str(clap_dir)}))
    seen: list[int] = []
    extractor = embedder.processor.feature_extractor
    original = extractor.__call__

    def spy(windows, **kwargs):
        assert kwargs["sampling_rate"] == 48_000
        seen.extend(len(w) for w in windows)
        return original(windows, **kwargs)

    embedder.processor.feature_extractor = type(
        "Spy", (), {"__call__": staticmethod(spy), "nb_max_samples": 480_000}
    )()
    frames = embedder.embed(tone(3.0, 44_100), 44_100)
    assert seen == [144_000] and frames.shape == (1, 16)
    seen.clear()
    frames = embedder.embed(tone(25.0, 16_000), 16_000)
    assert seen == [480_000, 480_000, 240_000] and frames.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(frames, axis=1), 1.0, rtol=1e-5)


def test_clap_embedding_is_deterministic_even_for_fusion_checkpoints(tmp_path):
    folder = save_tiny_clap(tmp_path / "fused", enable_fusion=True)
    embedder = build_embedder("clap", eval_cfg(clap={"checkpoint": str(folder)}))
    audio = np.random.default_rng(0).normal(scale=0.1, size=(1, 48_000 * 12)).astype(np.float32)
    first = embedder.embed(audio, 48_000)
    for _ in range(3):  # the extractor would flip is_longer / crop at random: we never let it
        np.testing.assert_array_equal(embedder.embed(audio, 48_000), first)


def test_missing_clap_checkpoint_is_unavailable_offline(tmp_path):
    with pytest.raises(EmbedderUnavailable, match="not available"):
        build_embedder("clap", eval_cfg(clap={"checkpoint": "laion/larger_clap_music"}))
    with pytest.raises(EmbedderUnavailable, match="not available"):
        build_embedder("clap", eval_cfg(clap={"checkpoint": str(tmp_path / "missing")}))


def test_encodec_from_a_folder_sees_its_own_rate(tmp_path):
    folder = save_tiny_encodec(tmp_path / "encodec24", sample_rate=24_000)
    embedder = build_embedder("encodec", eval_cfg(encodec={"checkpoint": str(folder)}))
    shapes = record_inputs(embedder.codec.encoder)
    frames = embedder.embed(tone(2.0, 44_100), 44_100)
    assert shapes == [(1, 1, 48_000)]  # 2 s at 24 kHz
    hop = 8 * 5 * 4 * 2
    assert frames.shape == (48_000 // hop, 16)  # one 16-d latent per hop
    assert embedder.fadtk_names == ("encodec-emb",)


def test_encodec_of_the_evaluated_model(tiny_loaded):
    codec = tiny_loaded.model.audio_encoder
    embedder = build_embedder("encodec", eval_cfg(), codec=codec, codec_source="tiny")
    shapes = record_inputs(codec.encoder)
    frames = embedder.embed(tone(1.0, 16_000), 16_000)
    assert shapes == [(1, 1, 32_000)] and frames.shape == (50, 32)  # 32 kHz, 50 frames/s
    assert "tiny" in embedder.identity()["checkpoint"]


def test_missing_encodec_checkpoint_is_unavailable():
    with pytest.raises(EmbedderUnavailable, match="not available offline"):
        build_embedder("encodec", eval_cfg(encodec={"checkpoint": "facebook/encodec_32khz"}))


# --- the cache ----------------------------------------------------------------------------------


def test_second_run_reads_the_cache_and_never_calls_the_model(tmp_path, clap_dir):
    embedder = build_embedder("clap", eval_cfg(clap={"checkpoint": str(clap_dir)}))
    calls = record_inputs(embedder.model.audio_model)
    clips = [
        Clip(write_audio(tmp_path / f"{i}.wav", tone(2.0, 32_000, 200.0 * (i + 1)), 32_000))
        for i in range(3)
    ]
    cache = EmbeddingCache(tmp_path / "cache")
    first = cache.embed_all(clips, embedder)
    assert len(calls) == 3 and cache.misses == 3
    second = EmbeddingCache(tmp_path / "cache").embed_all(clips, embedder)
    assert len(calls) == 3  # no new forward pass
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    # New content or another window of the same file is another key.
    write_audio(clips[0].path, tone(2.0, 32_000, 999.0), 32_000)
    cache.embed(clips[0], embedder)
    cache.embed(Clip(clips[1].path, offset=0.5, duration=1.0), embedder)
    assert len(calls) == 5


def test_cache_key_includes_the_embedder_identity(tmp_path):
    logmel = build_embedder("logmel", eval_cfg())
    clip = Clip(write_audio(tmp_path / "a.wav", tone(2.0, 16_000), 16_000))
    cache = EmbeddingCache(tmp_path / "cache")
    cache.embed(clip, logmel)
    logmel.window = logmel.window + " (changed)"
    cache.embed(clip, logmel)
    assert cache.misses == 2 and cache.hits == 0
