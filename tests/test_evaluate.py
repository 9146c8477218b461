"""``musicgen-train evaluate``: generation, FAD against a reference, CLAP, reports, skips."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from evaluation_models import save_tiny_clap, tone

from musicgen_train.audio import read_audio, write_audio
from musicgen_train.cli import main
from musicgen_train.config import load_config
from musicgen_train.errors import ConfigError, UserError
from musicgen_train.evaluation import (
    frechet_distance,
    save_statistics,
    statistics_from_files,
)
from musicgen_train.evaluation.cache import EmbeddingCache
from musicgen_train.evaluation.clips import Clip
from musicgen_train.evaluation.logmel import LogMelEmbedder
from musicgen_train.evaluation.prompts import load_prompt_set
from musicgen_train.evaluation.run import evaluate

FAST = ["eval.generation.duration=2.0", "eval.bootstrap.samples=50", "eval.report_spectrograms=2"]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    rows = [{"id": "low", "text": "a low calm drone"}, {"id": "high", "text": "a bright whistle"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def reference_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    for i, hz in enumerate((110, 220, 330, 440)):
        write_audio(folder / f"{i}.wav", tone(3.0, 44_100, hz), 44_100)
    return folder


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return save_tiny_clap(tmp_path_factory.mktemp("clap"))


def overrides(prompts_file, reference_folder, *extra):
    return [*FAST, f"eval.prompts={prompts_file}", f"eval.reference={reference_folder}", *extra]


@pytest.mark.slow
def test_demo_evaluation_on_a_fresh_machine(work_home):
    """eval=demo prepares its reference (the demo's valid split), and writes every output."""
    cfg = load_config(["eval=demo", "eval.compare_with=tiny", *FAST])
    report = evaluate(cfg, model_source="tiny")
    out = work_home / "runs" / "demo" / "eval" / "tiny"
    assert report["report_dir"] == str(out)
    saved = json.loads((out / "eval_report.json").read_text())
    assert saved["metrics"] == report["metrics"]
    assert (out / "report.html").is_file() and (out / "fad_logmel_per_prompt.png").is_file()
    assert (out / "spectrograms_model.png").is_file() and (
        out / "spectrograms_compare.png"
    ).is_file()
    assert report["reference"]["description"].startswith("valid split of the token cache")
    assert report["reference"]["clips"] >= 1
    fad = report["models"][0]["metrics"]["fad_logmel"]
    assert fad["value"] > 0 and fad["interval"][0] <= fad["value"] <= fad["interval"][1]
    assert fad["sample_rate"] == 16_000 and "1.0 s windows" in fad["window"]
    assert fad["comparable_to_published"] is False and fad["clips"] == 4
    # CLAP is not available offline: one clear line, no number.
    assert report["metrics"]["clap_score"] is None
    assert any(
        line.startswith("clap_score: skipped: CLAP checkpoint") for line in report["skipped"]
    )
    assert "clap_score: skipped" in (out / "report.html").read_text()
    # Generated audio, one file per prompt and model, at the model's rate.
    for model in report["models"]:
        for row in model["per_prompt"]:
            audio, rate = read_audio(row["audio"][0])
            assert rate == 32_000 and audio.shape[1] == 64_000
    # The same model with the same seeds: the side-by-side columns agree.
    first, second = (m["metrics"]["fad_logmel"]["value"] for m in report["models"])
    assert first == pytest.approx(second)
    # Text adherence on the demo's valid split, without weights: gain = shuffled - true.
    gain = report["models"][0]["metrics"]["caption_gain"]
    assert gain["clips"] >= 2 and gain["ce_true"] > 0 and gain["ce_null"] > 0
    assert gain["value"] == pytest.approx(gain["ce_shuffled"] - gain["ce_true"])
    assert report["metrics"]["caption_gain"] == gain["value"]
    page = (out / "report.html").read_text()
    assert "shuffled" in page and page.count("download it once") == 1


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, prompts_file, reference_folder):
    """One evaluation against a folder of reference audio, with its own work_dir."""
    home = tmp_path_factory.mktemp("home")
    cfg = load_config(
        overrides(prompts_file, reference_folder, "eval.clap_score=false", f"work_dir={home}")
    )
    return cfg, evaluate(cfg, model_source="tiny", output_dir=home / "first")


