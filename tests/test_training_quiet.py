"""Lightning's remarks that no user can act on stay out of a training's output; others still show.

Lightning's BoringModel (a few weights, one step) stands in for MusicGen: what is tested is
what the project's callbacks and checkpoint plugin tell Lightning and torch."""

import logging
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from musicgen_train.training import checkpoint_io
from musicgen_train.training.callbacks import ExceptionCheckpoint, OneLineSummary
from musicgen_train.training.checkpoint_io import AtomicCheckpointIO, atomic_save


def _trainer(tmp_path, callbacks, precision="32"):
    return pl.Trainer(
        accelerator="cpu",
        precision=precision,
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=any(isinstance(c, ExceptionCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )


def test_bf16_mixed_summary_is_one_line_without_lightnings_size_warning(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(tmp_path, [OneLineSummary()], precision="bf16-mixed").fit(BoringModel())
    said = [str(w.message) for w in caught]
    assert not [m for m in said if "not supported by the model summary" in m], said
    # Float32 weights under mixed precision: 66 of them, 4 bytes each.
    assert "model: 66 parameters, 66 trainable (0.0 MB)" in caplog.text


def test_other_summary_warnings_still_show(tmp_path):
    class Loud(OneLineSummary):
        @staticmethod
        def summarize(*args, **kwargs):
            warnings.warn("something a user must read", UserWarning, stacklevel=1)

    with pytest.warns(UserWarning, match="something a user must read"):
        _trainer(tmp_path, [Loud()], precision="bf16-mixed").fit(BoringModel())


class FailAt(pl.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 2:
            raise RuntimeError("disk on fire")


def test_an_interrupted_fit_saves_without_lightnings_weights_only_line(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    keep = ExceptionCheckpoint(tmp_path / "checkpoints")
    with pytest.raises(RuntimeError, match="disk on fire"):
        _trainer(tmp_path, [keep, FailAt()]).fit(BoringModel())
    assert keep.written and keep.written.exists()
    saved = torch.load(keep.written, weights_only=True)
    assert saved["global_step"] == 2 and saved["optimizer_states"]  # a full, resumable state
    assert "weights_only" not in caplog.text


@pytest.mark.parametrize("version,expected", [((2, 5), False), ((2, 13), None)])
def test_resume_loads_say_weights_only_where_torch_would_warn(
    tmp_path, monkeypatch, version, expected
):
    path = tmp_path / "x.ckpt"
    atomic_save({"state_dict": {"w": torch.ones(2)}}, path)
    given = {}
    real_load = torch.load

    def recording_load(*args, **kwargs):
        given["weights_only"] = kwargs.get("weights_only", "unset")
        return real_load(*args, **{**kwargs, "weights_only": True})

    monkeypatch.setattr(checkpoint_io, "_torch_version", lambda: version)
    monkeypatch.setattr(torch, "load", recording_load)
    loaded = AtomicCheckpointIO().load_checkpoint(path)
    assert loaded["state_dict"]["w"].tolist() == [1.0, 1.0]
    # torch < 2.6 warns on every load unless told; later versions keep their own default.
    assert given["weights_only"] is expected
