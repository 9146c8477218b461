"""The model card (README.md of an exported model): what it is, what it learnt from, how it scored.

Hugging Face reads the YAML block at the top (library, pipeline, base model); people read the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml

ADAPTER_APART = "adapter kept apart"  # export_info["lora"] of an export.merge_lora=false export

# The parts of the training config a reader needs to reproduce the run.
TRAINING_SECTIONS = ("seed", "model", "finetune", "optim", "trainer", "strategy", "data")

LIMITS = """\
- The model continues the style of its fine-tuning data; it knows nothing that data and the base
  model did not show it. Check the training data's licence before publishing what it generates.
- MusicGen generates at most about 30 s per call, mono or stereo at 32 kHz; vocals are not
  intelligible; prompts in languages other than English work poorly.
- Metrics below were measured on the prompt set and reference audio named with them, with the
  embedders named with them; they are not comparable with numbers computed differently.
- Not intended for generating audio that imitates a living artist's identifiable work."""


def flatten(mapping: Mapping, prefix: str = "") -> dict[str, object]:
    """Nested dicts -> ``{"a.b": value}`` for the scalar leaves (lists are left out)."""
    flat: dict[str, object] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, str | int | float | bool) or value is None:
            flat[name] = value
    return flat


def _table(rows: Mapping[str, object], header=("", "")) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in rows.items()]
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|")


# Meta released every MusicGen checkpoint's weights under CC-BY-NC 4.0 (their model cards); a
# fine-tune is a derivative of those weights and carries the same terms.
META_MUSICGEN = ("facebook/musicgen", "cc-by-nc-4.0", "CC-BY-NC 4.0 (non-commercial use only)")
TINY_BASES = ("tiny", "tiny-stereo", "tiny-melody")


def base_license(base_model: str) -> str | None:
    """The Hub license id of the base model's weights, when known."""
    return META_MUSICGEN[1] if base_model.lower().startswith(META_MUSICGEN[0]) else None


def _license_section(base_model: str) -> str:
    if base_license(base_model):
        return (
            f"The weights derive from `{base_model}`, which Meta released under "
            f"{META_MUSICGEN[2]}; this fine-tune is a derivative and is under the same license. "
            "The license of the training data applies to it too."
        )
    if base_model in TINY_BASES:
        return (
            f"`{base_model}` is a random-weight model built by musicgen-train for tests: no base "
            "model license applies; the license of the training data does."
        )
    return (
        f"The license of the base model `{base_model}` applies to these weights, and the license "
        "of the training data to what they learnt: check both before publishing the model or "
        "using it commercially."
    )


def _front_matter(name: str, base_model: str) -> str:
    meta = {
        "library_name": "transformers",
        "pipeline_tag": "text-to-audio",
        "tags": ["musicgen", "text-to-audio", "musicgen-train"],
    }
    if base_license(base_model):
        meta["license"] = base_license(base_model)
    if "/" in base_model and not Path(base_model).exists():  # a hub id, not a local path
        meta["base_model"] = base_model
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _usage(name: str, adapter: bool, architecture: str) -> str:
    """How to load the folder with transformers alone, with the model's own class: a melody
    model loaded as ``MusicgenForConditionalGeneration`` gets fresh random weights."""
    melody = "Melody" in architecture
    loader = "AutoTokenizer" if melody else "AutoProcessor"
    code = [
        f"from transformers import {loader}, {architecture}",
        "",
        f'model = {architecture}.from_pretrained("{name}")',
    ]
    if melody:  # its processor (chroma of a melody) needs torchaudio; text needs the tokenizer
        code.append(f'tokenizer = AutoTokenizer.from_pretrained("{name}")')
    else:
        code.append(f'processor = AutoProcessor.from_pretrained("{name}")')
    if adapter:
        code += [
            "# this export keeps its LoRA adapter apart: apply it with peft",
            "from peft import PeftModel",
            f'model.decoder = PeftModel.from_pretrained(model.decoder, "{name}/adapter")',
        ]
    call = 'tokenizer(["warm lo-fi piano"]' if melody else 'processor(text=["warm lo-fi piano"]'
    code += [
        f'inputs = {call}, padding=True, return_tensors="pt")',
        "audio = model.generate(**inputs)  # defaults: generation_config.json",
        "sample_rate = model.config.audio_encoder.sampling_rate",
    ]
    return "```python\n" + "\n".join(code) + "\n```"


