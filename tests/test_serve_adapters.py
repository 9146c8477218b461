"""Many fine-tunes on one base: LoRA exports kept apart (``export.merge_lora=false``) served as
peft adapters on one copy of the base model (``serve.models[].base``)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch
from fastapi.testclient import TestClient
from serve_helpers import make_settings, one_torch_thread, wait_for  # noqa: F401

from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.model.lora import apply_lora
from musicgen_train.model.lora_targets import ADAPTER_DIR
from musicgen_train.serve.adapters import AdapterEngine, load_engines
from musicgen_train.serve.app import create_app
from musicgen_train.serve.continuous import JobSpec, Scheduler, collect
from musicgen_train.serve.settings import ModelSpec, StreamSettings
from musicgen_train.sources import load_musicgen
from musicgen_train.sources.checkpoint import _save_adapter_apart
from musicgen_train.sources.model_folder import save_model_folder

STREAM = StreamSettings(chunk_seconds=0.1, context_seconds=0.5, lookahead_frames=3)


def export_with_adapter(base_dir, folder, seed: int):
    """What training + `export.merge_lora=false` writes: the base's weights plus adapter/."""
    loaded = load_musicgen(str(base_dir))
    model = apply_lora(loaded.model, r=4, alpha=8, dropout=0.0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a trained adapter: lora_B is no longer zero
        for name, param in model.decoder.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    assert _save_adapter_apart(model, folder / ADAPTER_DIR)
    save_model_folder(folder, model, loaded.processor)
    return folder


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: export_with_adapter(tiny_model_dir, root / name, seed)
        for name, seed in (("jazz", 1), ("lofi", 2))
    }


@pytest.fixture(scope="module")
def specs(tiny_model_dir, exports):
    return [
        ModelSpec(name="tiny", source=str(tiny_model_dir), max_duration=2.0),
        *(
            ModelSpec(name=name, source=str(folder), max_duration=2.0, base="tiny")
            for name, folder in exports.items()
        ),
    ]


@pytest.fixture(scope="module")
def engines(specs, one_torch_thread):  # noqa: F811
    return load_engines(specs, "cpu", "fp32", 1)


def merged(folder) -> GenerationEngine:
    """The export loaded the usual way: its own copy, adapter merged into the weights."""
    return GenerationEngine(load_musicgen(str(folder)), precision="fp32")


def job(job_id: str, model: str, prompt: str, seed: int, duration: float) -> JobSpec:
    params = {"duration": duration, "guidance_scale": 3.0, "temperature": 1.0, "top_k": 250}
    return JobSpec(job_id, model, prompt, {**params, "top_p": 0.0, "seed": seed}, "wav", False)


def test_adapters_share_one_copy_of_the_base(engines, exports):
    base = engines["tiny"]
    assert all(isinstance(engine, AdapterEngine) for engine in engines.values())
    assert engines["jazz"].model is base.model and engines["lofi"].model is base.model
    assert engines["jazz"].decoder is base.decoder  # no converted copy at fp32
    params = dict(base.model.named_parameters())
    lora = sum(p.numel() for n, p in params.items() if "lora_" in n)
    plain = sum(p.numel() for n, p in params.items() if "lora_" not in n)
    one_model = sum(p.numel() for p in merged(exports["jazz"]).model.parameters())
    assert plain == one_model  # the base once ...
    per_adapter = {
        name: sum(p.numel() for n, p in params.items() if "lora_" in n and f".{name}." in n)
        for name in exports
    }
    assert lora == sum(per_adapter.values()) and all(per_adapter.values())  # ... plus N adapters
    assert lora < 0.2 * plain


def test_rows_of_different_adapters_and_the_base_run_together(engines, exports, tiny_model_dir):
    events, emit = collect()
    scheduler = Scheduler(engines, STREAM, emit, max_rows=8)
    jobs = [
        job("base-1", "tiny", "calm piano", 3, 0.3),
        job("jazz-1", "jazz", "calm piano", 3, 0.3),
        job("lofi-1", "lofi", "calm piano", 3, 0.25),
        job("jazz-2", "jazz", "drums", 4, 0.2),
    ]
    for spec in jobs:
        assert scheduler.add(spec)
    scheduler.step()
    assert {model: len(loop.rows) for model, loop in scheduler.loops.items()} == {
        "tiny": 1,
        "jazz": 2,
        "lofi": 1,
    }
    done = {}
    for _ in range(1000):
        scheduler.step()
        done.update({e[1]: e[2] for e in events if e[0] == "job_done"})
        events.clear()
        if len(done) == len(jobs):
            break
    assert set(done) == {spec.id for spec in jobs}
    references = {
        "tiny": GenerationEngine(load_musicgen(str(tiny_model_dir)), precision="fp32"),
        **{name: merged(folder) for name, folder in exports.items()},
    }
    audio = {}
    for spec in jobs:
        samples, _ = sf.read(io.BytesIO(done[spec.id].data), dtype="float32")
        audio[spec.id] = samples
        params = GenerationParams(**spec.params)
        expected = references[spec.model].generate([spec.prompt], params)[0, 0]
        expected = np.round(np.clip(expected, -1, 1) * 32767) / 32767
        # the adapter applied on the shared base = the export merged into its own copy
        np.testing.assert_allclose(samples, expected, atol=1.5 / 32767)
    assert len(audio) == len(jobs)


