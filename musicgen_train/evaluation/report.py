"""Write ``eval_report.json`` and ``report.html`` (tables, PNG plots, audio players)."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np

from musicgen_train.evaluation.clips import Clip
from musicgen_train.evaluation.logmel import log_mel_spectrogram
from musicgen_train.evaluation.prompts import PromptSet


def write_report(
    out: Path,
    report: dict,
    prompt_set: PromptSet,
    generations: dict[str, list[list[Clip]]],
    spectrograms: int = 4,
) -> Path:
    """Write the JSON and the HTML report into ``out``; returns the HTML path."""
    out = Path(out)
    plots = write_plots(out, report, generations, spectrograms)
    report["plots"] = [str(p) for p in plots]  # what dashboards log as images
    # Strict JSON: a NaN or infinite number is written as null, never as the invalid `NaN`.
    text = json.dumps(_finite(report), indent=2, default=_jsonable, allow_nan=False)
    (out / "eval_report.json").write_text(text + "\n")
    path = out / "report.html"
    path.write_text(_html(out, report, plots), encoding="utf-8")
    return path


def write_plots(
    out: Path, report: dict, generations: dict[str, list[list[Clip]]], spectrograms: int = 4
) -> list[Path]:
    """The metric-per-prompt chart (when a metric has per-prompt values) and a spectrogram strip
    per model, as PNG files in ``out``; ``report`` needs only ``models`` with their scores."""
    Path(out).mkdir(parents=True, exist_ok=True)
    plots = [_metric_bar_chart(Path(out), report), *_spectrograms(out, generations, spectrograms)]
    return [p for p in plots if p is not None]


def _finite(value):
    """``value`` with every NaN or infinite float (numpy's included) replaced by None."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    return value


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# --- plots ---------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _per_prompt_metric(report: dict) -> str | None:
    """CLAP per prompt when scored, else the first FAD's per-song values."""
    keys = [k for k, v in report["models"][0]["metrics"].items() if v.get("value") is not None]
    per_prompt = [k for k in keys if k.startswith("fad_")]  # the metrics with per-prompt values
    return "clap_score" if "clap_score" in keys else next(iter(per_prompt), None)


def _metric_bar_chart(out: Path, report: dict) -> Path | None:
    metric = _per_prompt_metric(report)
    if metric is None:
        return None
    plt = _pyplot()
    ids = [row["id"] for row in report["models"][0]["per_prompt"]]
    width = 0.8 / len(report["models"])
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(ids) + 2), 3.5))
    for number, model in enumerate(report["models"]):
        values = [row.get(metric) for row in model["per_prompt"]]
        xs = np.arange(len(ids)) + number * width
        ax.bar(xs, [np.nan if v is None else v for v in values], width, label=model["source"])
    ax.set_xticks(np.arange(len(ids)) + width * (len(report["models"]) - 1) / 2)
    ax.set_xticklabels(ids, rotation=30, ha="right")
    ax.set_ylabel("CLAP score" if metric == "clap_score" else f"per-song {metric}")
    ax.set_title(f"{metric} per prompt")
    # The legend sits outside the axes (above the plot), never on the bars.
    ax.legend(
        fontsize="small",
        loc="lower left",
        bbox_to_anchor=(0.0, 1.08),
        ncol=max(1, len(report["models"])),
        frameon=False,
    )
    fig.tight_layout()
    path = out / f"{metric}_per_prompt.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")  # the legend above the axes is kept
    plt.close(fig)
    return path


def _spectrograms(out: Path, generations: dict[str, list[list[Clip]]], count: int) -> list[Path]:
    if count <= 0:
        return []
    plt = _pyplot()
    paths = []
    for label, clips in generations.items():
        chosen = [c for group in clips for c in group][:count]
        if not chosen:
            continue
        fig, axes = plt.subplots(1, len(chosen), figsize=(3.2 * len(chosen), 2.8), squeeze=False)
        for ax, clip in zip(axes[0], chosen, strict=True):
            audio, rate = clip.load()
            mel = log_mel_spectrogram(
                audio.mean(axis=0), rate, num_bins=64, fmin=30.0, fmax=min(16_000.0, rate / 2)
            )
            ax.imshow(
                mel.T,
                origin="lower",
                aspect="auto",
                cmap="magma",
                extent=(0, len(mel) / 100, 0, 64),
            )
            ax.set_title(clip.name, fontsize="small")
            ax.set_xlabel("s")
            ax.set_yticks([])
        fig.suptitle(f"log-mel spectrograms ({label})", fontsize="small")
        fig.tight_layout()
        path = out / f"spectrograms_{label}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


