"""``trainer.devices`` the machine cannot give: one line before Lightning starts.

Machines with N GPUs are simulated by patching torch's counters (CUDA is never started)."""

import pytest
import torch

from musicgen_train.cli import main
from musicgen_train.config import load_config
from musicgen_train.errors import ConfigError, UserError
from musicgen_train.training.devices import check_devices


@pytest.fixture
def gpus(monkeypatch):
    """``gpus(n)``: this process sees ``n`` CUDA GPUs (0: none) and no Apple GPU."""

    def machine(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)

    return machine


def _check(*overrides):
    # The demo recipe trains on the CPU by name; these are the settings of a GPU recipe.
    check_devices(load_config(["trainer.accelerator=auto", *overrides]))


@pytest.mark.parametrize(
    "count,overrides,expected",
    [
        (1, ["trainer.devices=4"], "trainer.devices=4 asks for 4 GPUs, but this machine has 1 GPU"),
        (
            1,
            ["trainer.devices=2", "trainer.accelerator=gpu"],
            "use trainer.devices=1",
        ),
        (2, ["trainer.devices=[0,3]"], "trainer.devices=[0, 3] names GPU 3, which does not exist"),
        (0, ["trainer.devices=4"], "trainer.accelerator=cpu to train in 4 CPU processes"),
        (0, ["trainer.devices=[1]", "trainer.accelerator=cpu"], "selects GPUs"),
        (0, ["trainer.devices=-1"], "trainer.devices=-1 selects GPUs"),
    ],
)
def test_devices_the_machine_lacks_are_one_line(gpus, count, overrides, expected):
    gpus(count)
    with pytest.raises(UserError) as err:
        _check(*overrides)
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "count,overrides",
    [
        (4, ["trainer.devices=4"]),
        (4, ["trainer.devices=[1,3]", "trainer.accelerator=gpu"]),
        (2, ["trainer.devices=-1"]),
        (0, ["trainer.devices=2", "trainer.accelerator=cpu", "strategy=ddp"]),
        (0, ["trainer.devices=auto"]),
    ],
)
def test_devices_the_machine_has_pass(gpus, count, overrides):
    gpus(count)
    _check(*overrides)


@pytest.mark.parametrize(
    "value", ["0", "-2", "[]", "[0,0]", "[-1]", "'0,1'", "true", "[0,x]", "1.5"]
)
def test_malformed_devices_fail_when_composed(value):
    with pytest.raises(ConfigError) as err:
        load_config([f"trainer.devices={value}"])
    assert "trainer.devices=" in str(err.value) and "list of distinct GPU indices" in str(err.value)


def test_the_cli_says_it_before_lightning_starts(gpus, tmp_path, capsys, monkeypatch):
    gpus(1)
    monkeypatch.setenv("MUSICGEN_TRAIN_HOME", str(tmp_path))
    assert (
        main(
            [
                "train",
                "logger=csv",
                "trainer.accelerator=auto",
                "trainer.devices=4",
                f"run_dir={tmp_path / 'run'}",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "trainer.devices=4 asks for 4 GPUs" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing prepared, locked or logged


def test_bf16_on_a_gpu_without_it_is_one_line(gpus, monkeypatch):
    from musicgen_train.training.train import check_precision

    gpus(1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla P100-PCIE-16GB")
    with pytest.raises(UserError) as err:
        check_precision("bf16-mixed", "auto")
    assert "this GPU (Tesla P100-PCIE-16GB) has no bfloat16" in str(err.value)
    assert "16-mixed" in str(err.value)
    check_precision("16-mixed", "gpu")
    check_precision("bf16-mixed", "cpu")  # CPU autocast has bf16


def test_auto_precision_takes_fp16_where_bf16_is_only_emulated(gpus, monkeypatch):
    from musicgen_train.training.train import check_precision, resolve_precision

    gpus(1)
    # A V100 or T4: torch emulates bf16 there (slower than fp16), natively it has none.
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
    )
    assert resolve_precision("auto", "auto") == "16-mixed"  # the GPU recipes' precision
    check_precision("bf16-mixed", "gpu")  # asked for by name: it runs, emulated
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", "auto") == "bf16-mixed"  # an A100, an H100
