"""When training's numbers go wrong: a NaN/inf loss, gradient or weight, a NaN validation loss,
a loss spike. Before, a NaN reached every weight, the run went on to its last step and exited 0,
a ``val_ce=nan`` checkpoint could be the best, and ``python train.py`` registered it."""

import csv
import math
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from test_train import FAST as TRAIN_FAST

from musicgen_train.config import load_config
from musicgen_train.errors import ConfigError
from musicgen_train.training.callbacks import BestCheckpoint
from musicgen_train.training.divergence import (
    DivergenceGuard,
    TrainingDiverged,
    check_gradients,
    clip_gradients,
)
from musicgen_train.training.train import train

FAST = [*TRAIN_FAST, "trainer.limit_val_batches=1"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One MUSICGEN_TRAIN_HOME for the module, so the demo token cache is prepared once."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MUSICGEN_TRAIN_HOME", str(tmp_path_factory.mktemp("divergence-home")))
    yield
    mp.undo()


class Poison(pl.Callback):
    """At the start of optimizer step ``at``: a NaN weight (the loss becomes NaN), or a hook that
    makes one gradient inf while the loss stays finite."""

    def __init__(self, at: int, what: str):
        self.at, self.what, self.module = at, what, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.module = module
        if trainer.global_step != self.at:
            return
        weight = module.model.decoder.lm_heads[0].weight
        if self.what == "weight":
            with torch.no_grad():
                weight[0, 0] = float("nan")
        else:
            weight.register_hook(lambda grad: grad * float("inf"))


def run(tmp_path, *overrides, callbacks=()):
    cfg = load_config([*FAST, f"run_dir={tmp_path / 'run'}", *overrides])
    with pytest.raises(TrainingDiverged) as err:
        train(cfg, callbacks=list(callbacks))
    return str(err.value), tmp_path / "run" / "checkpoints"


def test_a_nan_loss_stops_at_its_step_and_keeps_the_checkpoints_before_it(home, tmp_path):
    message, folder = run(
        tmp_path,
        "trainer.max_steps=6",
        "trainer.val_check_interval=2",
        callbacks=[Poison(3, "weight")],
    )
    assert message.startswith(
        "training diverged at step 3: the training loss (train/ce) is nan, so it stopped"
    )
    assert "optim.lr=0.003: try 3-10x lower" in message and "\n" not in message
    assert "16-mixed" not in message and "gradient_clip_val" not in message  # (32, clipped)
    best = next(folder.glob("best-*.ckpt"))
    assert best.name.startswith("best-step=2-val_ce=4.")
    assert f"ckpt_path=best ({best.name}) or ckpt_path=last (last.ckpt)" in message
    # No on_exception.ckpt: ckpt_path=last would pick it over last.ckpt.
    assert sorted(p.name for p in folder.iterdir()) == sorted([best.name, "last.ckpt"])
    last = torch.load(folder / "last.ckpt", weights_only=False)
    assert last["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    # The global gradient norm before clipping reaches the dashboards at every step.
    with open(next((tmp_path / "run").rglob("metrics.csv"))) as metrics:
        rows = list(csv.DictReader(metrics))
    norms = [float(r["train/grad_norm"]) for r in rows if r["train/grad_norm"]]
    assert len(norms) == 3 and all(0 < n < math.inf for n in norms)


def test_an_inf_gradient_stops_before_the_optimizer_step(home, tmp_path):
    poison = Poison(1, "gradient")
    message, folder = run(
        tmp_path,
        "trainer.max_steps=3",
        "trainer.limit_val_batches=0",
        "trainer.gradient_clip_val=null",
        callbacks=[poison],
    )
    assert message.startswith("training diverged at step 1: the gradient norm (train/grad_norm)")
    assert "no gradient clipping (set trainer.gradient_clip_val=1.0" in message
    assert "No checkpoint was saved before it" in message
    # The step never ran: every weight is still finite, and nothing was written.
    assert all(torch.isfinite(p).all() for _, p in poison.module.trainable_parameters())
    assert not folder.exists() or not list(folder.iterdir())


class PoisonAfterTheLastStep(pl.Callback):
    """A NaN that no loss sees (as AdamW's 0/0 with optim.eps=0 left in unused embeddings)."""

    def on_train_batch_end(self, trainer, module, *args) -> None:
        if trainer.global_step == trainer.max_steps:
            with torch.no_grad():
                module.model.decoder.lm_heads[1].weight[0, 0] = float("inf")


def test_weights_that_are_not_finite_are_never_written(home, tmp_path):
    message, folder = run(
        tmp_path,
        "trainer.max_steps=2",
        "trainer.limit_val_batches=0",
        callbacks=[PoisonAfterTheLastStep()],
    )
    assert message.startswith(
        "training diverged at step 2: 1 weight tensor(s) are not finite "
        "(model.decoder.lm_heads.1.weight), so its checkpoint was not written"
    )
    assert not folder.exists() or not list(folder.iterdir())


def test_optim_eps_zero_fails_when_composed():
    with pytest.raises(ConfigError, match=r"optim.eps=0 is not allowed: it must be > 0"):
        load_config(["optim.eps=0"])


def fake_trainer(scaler=None, **extra):
    plugin = SimpleNamespace(scaler=scaler)
    strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision)
    return SimpleNamespace(
        precision="16-mixed" if scaler else "32-true",
        precision_plugin=plugin,
        strategy=strategy,
        global_step=7,
        accumulate_grad_batches=1,
        gradient_clip_val=1.0,
        is_global_zero=True,
        checkpoint_callbacks=[],
        **extra,
    )


