"""The MLflow registry: versions, aliases, downloads, pyfunc, commands, rollback, bad input.

A tiny model folder is registered directly here; tests/test_export.py goes through training.
"""

import os

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from musicgen_train.cli import main
from musicgen_train.config import load_config
from musicgen_train.errors import ConfigError, UserError
from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.registry.hub import push_to_hub
from musicgen_train.registry.pyfunc import prompts_from, pyfunc_flavor
from musicgen_train.sources import load_musicgen, load_options
from musicgen_train.sources.checkpoint import DEFAULT_GENERATION
from musicgen_train.sources.checksums import ChecksumError
from musicgen_train.sources.model_folder import (
    atomic_folder,
    save_model_folder,
    set_generation_defaults,
)
from musicgen_train.sources.registry_store import COMPLETE_TAG, Registry, RegistryError
from musicgen_train.sources.registry_uri import download_registry_model, parse_registry_uri

PARAMS = GenerationParams(duration=0.3, seed=7, top_k=20)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("export") / "tiny-export"
    tiny = load_musicgen(str(tiny_model_dir))  # its own copy: the defaults below change it
    with atomic_folder(folder) as work:
        set_generation_defaults(tiny.model, {**DEFAULT_GENERATION, "guidance_scale": 2.5})
        save_model_folder(work, tiny.model, tiny.processor, readme="# tiny\n")
    return folder