def test_fad_against_a_folder_matches_the_formula(folder_run, reference_folder):
    _, report = folder_run
    entry = report["models"][0]["metrics"]["fad_logmel"]
    embedder = LogMelEmbedder()
    reference = statistics_from_files(sorted(reference_folder.glob("*.wav")), embedder)
    generated = statistics_from_files(
        [r["audio"][0] for r in report["models"][0]["per_prompt"]], embedder
    )
    expected = frechet_distance(generated.mu, generated.cov, reference.mu, reference.cov)
    assert entry["value"] == pytest.approx(expected, rel=1e-6)
    assert entry["reference_clips"] == 4 and entry["reference_frames"] == reference.count
    assert len(entry["per_song"]) == 2 and all(v >= 0 for v in entry["per_song"])
    assert entry["fad_inf"]["skipped"].startswith("needs more than 500")
    # No token cache here, no PaSST / audiobox-aesthetics packages: one line each.
    assert [s.split(":")[0] for s in report["skipped"]] == [
        "kld_passt",
        "aes_ce, aes_cu, aes_pc, aes_pq",
        "caption_gain",
    ]
    assert "clap_score" not in report["metrics"]
    assert "not a confidence interval" in entry["interval_kind"]
    # KAD beside FAD: kadtk's number, checked against the explicit double loop.
    from test_kad import kad_double_loop

    cache = EmbeddingCache(None)
    ref_frames = np.concatenate(
        [cache.embed(Clip(p), embedder) for p in sorted(reference_folder.glob("*.wav"))]
    )
    gen_frames = np.concatenate(
        [
            cache.embed(Clip(Path(r["audio"][0])), embedder)
            for r in report["models"][0]["per_prompt"]
        ]
    )
    kad = report["models"][0]["metrics"]["kad_logmel"]
    expected_kad = kad_double_loop(ref_frames.tolist(), gen_frames.tolist())
    assert kad["value"] == pytest.approx(expected_kad, rel=1e-8, abs=1e-10)
    assert kad["frames"] == len(gen_frames) and kad["reference_frames"] == len(ref_frames)
    # Too small a set is said once per metric, in the report's warnings.
    warnings = report["models"][0]["warnings"]
    assert any(w.startswith("fad_logmel: 4 generated frames for 128-d") for w in warnings)
    assert any(w.startswith("kad_logmel: only 2 generated clips") for w in warnings)
    # Outliers: the clips with the largest per-song FAD, farthest first.
    (outliers,) = report["models"][0]["outliers"].values()
    assert [o["per_song_fad"] for o in outliers] == sorted(entry["per_song"], reverse=True)


def test_second_evaluation_reads_embeddings_from_the_cache(folder_run):
    cfg, first = folder_run
    assert first["cache"]["misses"] == 6  # 4 reference files + 2 generations
    second = evaluate(cfg, model_source="tiny", output_dir=Path(cfg.work_dir) / "second")
    assert second["cache"] == {"hits": 6, "misses": 0}  # same seeds: the same audio bytes
    assert second["metrics"] == first["metrics"]


def test_npz_reference_gives_the_same_fad(folder_run, work_home, prompts_file, reference_folder):
    stats = statistics_from_files(sorted(reference_folder.glob("*.wav")), LogMelEmbedder())
    npz = save_statistics(work_home / "reference.npz", "logmel", stats)
    cfg = load_config(
        [*FAST, f"eval.prompts={prompts_file}", "eval.clap_score=false", f"eval.reference={npz}"]
    )
    from_npz = evaluate(cfg, "tiny", work_home / "n")
    assert from_npz["metrics"]["fad_logmel"] == pytest.approx(
        folder_run[1]["metrics"]["fad_logmel"]
    )
    assert from_npz["reference"]["stats_file"] == str(npz)


def test_clap_fad_and_score_with_a_local_checkpoint(
    work_home, prompts_file, reference_folder, clap_dir
):
    cfg = load_config(
        overrides(
            prompts_file,
            reference_folder,
            f"eval.clap.checkpoint={clap_dir}",
            "eval.embedders=[logmel,clap,vggish]",
        )
    )
    report = evaluate(cfg, model_source="tiny", output_dir=work_home / "clap")
    score = report["models"][0]["metrics"]["clap_score"]
    assert -1 <= score["value"] <= 1 and score["sample_rate"] == 48_000
    assert score["checkpoint"] == str(clap_dir) and "10 s windows" in score["window"]
    per_prompt = [row["clap_score"] for row in report["models"][0]["per_prompt"]]
    assert score["value"] == pytest.approx(np.mean(per_prompt))
    assert report["models"][0]["metrics"]["fad_clap"]["value"] >= 0
    # No VGGish weights: skipped with one line, in the JSON and the HTML, and no number.
    assert report["metrics"]["fad_vggish"] is None
    (line,) = [s for s in report["skipped"] if s.startswith("fad_vggish")]
    assert line.startswith("fad_vggish, kad_vggish: skipped:")
    assert "eval.vggish.weights is null" in line
    page = (work_home / "clap" / "report.html").read_text()
    assert page.count("eval.vggish.weights is null") == 1  # the reason once, not per cell
    assert report["models"][0]["metrics"]["kad_clap"]["value"] is not None
    assert (work_home / "clap" / "clap_score_per_prompt.png").is_file()
    assert [e["embedder"] for e in report["embedders"]] == ["logmel", "clap"]


def test_missing_reference_skips_fad_with_one_line(work_home, prompts_file):
    cfg = load_config(
        [*FAST, f"eval.prompts={prompts_file}", "eval.reference=prompts", "eval.clap_score=false"]
    )
    report = evaluate(cfg, model_source="tiny", output_dir=work_home / "none")
    assert report["metrics"]["fad_logmel"] is None and report["metrics"]["kad_logmel"] is None
    assert [s for s in report["skipped"] if s.startswith("fad")] == [
        f"fad_logmel, kad_logmel: skipped: no reference: prompt set {prompts_file} lists no "
        "reference audio"
    ]


