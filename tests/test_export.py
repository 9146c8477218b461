"""Export end to end: train tiny -> export -> register -> load by alias -> same audio.

Two short training runs (2 steps each) are shared by the module: a full fine-tune with EMA and
a LoRA fine-tune.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from musicgen_train.cli import main
from musicgen_train.config import load_config
from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.model.loader import LoadedModel
from musicgen_train.registry.export import export_checkpoint
from musicgen_train.sources import load_checkpoint, load_musicgen, load_options
from musicgen_train.sources.checkpoint import (
    CheckpointError,
    checkpoint_to_pretrained,
)
from musicgen_train.sources.checksums import CHECKSUM_FILE, verify_checksums
from musicgen_train.sources.registry_store import Registry
from musicgen_train.sources.registry_uri import parse_registry_uri
from musicgen_train.sources.resolve import load_base
from musicgen_train.training.train import TrainResult, train

TRAIN = [
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.val_before_training=false",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "callbacks.samples.every_n_steps=0",
]
PARAMS = GenerationParams(duration=0.4, seed=11, top_k=30)
PROMPTS = ["calm piano", "busy drums and bass"]


def _train(run_dir: Path, *overrides: str) -> TrainResult:
    return train(load_config([*TRAIN, f"run_dir={run_dir}", *overrides]))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> TrainResult:
    return _train(tmp_path_factory.mktemp("runs") / "full", "finetune.ema.decay=0.9")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> TrainResult:
    return _train(tmp_path_factory.mktemp("runs") / "lora", "finetune=lora")


@pytest.fixture(scope="module")
def registry_uri(tmp_path_factory) -> str:
    """One registry for the module (creating an MLflow database takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"


def _cfg(tmp_path: Path, registry_uri: str, run: TrainResult | None = None, *overrides: str):
    """Each test registers under its own name: the test folder's name."""
    run_dir = run.run_dir if run else tmp_path / "no-run"
    name = tmp_path.name.replace("[", "-").replace("]", "")[-60:].strip("-_.")
    return load_config(
        [
            f"registry.name={name}",
            f"registry.uri={registry_uri}",
            f"export.output={tmp_path / 'exports' / name}",
            f"run_dir={run_dir}",
            *overrides,
        ]
    )


def _versions(cfg) -> list[int]:
    registry = Registry(cfg.registry.uri)
    if not registry._exists(cfg.registry.name):
        return []
    return [int(v.version) for v in registry.versions(cfg.registry.name)]


def _logits(model, processor) -> torch.Tensor:
    """Decoder logits for a fixed caption and fixed codes: compares two models' weights."""
    model.eval()  # no (LoRA) dropout
    inputs = processor(text=["calm piano"], padding=True, return_tensors="pt")
    k = model.config.decoder.num_codebooks
    codes = torch.arange(k * 6).reshape(k, 6) % model.config.decoder.vocab_size
    with torch.no_grad():
        return model(**inputs, decoder_input_ids=codes).logits.float()


@pytest.mark.slow
def test_round_trip_train_export_register_load_by_alias(tmp_path, registry_uri, full_run):
    cfg = _cfg(tmp_path, registry_uri, full_run, "registry.alias=staging")
    result = export_checkpoint(cfg, "best")
    name = cfg.registry.name
    assert (result.uri, result.version, result.alias_uri) == (
        f"models:/{name}/1",
        1,
        f"models:/{name}@staging",
    )
    folder = result.model_dir
    names = set(os.listdir(folder))
    assert {"model.safetensors", "config.json", "generation_config.json", "README.md"} <= names
    assert {"processor_config.json", "tokenizer_config.json", CHECKSUM_FILE} <= names
    verify_checksums(folder)
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["guidance_scale"] == 3.0 and generation["do_sample"] is True
    assert generation["top_k"] == 250 and generation["max_length"] == 8 * 50 + 4

    checkpoint = torch.load(full_run.best_checkpoint, map_location="cpu", weights_only=False)
    cache = Path(checkpoint["hyper_parameters"]["cfg"]["data"]["output"])
    prepare = json.loads((cache / "prepare_report.json").read_text())
    card = (folder / "README.md").read_text()
    assert "**tiny**" in card and "pipeline_tag: text-to-audio" in card
    assert f"| files used | {prepare['files_ok']} |" in card
    assert f"| tokens | {prepare['totals']['tokens']} |" in card
    assert "ema:\n    decay: 0.9" in card and "| weights | EMA |" in card
    assert "Intended use and limits" in card

    # EMA: the exported weights are the checkpoint's averages, not its last step.
    saved = load_file(folder / "model.safetensors")
    shadow = checkpoint["ema"]["shadow"]
    assert len(shadow) > 10
    for weight, average in shadow.items():
        torch.testing.assert_close(saved[weight], average, rtol=0, atol=0)
    moved = [
        n for n in shadow if not torch.equal(shadow[n], checkpoint["state_dict"][f"model.{n}"])
    ]
    assert moved, "EMA after 2 steps with decay 0.9 must differ from the raw weights"

    # The registry version, loaded by alias, generates what the checkpoint itself generates.
    module = load_checkpoint(full_run.best_checkpoint)
    own = LoadedModel(module.export_model(), module.processor, "checkpoint", "checkpoint")
    expected = GenerationEngine(own).generate(PROMPTS, PARAMS)
    by_alias = load_musicgen(f"models:/{name}@staging", **load_options(cfg))
    audio = GenerationEngine(by_alias).generate(PROMPTS, PARAMS)
    assert audio.shape == (2, 1, int(0.4 * 32000))
    np.testing.assert_allclose(audio, expected, atol=1e-4)
    assert np.abs(audio).max() > 1e-3  # real audio, not silence

    version = Registry(cfg.registry.uri).resolve(parse_registry_uri(f"models:/{name}@staging"))
    assert version.tags["base_model"] == "tiny"
    assert version.tags["data_hash"] != "unknown" and len(version.tags["data_hash"]) == 16
    assert version.tags["weights"] == "EMA"

    # The checkpoint loads directly too (converted once, cached by content).
    converted = checkpoint_to_pretrained(full_run.best_checkpoint, load_base)
    assert checkpoint_to_pretrained(full_run.best_checkpoint, load_base) == converted
    direct = GenerationEngine(load_musicgen(str(full_run.best_checkpoint))).generate(
        PROMPTS, PARAMS
    )
    np.testing.assert_allclose(direct, expected, atol=1e-4)


def test_export_loads_with_transformers_alone(tmp_path, registry_uri, full_run):
    """A subprocess that never imports musicgen_train loads the folder and generates."""
    result = export_checkpoint(_cfg(tmp_path, registry_uri, full_run), "last")
    script = textwrap.dedent(
        """
        import json, sys
        import torch
        from transformers import AutoProcessor, MusicgenForConditionalGeneration

        folder = sys.argv[1]
        model = MusicgenForConditionalGeneration.from_pretrained(folder).eval()
        processor = AutoProcessor.from_pretrained(folder)
        inputs = processor(text=["calm piano"], padding=True, return_tensors="pt")
        k = model.config.decoder.num_codebooks
        codes = torch.arange(k * 6).reshape(k, 6) % model.config.decoder.vocab_size
        with torch.no_grad():
            logits = model(**inputs, decoder_input_ids=codes).logits.float()
            audio = model.generate(**inputs, max_new_tokens=10)
        print(json.dumps({
            "logits": logits.flatten().tolist(),
            "audio_shape": list(audio.shape),
            "guidance": model.generation_config.guidance_scale,
            "project_imported": any(m.startswith("musicgen_train") for m in sys.modules),
        }))
        """
    )
    env = {**os.environ, "PYTHONPATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", script, str(result.model_dir)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["project_imported"] is False
    assert report["guidance"] == 3.0
    assert report["audio_shape"][:2] == [1, 1] and report["audio_shape"][2] > 0
    module = load_checkpoint(full_run.last_checkpoint)
    expected = _logits(module.export_model(), module.processor).flatten()
    np.testing.assert_allclose(np.array(report["logits"]), expected.numpy(), atol=1e-5)


@pytest.mark.slow
def test_lora_merge_gives_the_adapter_models_outputs(tmp_path, registry_uri, lora_run, tiny_loaded):
    # Two steps barely move LoRA's B matrices (they start at zero): give the adapter real weight
    # so that "merged == adapter" cannot pass by both being the base model.
    checkpoint = torch.load(lora_run.last_checkpoint, map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(0)
    lora_b = [k for k in checkpoint["state_dict"] if "lora_B" in k]
    assert lora_b
    for key in lora_b:
        shape = checkpoint["state_dict"][key].shape
        checkpoint["state_dict"][key] = 0.2 * torch.randn(shape, generator=generator)
    perturbed = lora_run.run_dir / "checkpoints" / "perturbed.ckpt"
    torch.save(checkpoint, perturbed)

    module = load_checkpoint(perturbed)
    with_adapter = _logits(module.model, module.processor)  # decoder is still a peft model
    base = _logits(tiny_loaded.model, tiny_loaded.processor)
    assert (with_adapter - base).abs().max() > 1e-2

    merged = export_checkpoint(_cfg(tmp_path, registry_uri, lora_run), str(perturbed))
    plain = load_musicgen(str(merged.model_dir))
    assert not any("lora" in n for n, _ in plain.model.named_parameters())
    torch.testing.assert_close(
        _logits(plain.model, plain.processor), with_adapter, atol=1e-5, rtol=0
    )
    assert "| lora | merged |" in (merged.model_dir / "README.md").read_text()

    apart_cfg = _cfg(
        tmp_path,
        registry_uri,
        lora_run,
        "export.merge_lora=false",
        f"export.output={tmp_path / 'apart'}",
    )
    apart = export_checkpoint(apart_cfg, str(perturbed))
    adapter = apart.model_dir / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(adapter))
    assert apart.version == 2
    verify_checksums(apart.model_dir)  # the adapter is covered by the checksums too
    card = (apart.model_dir / "README.md").read_text()
    assert "| lora | adapter kept apart |" in card and "PeftModel.from_pretrained" in card
    from transformers import MusicgenForConditionalGeneration

    bare = MusicgenForConditionalGeneration.from_pretrained(apart.model_dir).eval()
    torch.testing.assert_close(_logits(bare, tiny_loaded.processor), base, atol=1e-6, rtol=0)
    # The project's loader applies and merges the adapter kept apart.
    loaded = load_musicgen(str(apart.model_dir))
    torch.testing.assert_close(
        _logits(loaded.model, loaded.processor), with_adapter, atol=1e-5, rtol=0
    )


def test_interrupted_exports_leave_no_version_and_the_old_folder(
    tmp_path, registry_uri, full_run, monkeypatch
):
    cfg = _cfg(tmp_path, registry_uri, full_run)
    first = export_checkpoint(cfg, "last")
    dest = first.model_dir
    record = (dest / CHECKSUM_FILE).read_text()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt if boom.interrupt else RuntimeError("injected failure")

    points = [
        ("musicgen_train.sources.checkpoint.save_model_folder", False),  # before any file
        ("musicgen_train.sources.model_folder.write_checksums", False),  # files written, no record
        ("mlflow.pyfunc.save_model", True),  # Ctrl-C while writing the pyfunc model
        ("mlflow.MlflowClient.create_model_version", False),
        ("mlflow.MlflowClient.set_model_version_tag", False),  # version exists: must be undone
    ]
    again = _cfg(tmp_path, registry_uri, full_run, "export.new_version=true")  # not a no-op
    for target, interrupt in points:
        boom.interrupt = interrupt
        with monkeypatch.context() as patch:
            patch.setattr(target, boom)
            with pytest.raises((RuntimeError, KeyboardInterrupt)):
                export_checkpoint(again, "last")
        assert _versions(cfg) == [1], target
        assert (dest / CHECKSUM_FILE).read_text() == record, target
        verify_checksums(dest)
        assert os.listdir(dest.parent) == [dest.name], target  # no staging folder left


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("shape", "does not fit the model its config names"),
        ("truncate", "corrupt or truncated"),
    ],
)
def test_damaged_checkpoints_fail_clearly_and_register_nothing(
    tmp_path, registry_uri, full_run, damage, message
):
    bad = tmp_path / "bad.ckpt"
    if damage == "shape":
        checkpoint = torch.load(full_run.last_checkpoint, map_location="cpu", weights_only=False)
        key = next(k for k in checkpoint["state_dict"] if k.endswith("fc1.weight"))
        checkpoint["state_dict"][key] = torch.zeros(3, 3)
        torch.save(checkpoint, bad)
    else:
        data = full_run.last_checkpoint.read_bytes()
        bad.write_bytes(data[: len(data) // 3])
    cfg = _cfg(tmp_path, registry_uri, full_run)
    with pytest.raises(CheckpointError) as info:
        export_checkpoint(cfg, str(bad))
    assert message in str(info.value) and str(bad) in str(info.value)
    assert "\n" not in str(info.value)
    assert _versions(cfg) == []
    assert not Path(cfg.export.output).exists()


def test_missing_and_deepspeed_checkpoints_name_the_problem(tmp_path, registry_uri, capsys):
    cfg = _cfg(tmp_path, registry_uri)
    with pytest.raises(CheckpointError, match="checkpoint=best: no checkpoints in"):
        export_checkpoint(cfg, "best")
    with pytest.raises(CheckpointError, match="does not exist"):
        export_checkpoint(cfg, str(tmp_path / "nope.ckpt"))
    zero = tmp_path / "zero-ckpt"
    (zero / "global_step2").mkdir(parents=True)
    (zero / "latest").write_text("global_step2")
    with pytest.raises(CheckpointError, match=f"DeepSpeed.*{zero}|{zero}.*DeepSpeed"):
        export_checkpoint(cfg, str(zero))
    assert _versions(cfg) == []
    # an unreachable registry fails before any export work, as one line
    args = [
        "export",
        "checkpoint=last",
        "registry.uri=http://127.0.0.1:9",
        f"export.output={tmp_path / 'never'}",
    ]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("musicgen-train: error: cannot reach the MLflow registry")
    assert "\n" not in err
    assert not (tmp_path / "never").exists()


def test_pipeline_registers_the_final_model(tmp_path, registry_uri, full_run, capsys):
    from musicgen_train.pipeline import register_final_model

    cfg = _cfg(tmp_path, registry_uri, full_run)
    outputs = register_final_model(cfg, full_run, None)
    assert outputs["registered_model"] == f"models:/{cfg.registry.name}/1"
    assert f"registered model: models:/{cfg.registry.name}/1" in capsys.readouterr().out
    assert _versions(cfg) == [1]


DEEPSPEED_SCRIPT = """
import sys
import deepspeed
import deepspeed.comm.torch as ds_torch
import lightning
import torch
from torch import nn

from musicgen_train.config import load_config
from musicgen_train.training.module import MusicgenLightningModule

# The shared-memory collective op is a CPU speed-up that DeepSpeed compiles on first use
# (minutes); one process does not need it. Everything else below is real DeepSpeed ZeRO-2.
ds_torch.build_shm_op = lambda: None
deepspeed.init_distributed(dist_backend="gloo")
out = sys.argv[1]
module = MusicgenLightningModule(load_config(["finetune.ema.decay=0"]))


class LightningLike(nn.Module):  # Lightning's DeepSpeed strategy wraps the module like this
    def __init__(self, module):
        super().__init__()
        self._forward_module = module

    def forward(self, batch):
        return self._forward_module(batch)["loss"]


wrapper = LightningLike(module)
trainable = [p for p in wrapper.parameters() if p.requires_grad]
config = {
    "train_micro_batch_size_per_gpu": 1,
    "zero_optimization": {"stage": 2},
    "zero_allow_untested_optimizer": True,
}
engine, *_ = deepspeed.initialize(
    model=wrapper, optimizer=torch.optim.AdamW(trainable, lr=0.05), config=config
)
torch.manual_seed(0)
batch = {"texts": ["calm piano"], "codes": torch.randint(0, 64, (1, 4, 20)),
         "padding_mask": torch.ones(1, 20, dtype=torch.bool)}
engine.backward(engine(batch))
engine.step()
client = {"hyper_parameters": dict(module.hparams), "global_step": 1, "epoch": 0,
          "pytorch-lightning_version": lightning.__version__}
engine.save_checkpoint(out + "/zero", client_state=client)
name = "decoder.model.decoder.layers.0.fc1.weight"
torch.save({name: dict(module.model.named_parameters())[name].detach().clone()},
           out + "/reference.pt")
"""


@pytest.mark.slow
def test_deepspeed_zero_checkpoint_is_consolidated_and_exported(tmp_path, registry_uri):
    pytest.importorskip("deepspeed", reason="DeepSpeed checkpoints need the distributed extra")
    env = {
        **os.environ,
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29541",
    }
    done = subprocess.run(
        [sys.executable, "-c", DEEPSPEED_SCRIPT, str(tmp_path)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    zero = tmp_path / "zero"
    assert (zero / "latest").exists()
    result = export_checkpoint(_cfg(tmp_path, registry_uri), str(zero))
    reference = torch.load(tmp_path / "reference.pt")
    saved = load_file(result.model_dir / "model.safetensors")
    for weight, value in reference.items():
        torch.testing.assert_close(saved[weight], value, rtol=0, atol=0)
    base = load_file(Path(load_musicgen("tiny").path) / "model.safetensors")
    assert not torch.equal(
        saved["decoder.model.decoder.layers.0.fc1.weight"],
        base["decoder.model.decoder.layers.0.fc1.weight"],
    )  # it trained
    assert result.version == 1
