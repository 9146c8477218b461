"""``musicgen-train evaluate``: generate for a prompt set, score FAD and CLAP, write the report.

``evaluate(cfg, model_source, output_dir)`` is what the CLI, ``python train.py`` and the
notebooks call; the training callback reuses ``MetricSuite`` on the model being trained.
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from musicgen_train.audio import write_audio
from musicgen_train.errors import UserError
from musicgen_train.evaluation.clips import Clip
from musicgen_train.evaluation.conditioning import Conditioning, conditioning_for, load_for
from musicgen_train.evaluation.prompts import PromptSet, prompt_set_for
from musicgen_train.evaluation.protocol import Protocol, protocol_for
from musicgen_train.evaluation.suite import MetricSuite
from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.model.families import is_melody

log = logging.getLogger(__name__)


def run(cfg: DictConfig, action: str | None = None) -> dict:
    """``musicgen-train evaluate`` (generate and score) or ``musicgen-train evaluate stats``."""
    if action is None:
        return evaluate(cfg)
    if action == "stats":
        return write_reference_statistics(cfg)
    raise UserError(f"unknown evaluate action {action!r}: use `evaluate` or `evaluate stats`")


def write_reference_statistics(cfg: DictConfig, path=None) -> dict:
    """Embed the reference (``eval.reference``) with every available embedder of
    ``eval.embedders`` and save the statistics as one ``.npz`` in fadtk's layout."""
    from musicgen_train.evaluation.frechet import save_statistics

    path = Path(path or cfg.eval.get("stats_output") or Path(cfg.work_dir) / "reference.npz")
    suite = MetricSuite(cfg, prompt_set_for(cfg))
    if suite.reference is None:
        raise UserError("; ".join(suite.skipped) or "no reference to compute statistics from")
    written = {}
    for embedder in suite.embedders:
        stats = suite.reference_statistics(embedder)
        save_statistics(path, embedder.name, stats)
        written[embedder.name] = {"frames": stats.count, **embedder.identity()}
    log.info(
        "reference statistics of %s -> %s (%s)",
        suite.reference.description,
        path,
        ", ".join(written) or "no embedder available",
    )
    return {"path": str(path), "statistics": written, "skipped": suite.skipped}


def with_training_data(cfg: DictConfig, source: str) -> DictConfig:
    """For a run's checkpoint, the data it trained on: its token cache holds the held-out split
    (reference, caption gain, held-out prompts), so nothing is encoded a second time."""
    from musicgen_train.sources.checkpoint import checkpoint_config

    trained = checkpoint_config(source)
    if trained is None or "data" not in trained:
        return cfg
    if not (Path(str(trained.data.output)) / "manifest.jsonl").is_file():
        return cfg  # its cache is gone (another machine?): prepare with this config's data
    if str(trained.data.output) != str(cfg.data.output):
        log.info(
            "evaluate: using the token cache %s that %s trained on", trained.data.output, source
        )
    cfg = cfg.copy()
    cfg.data = trained.data
    return cfg


def evaluate(cfg: DictConfig, model_source: str | None = None, output_dir=None) -> dict:
    """Generate, score and report; returns the content of ``eval_report.json`` + ``report_dir``."""
    from musicgen_train.evaluation.report import write_report
    from musicgen_train.sources import load_musicgen, load_options

    cfg = with_training_data(cfg, str(model_source or cfg.model.id))
    ecfg = cfg.eval
    sources = [("model", str(model_source or cfg.model.id))]
    if ecfg.get("compare_with"):
        sources.append(("compare", str(ecfg.compare_with)))
    out = Path(output_dir or ecfg.get("output_dir") or default_output_dir(cfg, sources[0][1]))
    out.mkdir(parents=True, exist_ok=True)
    prompt_set = prompt_set_for(cfg, ecfg.get("max_prompts"))
    params = generation_params(ecfg.generation)
    protocol = protocol_for(ecfg.get("protocol"))

    models, generations, suite = [], {}, None
    for label, source in sources:
        loaded = load_musicgen(source, **load_options(cfg))
        if suite is None:
            # Embedders and the reference are loaded BEFORE any clip is generated: a missing or
            # broken weights file, a mistyped reference is one line now, not after hours of
            # generation. eval.encodec.checkpoint=model scores with the first model's codec.
            suite = MetricSuite(
                cfg, prompt_set, codec=loaded.model.audio_encoder, codec_source=loaded.path
            )
        generation_warnings: list[str] = []
        conditioning = conditioning_for(ecfg, prompt_set, is_melody(loaded.model))
        log.info(
            "evaluate: generating %d prompt(s) x %d with %s",
            len(prompt_set.prompts),
            ecfg.samples_per_prompt,
            source,
        )
        generations[label] = generate_clips(
            loaded,
            prompt_set,
            params,
            out / "audio" / label,
            int(ecfg.samples_per_prompt),
            int(ecfg.generation.batch_size),
            conditioning,
            generation_warnings,
            protocol=protocol,
        )
        models.append(
            {
                "label": label,
                "source": source,
                "path": loaded.path,
                "sample_rate": loaded.sample_rate,
                "conditioning": conditioning.summary,
                "text_adherence": _text_adherence(cfg, loaded),
                "generation_warnings": generation_warnings,
            }
        )
        del loaded

    for model in models:
        adherence = model.pop("text_adherence")
        broken = model.pop("generation_warnings")
        model.update(suite.score(generations[model["label"]]))
        model["warnings"] = [*broken, *model["warnings"]]
        model["metrics"]["caption_gain"] = adherence
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "prompt_set": {
            "name": prompt_set.name,
            "path": str(prompt_set.path),
            "prompts": len(prompt_set.prompts),
        },
        "generation": {
            **OmegaConf.to_container(ecfg.generation),
            "samples_per_prompt": int(ecfg.samples_per_prompt),
            **models[0]["conditioning"],  # what the (first) model was conditioned on
        },
        "protocol": OmegaConf.to_container(ecfg.protocol) if ecfg.get("protocol") else None,
        "reference": suite.reference.summary() if suite.reference else None,
        "embedders": [e.identity() for e in suite.embedders],
        "models": models,
        "metrics": {k: v.get("value") for k, v in models[0]["metrics"].items()},
        "skipped": list(
            dict.fromkeys(
                [
                    *suite.skipped,
                    *(
                        e["skipped"]
                        for m in models
                        for e in m["metrics"].values()
                        if e.get("skipped")
                    ),
                ]
            )
        ),
        "cache": {"hits": suite.cache.hits, "misses": suite.cache.misses},
        "report_dir": str(out),
    }
    log.info("evaluation of %s: %s", sources[0][1], _summary(report["metrics"]))
    report["report"] = str(
        write_report(out, report, prompt_set, generations, int(ecfg.get("report_spectrograms", 4)))
    )
    log.info("evaluation report: %s", report["report"])
    return report


