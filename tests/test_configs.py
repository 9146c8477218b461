"""Every shipped recipe and every config group option composes; bad values fail by name."""

import pytest

from musicgen_train.config import available_recipes, configs_dir, group_options, load_config
from musicgen_train.errors import ConfigError

GROUPS = sorted(p.name for p in configs_dir().iterdir() if p.is_dir())

# Options that cannot stand alone: what a user must add on the command line.
NEEDS = {
    ("model", "custom"): ["model.id=tiny"],
    ("data", "folder"): ["data.source={tmp}"],
    ("data", "hf"): ["data.source=user/dataset"],
    ("data", "manifest"): ["data.source={tmp}/data.jsonl"],
}


def test_the_shipped_recipes_are_there():
    assert {"demo", "jazz"} <= set(available_recipes())


@pytest.mark.parametrize("recipe", available_recipes())
def test_every_recipe_composes(recipe):
    cfg = load_config([f"recipe={recipe}"])
    assert cfg.recipe == recipe
    for section in ("model", "data", "finetune", "optim", "trainer", "callbacks"):
        assert section in cfg


def test_recipes_override_groups_through_the_defaults_list():
    demo, jazz = load_config([]), load_config(["recipe=jazz"])
    assert (demo.model.name, demo.finetune.name, demo.data.source) == ("tiny", "full", "demo")
    assert (jazz.model.id, jazz.finetune.name) == ("facebook/musicgen-small", "lora")
    assert jazz.trainer.precision == "auto" and jazz.optim.lr == pytest.approx(2e-4)
    assert jazz.optim.betas == [0.9, 0.95]  # untouched keys come from configs/optim/adamw.yaml
    assert demo.run_dir.endswith("runs/demo") and jazz.run_dir.endswith("runs/jazz")


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_group_option_composes(group, option, tmp_path):
    extra = [item.format(tmp=tmp_path) for item in NEEDS.get((group, option), [])]
    (tmp_path / "data.jsonl").write_text("")
    cfg = load_config([f"{group}={option}", *extra])
    assert group in cfg


def test_training_defaults_follow_audiocraft():
    cfg = load_config([])
    assert cfg.optim.betas == [0.9, 0.95] and cfg.optim.weight_decay == 0.1
    assert cfg.optim.scheduler == "cosine" and cfg.trainer.gradient_clip_val == 1.0
    assert cfg.finetune.cfg_dropout == 0.3
    lora = load_config(["finetune=lora"]).finetune.lora
    assert (lora.r, lora.alpha) == (16, 16)
    assert list(lora.target_modules) == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


@pytest.mark.parametrize(
    "overrides,named",
    [
        (["finetune.name=half"], "finetune.name='half'"),
        (["finetune.cfg_dropout=1.5"], "finetune.cfg_dropout=1.5"),
        (["finetune.ema.decay=1.0"], "finetune.ema.decay=1.0"),
        (["finetune=lora", "finetune.lora.r=0"], "finetune.lora.r=0"),
        (["finetune=lora", "finetune.lora.target_modules=[q_proj,wq]"], "'wq'"),
        (["finetune=lora", "finetune.lora.target_modules=[]"], "finetune.lora.target_modules"),
        (["optim.lr=-0.1"], "optim.lr=-0.1"),
        (["optim.betas=[0.9]"], "optim.betas=[0.9]"),
        (["optim.scheduler=linear"], "optim.scheduler='linear'"),
        (["optim.warmup_steps=-1"], "optim.warmup_steps=-1"),
        (["trainer.precision=8-mixed"], "trainer.precision='8-mixed'"),
        (["trainer.accelerator=abacus"], "trainer.accelerator='abacus'"),
        (["trainer.max_steps=0"], "trainer.max_steps=0"),
        (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0"),
        (["trainer.val_check_interval=1.5"], "trainer.val_check_interval=1.5"),
        (["trainer.deterministic=maybe"], "trainer.deterministic='maybe'"),
        (["callbacks.checkpoint.mode=up"], "callbacks.checkpoint.mode='up'"),
        (["callbacks.samples.every_n_steps=-2"], "callbacks.samples.every_n_steps=-2"),
        (
            ["callbacks.samples.every_n_steps=5", "callbacks.samples.prompts=[1,2]"],
            "callbacks.samples.prompts",
        ),
        (["ckpt_path=3"], "ckpt_path=3"),
        (["recipe=nope"], "recipe='nope'"),
    ],
)
def test_invalid_values_fail_naming_key_and_value(overrides, named):
    with pytest.raises(ConfigError) as err:
        load_config(overrides)
    message = str(err.value)
    assert named in message
    assert "allowed" in message or "choose" in message or "must" in message