def tokens_alone(engine, prompt: str, params: GenerationParams) -> torch.Tensor:
    loop = engine.new_loop()
    row = engine.add(loop, prompt, params)
    while loop.rows:
        loop.step()
    return row.tokens


def test_interleaved_adapter_steps_give_each_fine_tunes_own_tokens(
    engines, exports, tiny_model_dir
):
    # The tiny random codec hardly tells tokens apart in audio: compare the sampled tokens.
    params = GenerationParams(duration=0.4, seed=5)
    loops = {name: engines[name].new_loop() for name in ("tiny", "jazz", "lofi")}
    rows = {name: engines[name].add(loop, "calm piano", params) for name, loop in loops.items()}
    while any(loop.rows for loop in loops.values()):
        for loop in loops.values():  # the scheduler's turns: one step of each adapter's loop
            if loop.rows:
                loop.step()
    references = {
        "tiny": GenerationEngine(load_musicgen(str(tiny_model_dir)), precision="fp32"),
        **{name: merged(folder) for name, folder in exports.items()},
    }
    for name, row in rows.items():
        expected = tokens_alone(references[name], "calm piano", params)
        assert torch.equal(row.tokens, expected), name  # = the export merged, run alone
    differing = (rows["tiny"].tokens != rows["jazz"].tokens).sum().item()
    assert differing > 5  # the fine-tune changes what is sampled
    assert (rows["jazz"].tokens != rows["lofi"].tokens).sum().item() > 5


def test_models_lists_base_and_adapters_and_a_request_picks_one(
    tmp_path, tiny_model_dir, specs, engines
):
    settings = make_settings(tmp_path, tiny_model_dir, models=[spec.model_dump() for spec in specs])
    with TestClient(create_app(settings, engines)) as client:
        listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert listed["tiny"]["base"] is None
        assert listed["jazz"]["base"] == "tiny" and listed["lofi"]["base"] == "tiny"
        body = {"prompt": "a", "duration": 0.2, "model": "lofi", "seed": 1}
        created = client.post("/v1/generations", json=body).json()
        assert created["model"] == "lofi"
        assert wait_for(client, created["id"])["status"] == "succeeded"


def test_an_adapter_without_its_base_is_one_clear_error(tiny_model_dir, exports):
    from musicgen_train.errors import ConfigError

    lone = [ModelSpec(name="jazz", source=str(exports["jazz"]), base="nowhere")]
    with pytest.raises(ConfigError, match="base='nowhere', which is not a served model"):
        load_engines(lone, "cpu", "fp32", 1)
    no_adapter = [
        ModelSpec(name="tiny", source=str(tiny_model_dir)),
        ModelSpec(name="plain", source=str(tiny_model_dir), base="tiny"),
    ]
    with pytest.raises(ConfigError, match="holds no LoRA adapter"):
        load_engines(no_adapter, "cpu", "fp32", 1)


def test_a_melody_models_adapters_are_on_while_it_generates(tmp_path):
    """A melody base's adapters: each engine's rows (the condition prefix's prefill included)
    run with its own adapter on (the base: all off)."""
    from musicgen_train.model.tiny_families import ensure_tiny_family

    base_dir = ensure_tiny_family("tiny-melody")
    folders = {
        name: export_with_adapter(base_dir, tmp_path / name, seed)
        for name, seed in (("jazz", 1), ("lofi", 2))
    }
    specs = [
        ModelSpec(name="melody", source=str(base_dir), max_duration=2.0),
        *(
            ModelSpec(name=n, source=str(f), max_duration=2.0, base="melody")
            for n, f in folders.items()
        ),
    ]
    engines = load_engines(specs, "cpu", "fp32", 1)
    lora_layer = next(
        m for m in engines["jazz"].peft_model.modules() if hasattr(m, "lora_A") and m.lora_A
    )
    seen = []
    hook = lora_layer.register_forward_hook(
        lambda module, inputs, output: seen.append(
            None if module.disable_adapters else tuple(module.active_adapters)
        )
    )
    params = GenerationParams(duration=0.1, seed=1)
    try:
        for name in ("lofi", "melody", "jazz"):
            seen.clear()
            engines[name].generate(["a hum"], params)
            expected = None if name == "melody" else (name,)
            assert seen and set(seen) == {expected}, (name, set(seen))
    finally:
        hook.remove()