def _text_adherence(cfg: DictConfig, loaded) -> dict:
    from musicgen_train.evaluation.text_adherence import score_text_adherence

    manifest = Path(cfg.data.output) / "manifest.jsonl"
    wanted = cfg.eval.get("text_adherence", {}).get("enabled", True)
    if wanted and str(cfg.eval.reference) == "valid" and not manifest.exists():
        from musicgen_train.data.prepare import ensure_token_cache

        try:  # the valid reference prepares the cache anyway; text adherence reads it first
            ensure_token_cache(cfg)
        except UserError as err:
            log.warning("text adherence: the token cache could not be prepared: %s", err)
    entry = score_text_adherence(cfg, loaded)
    if entry.get("skipped"):
        log.warning(entry["skipped"])
    return entry


def default_output_dir(cfg: DictConfig, source: str) -> Path:
    """``<run>/eval/<checkpoint>`` for a checkpoint of a run, else ``${run_dir}/eval/<model>``."""
    path = Path(source).expanduser()
    run_dir = Path(cfg.run_dir)
    if path.suffix == ".ckpt" and path.parent.name == "checkpoints":
        run_dir = path.parent.parent  # next to the checkpoints, where export looks for it
    slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", path.stem if "/" in source else source)
    return run_dir / "eval" / slug.strip("_")


def generation_params(gen_cfg) -> GenerationParams:
    return GenerationParams(
        duration=float(gen_cfg.duration),
        guidance_scale=float(gen_cfg.guidance_scale),
        temperature=float(gen_cfg.temperature),
        top_k=int(gen_cfg.top_k),
        top_p=float(gen_cfg.get("top_p", 0.0)),
        seed=None if gen_cfg.get("seed") is None else int(gen_cfg.seed),
    )


def generate_clips(
    loaded,
    prompt_set: PromptSet,
    params: GenerationParams,
    folder: Path,
    samples_per_prompt: int = 1,
    batch_size: int = 4,
    conditioning: Conditioning | None = None,
    warnings: list[str] | None = None,
    *,
    protocol: Protocol | None = None,
) -> list[list[Clip]]:
    """Write each prompt's generations as wav files; ``clips[i]`` are those of prompt ``i``.

    With a ``protocol`` (``eval.protocol``: cut, loudness), what is returned (and scored) are
    the processed files under ``folder/protocol/``, processed from the model's float output
    before it is clipped to 16 bits, as audiocraft does.

    A generation holding NaN or infinite samples (a diverged model, an overflowing codec) is
    written as silence where it is not finite, with a line in ``warnings``: written as it is,
    a NaN would become full-scale samples in the 16-bit file and be scored as if it were music.
    Samples beyond [-1, 1] are clipped by the file format: also a line in ``warnings``.

    Prompt ``i`` of sample round ``s`` uses seed ``seed + 1000 * s + i`` whatever the batch size:
    every model sees the same seeds, so two models are compared on equal terms. Melodies
    (``conditioning``) go with their rows; a prompt with an audio prompt generates alone, with the
    same seed.
    """
    engine = GenerationEngine(loaded)
    prompts = prompt_set.prompts
    names = clip_file_names([p.id for p in prompts])
    clips: list[list[Clip]] = [[] for _ in prompts]
    for sample in range(samples_per_prompt):
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            seed = None if params.seed is None else params.seed + 1000 * sample + start
            if conditioning is not None and any(
                conditioning.any(start + i) for i in range(len(batch))
            ):
                audio = _conditioned(engine, batch, start, params, seed, conditioning)
            else:
                audio = engine.generate([p.text for p in batch], _with_seed(params, seed))
            for offset, (prompt, wave) in enumerate(zip(batch, audio, strict=True)):
                name = names[start + offset] + (f"-{sample}" if samples_per_prompt > 1 else "")
                wave = _checked_audio(wave, f"{name}.wav", warnings, protocol)
                path = write_audio(folder / f"{name}.wav", wave, engine.sample_rate)
                if protocol is not None:
                    wave = protocol.apply(wave, engine.sample_rate, prompt.reference)
                    path = write_audio(folder / "protocol" / path.name, wave, engine.sample_rate)
                clips[start + offset].append(Clip(path, name=prompt.id))
    return clips