def test_prompt_sets(tmp_path):
    demo = load_prompt_set("demo")
    assert demo.name == "demo" and len(demo.prompts) == 4
    assert len(load_prompt_set("jazz").prompts) >= 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"id": 2}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: needs a non-empty \"text\""):
        load_prompt_set(str(bad))
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(UserError, match="bad.jsonl:2: not valid JSON"):
        load_prompt_set(str(bad))
    with pytest.raises(UserError, match="neither a prompts.jsonl"):
        load_prompt_set("no-such-set")


def test_config_is_validated():
    with pytest.raises(ConfigError, match="eval.embedders contains 'fad'"):
        load_config(["eval.embedders=[logmel,fad]"])
    with pytest.raises(ConfigError, match="eval.bootstrap.confidence"):
        load_config(["eval.bootstrap.confidence=1.5"])


def test_cli_bad_prompt_set_is_one_line(capsys):
    assert main(["evaluate", "eval.prompts=/no/such/prompts.jsonl"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("musicgen-train: error: eval.prompts=")


def test_training_callback_logs_metrics(work_home, prompts_file, reference_folder, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from musicgen_train.evaluation.callback import EvaluationCallback
    from musicgen_train.training.module import MusicgenLightningModule

    cfg = load_config(overrides(prompts_file, reference_folder, "eval.clap_score=false"))
    module = MusicgenLightningModule(cfg)
    callback = EvaluationCallback(cfg, tmp_path / "run", every_n_epochs=2, max_prompts=1)
    logger = CSVLogger(tmp_path / "logs")
    trainer = SimpleNamespace(current_epoch=0, is_global_zero=True, loggers=[logger], global_step=3)
    callback.on_train_epoch_end(trainer, module)  # epoch 1: not yet
    assert not (tmp_path / "run" / "eval_epochs").exists()
    trainer.current_epoch = 1
    callback.on_train_epoch_end(trainer, module)
    assert module.training  # left as it was found
    assert (tmp_path / "run" / "eval_epochs" / "epoch=2" / "low.wav").is_file()
    logger.save()
    logged = (tmp_path / "logs" / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "eval/fad_logmel" in logged


def test_unreadable_reference_clip_is_skipped_with_a_note(tmp_path, reference_folder):
    from musicgen_train.evaluation.cache import EmbeddingCache
    from musicgen_train.evaluation.clips import Clip
    from musicgen_train.evaluation.reference import Reference, ReferenceUnavailable

    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav")
    good = [Clip(p) for p in sorted(reference_folder.glob("*.wav"))]
    reference = Reference("test", [*good, Clip(broken)])
    stats = reference.statistics(LogMelEmbedder(), EmbeddingCache(None))
    assert stats.count == 4 * 4  # the 4 readable clips of 3 s, 4 windows each
    assert len(reference.notes) == 1 and str(broken) in reference.notes[0]
    with pytest.raises(ReferenceUnavailable, match="no reference clip"):
        Reference("test", [Clip(broken)]).statistics(LogMelEmbedder(), EmbeddingCache(None))


def test_a_reference_folder_reads_every_libsndfile_format_and_notes_the_rest(tmp_path):
    from musicgen_train.evaluation.reference import ReferenceUnavailable, _folder

    folder = tmp_path / "reference"
    folder.mkdir()
    wave = tone(1.0, 11025, 220.0)
    sf.write(folder / "a.au", wave.T, 11025, format="AU")
    sf.write(folder / "b.aifc", wave.T, 11025, format="AIFF", subtype="ULAW")
    (folder / "c.m4a").write_bytes(b"\x00\x00\x00 ftypM4A ")
    (folder / "notes.txt").write_text("not audio")
    reference = _folder(folder, None)
    assert [clip.name for clip in reference.clips] == ["a.au", "b.aifc"]
    assert len(reference.notes) == 1 and "c.m4a skipped: .m4a cannot be read" in reference.notes[0]
    assert reference.summary()["notes"] == reference.notes  # into the report
    stats = reference.statistics(LogMelEmbedder(), EmbeddingCache(None))
    assert stats.count > 0
    (folder / "a.au").unlink()
    (folder / "b.aifc").unlink()
    with pytest.raises(ReferenceUnavailable, match=r"no audio files \(1 it cannot read"):
        _folder(folder, None)


def test_stats_action_writes_fadtk_npz(work_home, reference_folder, prompts_file):
    out = work_home / "stats.npz"
    args = [
        f"eval.reference={reference_folder}",
        f"eval.stats_output={out}",
        f"eval.prompts={prompts_file}",
        "eval.embedders=[logmel,vggish]",
    ]
    assert main(["evaluate", "stats", *args]) == 0
    with np.load(out) as data:
        assert {"logmel.mu", "logmel.cov"} <= set(data.files)
        assert not any(k.startswith("vggish") for k in data.files)  # no weights: not written
    expected = statistics_from_files(sorted(reference_folder.glob("*.wav")), LogMelEmbedder())
    np.testing.assert_allclose(np.load(out)["logmel.mu"], expected.mu)
    assert main(["evaluate", "nonsense"]) == 2