@pytest.fixture(scope="module")
def registry(tmp_path_factory, model_folder):
    """A local SQLite registry holding versions 1 (alias staging) and 2 of ``tiny-test``."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    store = Registry(uri)
    for alias, fad in (("staging", 1.5), (None, 1.25)):
        store.register(
            model_folder,
            "tiny-test",
            alias=alias,
            tags={"base_model": "tiny", "metric.fad_vggish": str(fad)},
            metrics={"fad_vggish": fad},
            params={"finetune.name": "full"},
            **pyfunc_flavor({**DEFAULT_GENERATION, "guidance_scale": 2.5}),
            requirements=["musicgen-train"],
        )
    return store


def _cli(registry, *args):
    return main(["registry", *args, f"registry.uri={registry.uri}"])


def _versions(store: Registry, name: str) -> list[int]:
    if not store._exists(name):
        return []
    return [int(v.version) for v in store.versions(name)]


def test_versions_aliases_and_tags(registry):
    assert _versions(registry, "tiny-test") == [1, 2]
    staging = registry.resolve(parse_registry_uri("models:/tiny-test@staging"))
    latest = registry.resolve(parse_registry_uri("models:/tiny-test/latest"))
    assert (staging.version, latest.version) in ((1, 2), ("1", "2"))
    assert staging.tags["metric.fad_vggish"] == "1.5"
    assert staging.tags["base_model"] == "tiny"
    assert staging.tags[COMPLETE_TAG] == "complete"
    runs = registry.client.search_runs([registry._experiment_id()])
    assert {r.data.metrics["fad_vggish"] for r in runs} >= {1.5, 1.25}


def test_download_by_alias_gives_the_same_model(registry, model_folder, tiny_loaded):
    folder = download_registry_model("models:/tiny-test@staging", registry.uri)
    assert (folder / "model.safetensors").read_bytes() == (
        model_folder / "model.safetensors"
    ).read_bytes()
    loaded = load_musicgen(str(folder))
    assert loaded.model.generation_config.guidance_scale == 2.5
    ours = GenerationEngine(loaded).generate(["calm piano"], PARAMS)
    reference = GenerationEngine(tiny_loaded).generate(["calm piano"], PARAMS)
    assert ours.shape == (1, 1, 9600)
    np.testing.assert_array_equal(ours, reference)
    assert download_registry_model("models:/tiny-test/1", registry.uri) == folder  # cached


def test_damaged_download_is_refused(registry):
    folder = download_registry_model("models:/tiny-test/2", registry.uri)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ChecksumError, match="truncated"):
        download_registry_model("models:/tiny-test/2", registry.uri)
    weights.write_bytes(data)


def test_pyfunc_generates_the_same_audio_as_the_engine(registry, tiny_loaded, monkeypatch):
    # How a user points MLflow at the registry (environment, not the process-wide setter).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", registry.uri)
    pyfunc = mlflow.pyfunc.load_model("models:/tiny-test@staging")
    params = {"duration": 0.3, "seed": 7, "top_k": 20}
    frame = pyfunc.predict(pd.DataFrame({"prompt": ["calm piano", "fast drums"]}), params=params)
    assert list(frame.columns) == ["prompt", "audio", "sample_rate"]
    assert list(frame.prompt) == ["calm piano", "fast drums"]
    assert set(frame.sample_rate) == {32000}
    # Registered with no generation.precision in sight: the pyfunc runs at auto (int8 on CPU).
    assert pyfunc.unwrap_python_model().engine.precision == "int8"
    reference = GenerationEngine(tiny_loaded, precision="int8").generate(
        ["calm piano", "fast drums"], GenerationParams(duration=0.3, seed=7, top_k=20)
    )
    # Same seed -> same sampled codes; EnCodec's decoding of a batch may differ in the last
    # float bits between two model instances, while other codes would differ by ~0.1.
    np.testing.assert_allclose(np.stack(frame.audio), reference, atol=1e-4)
    from_dict = pyfunc.predict({"prompt": ["calm piano", "fast drums"]}, params=params)
    np.testing.assert_allclose(np.stack(from_dict.audio), reference, atol=1e-4)


def test_prompts_from_accepts_frames_dicts_lists_and_strings():
    assert prompts_from("a") == ["a"]
    assert prompts_from(["a", "b"]) == ["a", "b"]
    assert prompts_from({"prompt": "a"}) == ["a"]
    assert prompts_from(pd.DataFrame({"prompt": [["a", "b"]]})) == ["a", "b"]
    with pytest.raises(ValueError, match="'prompt' column"):
        prompts_from(pd.DataFrame({"text": ["a"]}))


def test_registry_commands(registry, tmp_path, capsys):
    assert _cli(registry, "list") == 0
    out = capsys.readouterr().out
    assert "models:/tiny-test/1" in out and "models:/tiny-test/2" in out
    assert "fad_vggish=1.5" in out and "staging" in out

    assert _cli(registry, "show", "registry.name=tiny-test", "registry.alias=staging") == 0
    assert "version: 1" in capsys.readouterr().out

    args = ["registry.name=tiny-test", "registry.from_alias=staging", "registry.alias=production"]
    assert _cli(registry, "promote", *args) == 0
    assert "models:/tiny-test@production -> version 1" in capsys.readouterr().out
    args = ["registry.name=tiny-test", "registry.version=2", "registry.alias=production"]
    assert _cli(registry, "promote", *args) == 0
    assert "-> version 2 (was version 1)" in capsys.readouterr().out
    assert registry.model("tiny-test").aliases == {"staging": 1, "production": 2}

    output = tmp_path / "downloaded"
    args = ["registry.name=tiny-test", "registry.alias=production", f"registry.output={output}"]
    assert _cli(registry, "download", *args) == 0
    assert (output / "checksums.json").exists()
    load_musicgen(str(output))  # verified and loadable
    assert _cli(registry, "download", *args) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "registry.name=nope"], "no registered model 'nope'"),
        (["show", "registry.name=tiny-test", "registry.alias=gone"], "has no alias 'gone'"),
        (["show", "registry.name=tiny-test", "registry.version=9"], "has no version 9"),
        (["promote", "registry.name=tiny-test", "registry.version=1"], "needs the alias"),
        # Both named: the version won silently; which one the user meant is not ours to guess.
        (
            [
                "promote",
                "registry.name=tiny-test",
                "registry.alias=prod",
                "registry.version=1",
                "registry.from_alias=staging",
            ],
            "registry.from_alias=A, not both",
        ),
        (["promote", "registry.name=tiny-test", "registry.alias=prod"], "needs one version"),
        (["download", "registry.name=tiny-test"], "registry.output=DIR"),
        (["frobnicate"], "one action of"),
    ],
)
def test_bad_registry_requests_fail_with_one_line(registry, capsys, args, message):
    assert _cli(registry, *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_unreachable_registry_fails_with_one_line(capsys):
    assert main(["registry", "list", "registry.uri=http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot reach the MLflow registry at http://127.0.0.1:9" in err and "\n" not in err


def test_bad_uris_and_config_values_are_named():
    with pytest.raises(UserError, match="not a registry URI"):
        parse_registry_uri("models:/only-a-name")
    with pytest.raises(ConfigError, match="registry.alias='latest'"):
        load_config(["registry.alias=latest"])
    with pytest.raises(ConfigError, match="registry.name='a/b'"):
        load_config(["registry.name=a/b"])
    with pytest.raises(ConfigError, match="registry.version=0"):
        load_config(["registry.version=0"])


def test_loader_finds_the_registry_of_the_composed_config(registry, monkeypatch):
    cfg = load_config([f"registry.uri={registry.uri}"])
    assert load_options(cfg)["registry_uri"] == registry.uri
    loaded = load_musicgen("models:/tiny-test@staging", **load_options(cfg))
    assert loaded.source == "models:/tiny-test@staging"
    assert "tiny-test-v1-" in loaded.path


@pytest.mark.parametrize("fail_at", ["save_model", "create_model_version", "set_alias", "tag"])
def test_failed_registration_leaves_nothing_registered(
    registry, model_folder, monkeypatch, fail_at
):
    def boom(*args, **kwargs):
        raise RuntimeError(f"injected failure at {fail_at}")

    targets = {
        "save_model": (mlflow.pyfunc, "save_model"),
        "create_model_version": (MlflowClient, "create_model_version"),
        "set_alias": (MlflowClient, "set_registered_model_alias"),
        "tag": (MlflowClient, "set_model_version_tag"),
    }
    monkeypatch.setattr(*targets[fail_at], boom)
    experiment = registry._experiment_id()
    runs_before = len(registry.client.search_runs([experiment]))
    for name in ("tiny-test", "brand-new"):  # an existing model and one this call would create
        with pytest.raises(RuntimeError, match="injected"):
            registry.register(
                model_folder,
                name,
                alias="candidate",
                **pyfunc_flavor(DEFAULT_GENERATION),
                requirements=["musicgen-train"],
            )
    assert _versions(registry, "tiny-test") == [1, 2]
    assert "candidate" not in registry.model("tiny-test").aliases
    assert not registry._exists("brand-new")
    assert len(registry.client.search_runs([experiment])) == runs_before  # failed runs deleted


def test_version_without_the_complete_tag_is_refused(registry):
    """A version left by a hard kill mid-registration (before the last step) is not used."""
    source = registry.client.get_model_version("tiny-test", "1").source
    registry.client.create_model_version("tiny-test", source=source)
    number = max(_versions(registry, "tiny-test"))
    try:
        with pytest.raises(RegistryError, match="did not finish"):
            registry.resolve(parse_registry_uri(f"models:/tiny-test/{number}"))
    finally:
        registry.client.delete_model_version("tiny-test", str(number))


def test_hub_push_without_network_fails_with_one_line(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        push_to_hub(tmp_path, "someone/musicgen-test")
    assert "someone/musicgen-test" in str(info.value) and "\n" not in str(info.value)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(UserError, match="needs a Hugging Face token"):
        push_to_hub(tmp_path, "someone/musicgen-test")
    assert os.listdir(tmp_path) == ["config.json"]


def test_model_card_states_data_metrics_and_embedders():
    from musicgen_train.registry.model_card import render_model_card, report_metrics

    eval_report = {
        "metrics": {"fad_vggish": 4.25, "clap_score": None},
        "embedders": [{"embedder": "vggish", "checkpoint": "vggish.pt", "sample_rate": 16000}],
        "prompt_set": {"name": "musiccaps-mini", "prompts": 32},
        "report_dir": "/runs/x/eval",
    }
    prepare_report = {
        "source": "/music/jazz",
        "files_ok": 120,
        "files_skipped": 3,
        "totals": {"hours": 2.5, "segments": 900, "tokens": 1800000},
        "splits": {"train": {"files": 108, "segments": 810}},
    }
    card = render_model_card(
        name="jazz",
        base_model="facebook/musicgen-small",
        train_cfg={"seed": 1, "finetune": {"name": "lora"}, "secret_section": {"x": 1}},
        prepare_report=prepare_report,
        eval_report=eval_report,
        export_info={"lora": "adapter kept apart"},
    )
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "base_model: facebook/musicgen-small" in card
    assert "| fad_vggish | 4.25 |" in card and "| clap_score | skipped |" in card
    assert "- embedder: vggish, checkpoint: vggish.pt, sample_rate: 16000" in card
    assert "| files used | 120 |" in card and "| files skipped | 3 |" in card
    assert "| train split | 108 files, 810 segments |" in card
    assert "musiccaps-mini (32 prompts)" in card
    assert "finetune:\n  name: lora" in card and "secret_section" not in card
    assert "Intended use and limits" in card
    assert 'PeftModel.from_pretrained(model.decoder, "jazz/adapter")' in card
    assert report_metrics(eval_report) == {"fad_vggish": 4.25}