def _data_section(report: Mapping | None) -> str:
    if not report:
        return "No prepare report was found next to the token cache, so the data is not described."
    totals = report.get("totals", {})
    rows = {
        "source": report.get("source"),
        "files used": report.get("files_ok"),
        "files skipped": report.get("files_skipped"),
        "hours of audio": totals.get("hours"),
        "segments": totals.get("segments"),
        "tokens": totals.get("tokens"),
    }
    for split, counts in (report.get("splits") or {}).items():
        rows[f"{split} split"] = ", ".join(f"{v} {k}" for k, v in counts.items())
    return _table({k: v for k, v in rows.items() if v is not None}, ("data", "value"))


def report_metrics(report: Mapping | None) -> dict[str, float]:
    """The numeric metrics of an evaluation report (``metrics``: name -> value or None)."""
    metrics = (report or {}).get("metrics") or {}
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _evaluation_section(report: Mapping | None) -> str:
    if not report:
        return "This model was exported without an evaluation report."
    metrics = {k: v if v is not None else "skipped" for k, v in report.get("metrics", {}).items()}
    parts = [_table(metrics, ("metric", "value"))]  # blocks, separated by blank lines
    embedders = report.get("embedders") or []
    if embedders:
        items = [
            "- " + ", ".join(f"{k}: {v}" for k, v in flatten(e).items() if v is not None)
            for e in embedders
        ]
        parts.append("Embedders (FAD is computed on these embeddings):\n\n" + "\n".join(items))
    prompt_set = report.get("prompt_set") or {}
    if prompt_set:
        parts.append(f"Prompt set: {prompt_set.get('name')} ({prompt_set.get('prompts')} prompts).")
    reference = report.get("reference") or {}
    if reference.get("description"):
        parts.append(f"Reference audio: {reference['description']}.")
    generation = report.get("generation") or {}
    if generation:
        settings = ", ".join(f"{k}={v}" for k, v in flatten(generation).items())
        parts.append(f"Generation: {settings}.")
    if report.get("created"):
        parts.append(f"Evaluated {report['created']}.")
    return "\n\n".join(parts)


def render_model_card(
    *,
    name: str,
    base_model: str,
    train_cfg: Mapping,
    prepare_report: Mapping | None,
    eval_report: Mapping | None,
    export_info: Mapping,
    architecture: str = "MusicgenForConditionalGeneration",
    hub_repo: str | None = None,
) -> str:
    """The whole README.md of an exported model folder (``architecture``: the model's class).
    Its snippet loads ``hub_repo`` when the folder is pushed there, else the folder by name."""
    training = {k: train_cfg[k] for k in TRAINING_SECTIONS if k in train_cfg}
    adapter = export_info.get("lora") == ADAPTER_APART
    parts = [
        _front_matter(name, base_model),
        f"# {name}\n",
        f"MusicGen fine-tuned with musicgen-train from **{base_model}**. The folder is a plain "
        "Hugging Face transformers model: loading it needs no musicgen-train code.\n",
        "## How to use\n",
        _usage(hub_repo or name, adapter, architecture) + "\n",
        "Every file's sha256 is listed in `checksums.json`; musicgen-train refuses a folder "
        "whose files do not match it.\n",
        "## Base model\n",
        f"`{base_model}`\n",
        "## Training data\n",
        _data_section(prepare_report) + "\n",
        "## Training\n",
        "```yaml\n" + yaml.safe_dump(training, sort_keys=False) + "```\n",
        "## Evaluation\n",
        _evaluation_section(eval_report) + "\n",
        "## Export\n",
        _table(flatten(export_info), ("setting", "value")) + "\n",
        "## License\n",
        _license_section(base_model) + "\n",
        "## Intended use and limits\n",
        "Text-to-music generation in the style of the fine-tuning data, for research, "
        "prototyping and creative work.\n",
        LIMITS + "\n",
    ]
    return "\n".join(parts)