class FakeModule:
    cfg = load_config([])

    def __init__(self):
        self.logged = {}

    def log(self, name, value, **options):
        self.logged[name] = value


def fake_scaler(scale: float):
    return SimpleNamespace(is_enabled=lambda: True, get_scale=lambda: scale)


def test_fp16_lets_a_few_skipped_steps_through(caplog):
    trainer, module, guard = fake_trainer(fake_scaler(1024.0)), FakeModule(), DivergenceGuard()
    nan = torch.tensor(float("nan"))
    guard.on_before_backward(trainer, module, nan)  # the GradScaler skips this step
    guard.on_before_backward(trainer, module, torch.tensor(2.0))  # a good one: count again
    guard.on_before_backward(trainer, module, nan)
    guard.on_before_backward(trainer, module, nan)
    assert caplog.text.count("the GradScaler skips this step (training stops at 3 in a row)") == 3
    with pytest.raises(TrainingDiverged, match=r"use bf16-mixed on a GPU with it"):
        guard.on_before_backward(trainer, module, nan)
    # Without a GradScaler (fp32, bf16) the first NaN stops.
    with pytest.raises(TrainingDiverged, match=r"at step 7: the training loss \(train/ce\) is"):
        DivergenceGuard().on_before_backward(fake_trainer(), module, nan)


def test_fp16_stops_when_the_loss_scale_collapses():
    inf = torch.tensor(float("inf"))
    check_gradients(fake_trainer(fake_scaler(1.0)), FakeModule(), inf)  # skipped by the scaler
    with pytest.raises(TrainingDiverged, match=r"the gradient norm \(train/grad_norm\) is inf"):
        check_gradients(fake_trainer(), FakeModule(), inf)  # fp32: nothing would skip it
    with pytest.raises(TrainingDiverged, match=r"the fp16 loss scale fell to 5e-05: the grad"):
        check_gradients(fake_trainer(fake_scaler(5e-5)), FakeModule(), torch.tensor(1.0))


def test_a_loss_spike_is_said_and_counted(caplog):
    trainer, module, guard = fake_trainer(), FakeModule(), DivergenceGuard()
    for loss in (2.2, 2.4, 2.1, 2.3):
        guard.on_before_backward(trainer, module, torch.tensor(loss))
    assert "train/loss_spikes" not in module.logged and "spike" not in caplog.text
    guard.on_before_backward(trainer, module, torch.tensor(5.0))
    assert module.logged["train/loss_spikes"] == 1.0
    assert "step 7: loss spike: train/ce 5.000 is 2.2x the median of the 4 step(s)" in caplog.text


def test_a_nan_validation_loss_is_never_the_best(tmp_path, caplog):
    best = BestCheckpoint(dirpath=tmp_path, monitor="val/ce", mode="min", save_top_k=1)
    trainer = fake_trainer()
    # Lightning's ModelCheckpoint keeps the first value it sees, NaN included.
    assert not best.check_monitor_top_k(trainer, torch.tensor(float("nan")))
    assert "step 7: val/ce is nan, so this checkpoint is not kept as a best one" in caplog.text
    assert best.check_monitor_top_k(trainer, torch.tensor(4.1))
    # Saved under Lightning's own key, which last.ckpt files and ckpt_path=best read.
    assert best.state_key.startswith("ModelCheckpoint{'monitor': 'val/ce'")


def test_fsdp_clips_through_its_root_module():
    """Lightning raised "gradient_clip_algorithm='norm' is currently not supported" at the first
    step of strategy=fsdp with the default trainer.gradient_clip_val=1.0."""
    from lightning.pytorch.strategies import FSDPStrategy

    calls = []
    strategy = FSDPStrategy()
    strategy.model = SimpleNamespace(clip_grad_norm_=lambda norm: calls.append(norm) or 3.0)
    module = SimpleNamespace(trainer=SimpleNamespace(strategy=strategy))
    assert clip_gradients(module, None, 1.0, "norm") == 3.0
    assert clip_gradients(module, None, None, "norm") == 3.0  # measured, not clipped
    assert calls == [1.0, math.inf]


def test_a_checkpoint_with_nan_weights_is_not_exported(home, tmp_path, capsys):
    """Checkpoints written before the guard existed can hold NaN weights: export refuses them
    (it registered them, and generation failed later in int8 quantization with a traceback)."""
    from musicgen_train.cli import main

    run_dir = tmp_path / "run"
    train(load_config([*FAST, f"run_dir={run_dir}", "trainer.max_steps=1"]))
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    next(iter(checkpoint["state_dict"].values())).fill_(float("nan"))
    diverged = tmp_path / "diverged.ckpt"
    torch.save(checkpoint, diverged)
    capsys.readouterr()
    registry = f"registry.uri=sqlite:///{tmp_path / 'mlflow.db'}"
    output = tmp_path / "export"
    assert main(["export", f"checkpoint={diverged}", registry, f"export.output={output}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"musicgen-train: error: {diverged} holds NaN or inf weights (training diverged): "
        "export another"
    )
    assert not output.exists()
