"""``musicgen-train import``: audiocraft MusicGen fine-tunes -> HF model folders -> versions.

The audiocraft checkpoints here are written by hand from a perturbed copy of the tiny model, in
audiocraft's layout (``LMModel`` and ``EncodecModel`` names, q/k/v stacked into in_proj_weight,
old-style weight norm): the converted model must give the perturbed model's logits and audio.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers.models.encodec.modeling_encodec import (
    EncodecConv1d,
    EncodecConvTranspose1d,
    EncodecLSTM,
    EncodecResnetBlock,
)

from musicgen_train.cli import main
from musicgen_train.config import load_config
from musicgen_train.errors import ConfigError, UserError
from musicgen_train.registry.import_audiocraft import run as import_run
from musicgen_train.sources import load_musicgen

XP_CFG = "seed: 2036\ntransformer_lm:\n  dim: 64\n  num_layers: 2\noptim:\n  lr: 0.0001\n"


@pytest.fixture(scope="module")
def perturbed(tiny_loaded):
    """The tiny model with every decoder, projection and codec weight moved by seeded noise."""
    model = copy.deepcopy(tiny_loaded.model)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            moved = name.startswith(("decoder.", "enc_to_dec_proj.", "audio_encoder."))
            if moved and tensor.is_floating_point() and "codebook.inited" not in name:
                tensor.add_(0.05 * torch.randn(tensor.shape, generator=generator))
    return model.eval()


def audiocraft_lm(model) -> dict[str, torch.Tensor]:
    """audiocraft's LMModel.state_dict() of ``model``'s decoder, placed by hand."""
    decoder = model.decoder.model.decoder
    out = {f"emb.{i}.weight": e.weight for i, e in enumerate(decoder.embed_tokens)}
    for i, layer in enumerate(decoder.layers):
        at = f"transformer.layers.{i}."
        for ours, theirs in (
            ("self_attn", layer.self_attn),
            ("cross_attention", layer.encoder_attn),
        ):
            q, k, v = theirs.q_proj.weight, theirs.k_proj.weight, theirs.v_proj.weight
            out[at + ours + ".in_proj_weight"] = torch.cat([q, k, v], dim=0)
            out[at + ours + ".out_proj.weight"] = theirs.out_proj.weight
        out[at + "linear1.weight"] = layer.fc1.weight
        out[at + "linear2.weight"] = layer.fc2.weight
        norms = (
            ("norm1", layer.self_attn_layer_norm),
            ("norm_cross", layer.encoder_attn_layer_norm),
            ("norm2", layer.final_layer_norm),
        )
        for ours, norm in norms:
            out[at + ours + ".weight"], out[at + ours + ".bias"] = norm.weight, norm.bias
    out["out_norm.weight"], out["out_norm.bias"] = (
        decoder.layer_norm.weight,
        decoder.layer_norm.bias,
    )
    for i, head in enumerate(model.decoder.lm_heads):
        out[f"linears.{i}.weight"] = head.weight
    proj = "condition_provider.conditioners.description.output_proj."
    out[proj + "weight"], out[proj + "bias"] = (
        model.enc_to_dec_proj.weight,
        model.enc_to_dec_proj.bias,
    )
    return {k: v.detach().clone() for k, v in out.items()}


def _conv(prefix: str, conv) -> dict:
    """A weight-normed conv as torch.nn.utils.weight_norm names it (audiocraft's layout)."""
    weight = conv.parametrizations.weight
    return {
        prefix + "weight_g": weight.original0,
        prefix + "weight_v": weight.original1,
        prefix + "bias": conv.bias,
    }


def audiocraft_codec(codec) -> dict[str, torch.Tensor]:
    """audiocraft's EncodecModel.state_dict() of ``codec`` (SEANet + residual VQ), by hand."""
    out = {}
    for side in ("encoder", "decoder"):
        for i, layer in enumerate(getattr(codec, side).layers):
            at = f"{side}.model.{i}."
            if isinstance(layer, EncodecConv1d):
                out |= _conv(at + "conv.conv.", layer.conv)
            elif isinstance(layer, EncodecConvTranspose1d):
                out |= _conv(at + "convtr.convtr.", layer.conv)
            elif isinstance(layer, EncodecLSTM):
                out |= {at + "lstm." + n: p for n, p in layer.lstm.named_parameters()}
            elif isinstance(layer, EncodecResnetBlock):
                for j, part in enumerate(layer.block):
                    if isinstance(part, EncodecConv1d):
                        out |= _conv(f"{at}block.{j}.conv.conv.", part.conv)
                if isinstance(layer.shortcut, EncodecConv1d):
                    out |= _conv(at + "shortcut.conv.conv.", layer.shortcut.conv)
    for i, vq in enumerate(codec.quantizer.layers):
        for name in ("inited", "cluster_size", "embed", "embed_avg"):
            out[f"quantizer.vq.layers.{i}._codebook.{name}"] = getattr(vq.codebook, name)
    return {k: v.detach().clone() for k, v in out.items()}


def write_export(folder: Path, model, *, codec: bool = True, lm: dict | None = None) -> Path:
    """audiocraft.utils.export's layout: state_dict.bin (+ compression_state_dict.bin)."""
    folder.mkdir(parents=True, exist_ok=True)
    package = {"best_state": lm or audiocraft_lm(model), "xp.cfg": XP_CFG, "version": "1.4.0"}
    torch.save({**package, "exported": True}, folder / "state_dict.bin")
    if codec:
        state = {
            "best_state": audiocraft_codec(model.audio_encoder),
            "xp.cfg": "",
            "exported": True,
        }
        torch.save(state, folder / "compression_state_dict.bin")
    return folder


def logits(model) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    text = torch.randint(3, 300, (2, 9), generator=generator)
    codes = torch.randint(0, 65, (2 * 4, 6), generator=generator)
    with torch.no_grad():
        return model(input_ids=text, decoder_input_ids=codes).logits


def codec_audio(model) -> torch.Tensor:
    signal = torch.sin(torch.linspace(0, 400, 6400)).reshape(1, 1, -1)
    with torch.no_grad():
        encoded = model.audio_encoder.encode(signal)
        return model.audio_encoder.decode(encoded.audio_codes, encoded.audio_scales)[0]


def _import(tmp_path: Path, source: Path, *extra: str):
    cfg = load_config([f"source={source}", f"output={tmp_path / 'out'}", "base=tiny", *extra])
    return import_run(cfg)


def test_the_names_follow_transformers_conversion():
    from musicgen_train.sources.audiocraft_names import audiocraft_lm_name, codec_name, lm_name

    assert lm_name("transformer.layers.3.cross_attention.in_proj_weight") == [
        f"decoder.model.decoder.layers.3.encoder_attn.{x}_proj.weight" for x in "qkv"
    ]
    assert lm_name("transformer.layers.0.linear2.weight") == [
        "decoder.model.decoder.layers.0.fc2.weight"
    ]
    assert lm_name("linears.2.weight") == ["decoder.lm_heads.2.weight"]
    assert lm_name("emb.1.weight") == ["decoder.model.decoder.embed_tokens.1.weight"]
    assert lm_name("transformer.layers.0.layer_scale_1.scale") == []
    assert audiocraft_lm_name("decoder.model.decoder.layers.5.self_attn.k_proj.weight") == (
        "transformer.layers.5.self_attn.in_proj_weight"
    )
    assert codec_name("decoder.model.3.convtr.convtr.weight_g") == (
        "audio_encoder.decoder.layers.3.conv.weight_g"
    )
    assert codec_name("quantizer.vq.layers.7._codebook.embed_avg") == (
        "audio_encoder.quantizer.layers.7.codebook.embed_avg"
    )


def test_an_export_converts_to_the_same_logits_and_audio(tmp_path, perturbed, tiny_loaded):
    source = write_export(tmp_path / "ft", perturbed)
    result = _import(tmp_path, source)
    converted = load_musicgen(str(result.model_dir)).model
    expected = logits(perturbed)
    assert logits(converted).shape == (8, 6, 64)
    torch.testing.assert_close(logits(converted), expected, atol=1e-6, rtol=0)
    # the perturbation is large enough that a wrong mapping could not pass
    assert (logits(tiny_loaded.model) - expected).abs().max() > 1e-2
    torch.testing.assert_close(codec_audio(converted), codec_audio(perturbed), atol=1e-6, rtol=0)
    assert (codec_audio(tiny_loaded.model) - codec_audio(perturbed)).abs().max() > 1e-3
    # the T5 text encoder is the base's, untouched
    torch.testing.assert_close(
        converted.text_encoder.shared.weight, tiny_loaded.model.text_encoder.shared.weight
    )
    card = (result.model_dir / "README.md").read_text()
    assert "fine-tuned with audiocraft, imported by musicgen-train over **tiny**" in card
    assert "seed: 2036" in card and (result.model_dir / "checksums.json").is_file()
    assert result.facts["codec"].endswith("compression_state_dict.bin")
    assert result.uri is None


def test_a_solver_checkpoint_imports_its_best_state(tmp_path, perturbed, tiny_loaded):
    folder = tmp_path / "xp"
    folder.mkdir()
    package = {
        "model": audiocraft_lm(tiny_loaded.model),  # the latest weights: not these
        "best_state": {"model": audiocraft_lm(perturbed)},
        "fsdp_best_state": {},
        "xp.cfg": OmegaConf.create(XP_CFG),  # pickled as audiocraft's solver does
        "optimizer": {"state": {}},
    }
    torch.save(package, folder / "checkpoint.th")
    result = _import(tmp_path, folder / "checkpoint.th")
    converted = load_musicgen(str(result.model_dir)).model
    torch.testing.assert_close(logits(converted), logits(perturbed), atol=1e-6, rtol=0)
    assert result.facts["weights"] == "best_state" and result.facts["codec"] == "base"
    # no compression_state_dict.bin: the base's codec
    torch.testing.assert_close(codec_audio(converted), codec_audio(tiny_loaded.model))


def test_a_fine_tuned_text_encoder_comes_along(tmp_path, perturbed, tiny_loaded):
    lm = audiocraft_lm(perturbed)
    t5 = {k: v + 0.01 for k, v in tiny_loaded.model.text_encoder.state_dict().items()}
    lm |= {f"condition_provider.conditioners.description.t5.{k}": v for k, v in t5.items()}
    result = _import(tmp_path, write_export(tmp_path / "t5", perturbed, lm=lm, codec=False))
    converted = load_musicgen(str(result.model_dir)).model
    for name, value in converted.text_encoder.state_dict().items():
        torch.testing.assert_close(value, t5[name], atol=0, rtol=0)
    assert result.facts["text_encoder"] == "fine-tuned (from the checkpoint)"
    # a T5 that comes in part is refused
    del lm["condition_provider.conditioners.description.t5.shared.weight"]
    with pytest.raises(UserError, match="condition_provider.conditioners.description.t5"):
        _import(tmp_path, write_export(tmp_path / "t5-part", perturbed, lm=lm, codec=False))


def test_a_folder_is_a_model_source_converted_once(tmp_path, perturbed, caplog):
    source = write_export(tmp_path / "as-source", perturbed, codec=False)
    first = load_musicgen(str(source))  # the base of its shape: tiny
    torch.testing.assert_close(logits(first.model), logits(perturbed), atol=1e-6, rtol=0)
    assert "audiocraft" in first.path
    caplog.clear()
    with caplog.at_level("INFO", logger="musicgen_train.sources.audiocraft"):
        again = load_musicgen(str(source))
    assert again.path == first.path
    assert not [r for r in caplog.records if "converting" in r.getMessage()]


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        ("shape", "linears.1.weight has shape (63, 64) but decoder.lm_heads.1.weight"),
        ("missing", "has no transformer.layers.1.linear2.weight"),
        ("unknown", "transformer.layers.0.layer_scale_1.scale has no place"),
        ("qkv", "transformer.layers.1.self_attn.in_proj_weight has shape (191, 64)"),
        ("truncated", "state_dict.bin cannot be read as a torch file"),
        ("codec", "has no weight for audio_encoder.quantizer.layers.0.codebook.embed ("),
    ],
)
def test_damaged_checkpoints_fail_in_one_line(tmp_path, perturbed, capsys, damage, named):
    lm = audiocraft_lm(perturbed)
    if damage == "shape":
        lm["linears.1.weight"] = lm["linears.1.weight"][:63]
    elif damage == "missing":
        del lm["transformer.layers.1.linear2.weight"]
    elif damage == "unknown":
        lm["transformer.layers.0.layer_scale_1.scale"] = torch.ones(64)
    elif damage == "qkv":
        lm["transformer.layers.1.self_attn.in_proj_weight"] = torch.zeros(191, 64)
    source = write_export(tmp_path / "bad", perturbed, lm=lm, codec=damage == "codec")
    if damage == "truncated":
        data = (source / "state_dict.bin").read_bytes()
        (source / "state_dict.bin").write_bytes(data[: len(data) // 2])
    if damage == "codec":
        state = torch.load(source / "compression_state_dict.bin", weights_only=True)
        del state["best_state"]["quantizer.vq.layers.0._codebook.embed"]
        torch.save(state, source / "compression_state_dict.bin")
    with pytest.raises(UserError) as err:
        _import(tmp_path, source)
    message = str(err.value)
    assert named in message and "\n" not in message
    if damage == "shape":
        assert message.endswith("has shape (64, 64)")
    code = main(["import", f"source={source}", "base=tiny", f"output={tmp_path / 'o2'}"])
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err_lines[-1].startswith("musicgen-train: error: ")
    assert named in err_lines[-1]
    assert not (tmp_path / "out").exists() and not (tmp_path / "o2").exists()


def test_a_base_of_another_shape_and_unknown_shapes_are_named(tmp_path, perturbed):
    from musicgen_train.model.tiny import ensure_tiny_model

    source = write_export(tmp_path / "ft", perturbed, codec=False)
    wider = ensure_tiny_model(seed=0, hidden_size=32)
    with pytest.raises(UserError, match=r"hidden size 64, 2 layers, 4 codebooks of 64; base"):
        _import(tmp_path, source, f"base={wider}")
    lm = {
        k: v
        for k, v in audiocraft_lm(perturbed).items()
        if not k.startswith("transformer.layers.1.")
    }
    odd = write_export(tmp_path / "odd", perturbed, lm=lm, codec=False)
    cfg = load_config([f"source={odd}", f"output={tmp_path / 'x'}"])
    with pytest.raises(UserError, match=r"no known MusicGen has hidden size 64, 1 layers.*base="):
        import_run(cfg)


def test_import_registers_a_version_loadable_by_alias(tmp_path, perturbed):
    source = write_export(tmp_path / "ft", perturbed)
    registry = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [
        "registry.name=imported-tiny",
        "registry.alias=staging",
        f"registry.uri={registry}",
    ]
    result = _import(tmp_path, source, *overrides)
    assert result.uri == "models:/imported-tiny/1" and result.alias == "staging"
    cfg = load_config([f"registry.uri={registry}"])
    from musicgen_train.sources import load_options

    by_alias = load_musicgen("models:/imported-tiny@staging", **load_options(cfg)).model
    torch.testing.assert_close(logits(by_alias), logits(perturbed), atol=1e-6, rtol=0)
    from musicgen_train.sources.registry_store import Registry
    from musicgen_train.sources.registry_uri import parse_registry_uri

    version = Registry(registry).resolve(parse_registry_uri("models:/imported-tiny@staging"))
    assert version.tags["source"] == "audiocraft" and version.tags["base_model"] == "tiny"
    assert len(version.tags["checkpoint_sha256"]) == 16


def test_the_cli_imports(tmp_path, perturbed, capsys):
    source = write_export(tmp_path / "ft", perturbed)
    out = tmp_path / "cli-out"
    assert main(["import", f"source={source}", "base=tiny", f"output={out}"]) == 0
    assert f"model folder: {out}" in capsys.readouterr().out
    converted = load_musicgen(str(out)).model
    torch.testing.assert_close(logits(converted), logits(perturbed), atol=1e-6, rtol=0)
    # a folder that is not a model is never overwritten; a missing source is one line
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    assert main(["import", f"source={source}", f"output={tmp_path / 'keep'}"]) == 2
    assert main(["import", f"source={tmp_path / 'nope'}"]) == 2
    err = capsys.readouterr().err
    assert "is not a model folder" in err and "does not exist" in err
    assert main(["import", "registry.alias=staging", f"source={source}"]) == 2


@pytest.mark.parametrize("override", ["base=''", "source=[1,2]", "output=3"])
def test_import_keys_are_validated(override):
    with pytest.raises(ConfigError, match=override.split("=")[0] + "="):
        load_config([override])