# --- HTML ----------------------------------------------------------------------------------------

STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f3f3f3}.skip{color:#a33}.note{color:#666}
audio{width:220px;height:32px}"""


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _metric_rows(report: dict) -> str:
    rows = []
    names = list(dict.fromkeys(k for m in report["models"] for k in m["metrics"]))
    header = "".join(f"<th>{html.escape(m['source'])}</th>" for m in report["models"])
    rows.append(f"<tr><th>metric</th>{header}<th>embedder / checkpoint / rate / window</th></tr>")
    for name in names:
        cells, about = [], ""
        for model in report["models"]:
            entry = model["metrics"].get(name, {})
            if entry.get("value") is None:
                # The reason is listed once under "Skipped", not repeated in every cell.
                cells.append("<td class=skip>skipped</td>")
                continue
            text = f"<b>{entry['value']:.4f}</b>"
            if "interval" in entry:
                low, high = entry["interval"]
                text += f" [{low:.4f}, {high:.4f}]"
            inf = entry.get("fad_inf", {})
            if "value" in inf:
                text += (
                    f"<br>FAD-inf {inf['value']:.4f} ({inf.get('sampling', 'without_replacement')}"
                    f", r² {inf['r2']:.3f}, {inf.get('points', '?')} points)"
                )
            if "ce_true" in entry:
                text += (
                    f"<br>ce {entry['ce_true']:.4f} · shuffled {entry['ce_shuffled']:.4f}"
                    f" · null {entry['ce_null']:.4f}"
                )
            cells.append(f"<td>{text}</td>")
            if "ce_true" in entry:
                about = (
                    f"cross-entropy of held-out codes, {entry.get('clips')} clips of the "
                    f"{html.escape(str(entry.get('reference')))}; no weights needed"
                )
                continue
            about = (
                f"{_fmt(entry.get('embedder'))} / {_fmt(entry.get('checkpoint'))} / "
                f"{_fmt(entry.get('sample_rate'))} Hz / {_fmt(entry.get('window'))}; "
                f"{entry.get('clips')} clips"
                + (
                    f" vs {entry['reference_clips']} reference clips"
                    if entry.get("reference_clips")
                    else ""
                )
                + (
                    ""
                    if entry.get("comparable_to_published")
                    else " — <b>not comparable to published numbers</b>"
                )
            )
        rows.append(f"<tr><td>{html.escape(name)}</td>{''.join(cells)}<td>{about}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _per_prompt_rows(out: Path, report: dict) -> str:
    metrics = list(
        dict.fromkeys(
            k
            for m in report["models"]
            for row in m["per_prompt"]
            for k in row
            if k not in ("id", "text", "audio")
        )
    )
    head = (
        "<tr><th>prompt</th><th>model</th>"
        + "".join(f"<th>{html.escape(k)}</th>" for k in metrics)
        + "<th>audio</th></tr>"
    )
    rows = [head]
    for index, first in enumerate(report["models"][0]["per_prompt"]):
        for number, model in enumerate(report["models"]):
            row = model["per_prompt"][index]
            players = "".join(
                f'<audio controls preload="none" src="{html.escape(_relative(out, a))}"></audio>'
                for a in row["audio"]
            )
            prompt = (
                (
                    f"<td rowspan={len(report['models'])}><b>{html.escape(first['id'])}</b><br>"
                    f"{html.escape(first['text'])}</td>"
                )
                if number == 0
                else ""
            )
            values = "".join(f"<td>{_fmt(row.get(k))}</td>" for k in metrics)
            rows.append(
                f"<tr>{prompt}<td>{html.escape(model['label'])}</td>{values}<td>{players}</td></tr>"
            )
    return "<table>" + "".join(rows) + "</table>"


def _relative(out: Path, path: str) -> str:
    return Path(os.path.relpath(path, out)).as_posix()


def _warnings(report: dict) -> str:
    items = [
        f"<li>{html.escape(model['label'])}: {html.escape(line)}</li>"
        for model in report["models"]
        for line in model.get("warnings", [])
    ]
    return f"<h3>Warnings</h3><ul>{''.join(items)}</ul>" if items else ""


def _outliers(report: dict) -> str:
    parts = []
    for model in report["models"]:
        for metric, rows in model.get("outliers", {}).items():
            if not rows:
                continue
            cells = "".join(
                f"<tr><td>{html.escape(r['prompt'])}</td><td>{_fmt(r['per_song_fad'])}</td>"
                f'<td><audio controls preload="none" src="{html.escape(_relative_or(r))}">'
                "</audio></td></tr>"
                for r in rows
            )
            parts.append(
                f"<h3>{html.escape(model['label'])}: {html.escape(metric)}</h3><table>"
                f"<tr><th>prompt</th><th>per-song FAD</th><th>audio</th></tr>{cells}</table>"
            )
    if not parts:
        return ""
    return (
        "<h2>Clips farthest from the reference</h2><p class=note>Largest per-song FAD first: "
        "listen to these first when a score moves.</p>" + "".join(parts)
    )


def _relative_or(row: dict) -> str:
    return row.get("relative", row["clip"])


def _html(out: Path, report: dict, plots: list[Path]) -> str:
    reference = report.get("reference") or {}
    for model in report["models"]:
        for rows in model.get("outliers", {}).values():
            for row in rows:
                row["relative"] = _relative(out, row["clip"])
    skipped = "".join(
        f"<li class=skip>{html.escape(line)}</li>" for line in dict.fromkeys(report["skipped"])
    )
    images = "".join(
        f'<p><img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}"></p>' for p in plots
    )
    generation = ", ".join(f"{k}={v}" for k, v in report["generation"].items())
    protocol = ", ".join(f"{k}={v}" for k, v in (report.get("protocol") or {}).items())
    # Reference clips that could not be used: a smaller reference than the folder suggests.
    left_out = "".join(
        f"<li class=skip>{html.escape(note)}</li>" for note in reference.get("notes") or []
    )
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>musicgen-train evaluation: {html.escape(report["prompt_set"]["name"])}</title>
<style>{STYLE}</style></head><body>
<h1>Evaluation on prompt set “{html.escape(report["prompt_set"]["name"])}”</h1>
<p class=note>{html.escape(report["created"])} · {report["prompt_set"]["prompts"]} prompts ·
generation: {html.escape(generation)}{
        "<br>protocol: " + html.escape(protocol) if protocol else ""
    }</p>
<p>Reference: {html.escape(str(reference.get("description", "none")))}
({reference.get("clips", 0)} clips{
        ", " + str(reference.get("seconds")) + " s" if reference.get("seconds") else ""
    }{_used(reference)})</p>
{f"<h3>Reference clips left out</h3><ul>{left_out}</ul>" if left_out else ""}
<h2>Metrics</h2>
<p class=note>Value [{int(100 * _confidence(report))}% bootstrap spread over clips: how much
the score moves between sets of this size, not a confidence interval for the true distance].
FAD, KAD: lower is closer to the reference. CLAP score: higher follows the text better.
Caption gain (cross-entropy with shuffled captions minus with the true ones): above 0 when the
model uses its text.</p>
{_metric_rows(report)}
{_warnings(report)}
{f"<h3>Skipped</h3><ul>{skipped}</ul>" if skipped else ""}
{_outliers(report)}
<h2>Plots</h2>{images or "<p class=note>no metric to plot</p>"}
<h2>Per prompt</h2>{_per_prompt_rows(out, report)}
</body></html>
"""


def _used(reference: dict) -> str:
    """``, used: vggish 3`` when an embedder could use fewer reference clips than listed."""
    short = {
        k: v for k, v in (reference.get("clips_used") or {}).items() if v != reference["clips"]
    }
    return ", used: " + ", ".join(f"{k} {v}" for k, v in short.items()) if short else ""


def _confidence(report: dict) -> float:
    for model in report["models"]:
        for entry in model["metrics"].values():
            if "confidence" in entry:
                return entry["confidence"]
    return 0.95