def _conditioned(engine, batch, start: int, params, seed, conditioning) -> list:
    """Seeded as in a batch (prompt ``i``: ``seed + i``). Prompts with melodies only share one
    call (one melody per row); a prompt with an audio prompt generates alone (one prompt's
    codes per call), and its continuation is kept without the prompt."""
    channels = int(engine.model.config.decoder.audio_channels)
    wanted = int(round(params.duration * engine.sample_rate))

    def read(i: int, field: str):
        given = getattr(conditioning, field)[start + i]
        return None if given is None else load_for(given, engine.sample_rate, channels)

    prompted = [conditioning.audio_prompt[start + i] is not None for i in range(len(batch))]
    if not any(prompted):
        melodies = [read(i, "melody") for i in range(len(batch))]
        return list(
            engine.generate([p.text for p in batch], _with_seed(params, seed), melody=melodies)
        )
    out = []
    for i, prompt in enumerate(batch):
        audio = engine.generate(
            [prompt.text],
            _with_seed(params, None if seed is None else seed + i),
            melody=read(i, "melody"),
            audio_prompt=read(i, "audio_prompt"),
        )[0]
        out.append(audio[..., audio.shape[-1] - wanted :])  # the continuation
    return out


def _with_seed(params: GenerationParams, seed: int | None) -> GenerationParams:
    from dataclasses import replace

    return replace(params, seed=seed)


MAX_NAME = 80  # characters of a prompt id kept in a file name (file systems allow 255 bytes)


def clip_file_names(prompt_ids: list[str]) -> list[str]:
    """A distinct, short, portable file stem per prompt id: the id itself when it is one, else
    its ASCII slug plus a hash of the id, so ids that slug alike (``日本`` / ``中国``, ``a b`` /
    ``a_b``, ``A`` / ``a`` on a case-insensitive disk) never overwrite each other's audio."""
    slugs = [
        re.sub(r"[^A-Za-z0-9._-]+", "_", i).strip("_.")[:MAX_NAME] or "prompt" for i in prompt_ids
    ]
    folded = [s.casefold() for s in slugs]
    return [
        slug
        if slug == prompt_id and folded.count(slug.casefold()) == 1
        else f"{slug}-{hashlib.sha1(prompt_id.encode()).hexdigest()[:8]}"
        for prompt_id, slug in zip(prompt_ids, slugs, strict=True)
    ]


def _checked_audio(wave, name: str, warnings: list[str] | None, protocol=None):
    """``wave`` with NaN / infinite samples set to 0; a warning naming the clip for those and
    for samples beyond [-1, 1] (clipped when written; with a loudness protocol, what is scored
    is normalised from the unclipped output, then clipped)."""
    wave = np.asarray(wave, dtype=np.float32)
    bad = ~np.isfinite(wave)
    if bad.any():
        line = (
            f"generation {name}: {int(bad.sum())} of {wave.size} samples are NaN or infinite "
            "(the model's output is broken); written and scored as silence there"
        )
        log.warning(line)
        if warnings is not None:
            warnings.append(line)
        wave = np.where(bad, np.float32(0.0), wave)
    over = np.abs(wave) > 1.0
    if over.any():  # 16-bit PCM holds [-1, 1]: what is scored is the clipped audio
        normalised = protocol is not None and protocol.loudness_lufs is not None
        line = (
            f"generation {name}: {int(over.sum())} of {wave.size} samples beyond [-1, 1] (peak "
            f"{float(np.abs(wave).max()):.2f}) are clipped in the file, and "
            + (
                "scored loudness-normalised from the unclipped output, as audiocraft"
                if normalised
                else "scored clipped"
            )
        )
        log.warning(line)
        if warnings is not None:
            warnings.append(line)
    return wave


def _summary(metrics: dict) -> str:
    return ", ".join(f"{k}={'skipped' if v is None else f'{v:.4f}'}" for k, v in metrics.items())
