"""The stereo and melody tiny families, fine-tuned, exported and loaded back the way their model
card says, with transformers alone (musicgen_train cannot be imported in that process)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
from test_export import TRAIN

from musicgen_train.config import load_config
from musicgen_train.registry.export import export_checkpoint
from musicgen_train.training.train import train

# Runs the card's snippet as written (the name replaced by the folder, generation cut short),
# then compares every weight of the loaded model with the exported file.
PLAIN = """
import importlib.abc, json, sys

class NoMusicgenTrain(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "musicgen_train":
            raise ImportError("musicgen_train must not be needed")

sys.meta_path.insert(0, NoMusicgenTrain())
import torch
from safetensors.torch import load_file

torch.manual_seed(0)
exec(sys.argv[1])
saved = load_file(sys.argv[2])
state = model.state_dict()
differ = [k for k, v in saved.items() if k in state and not torch.equal(state[k], v)]
print(json.dumps({"cls": type(model).__name__, "shape": list(audio.shape),
                  "compared": sum(k in state for k in saved), "differ": differ}))
"""


@pytest.mark.parametrize(
    ("family", "architecture", "channels"),
    [
        ("tiny-stereo", "MusicgenForConditionalGeneration", 2),
        ("tiny-melody", "MusicgenMelodyForConditionalGeneration", 1),
    ],
)
def test_the_model_card_loads_the_family_with_transformers_alone(
    family, architecture, channels, tmp_path
):
    run = train(load_config([*TRAIN, f"model={family}", f"run_dir={tmp_path / 'run'}"]))
    cfg = load_config(
        [
            f"registry.name={family}",
            f"registry.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"export.output={tmp_path / family}",
            f"run_dir={run.run_dir}",
        ]
    )
    folder = export_checkpoint(cfg, "best").model_dir
    assert json.loads((folder / "config.json").read_text())["architectures"] == [architecture]
    card = (folder / "README.md").read_text()
    snippet = re.search(r"## How to use\n\n```python\n(.*?)```", card, re.S)[1]
    assert f"model = {architecture}.from_pretrained" in snippet
    snippet = snippet.replace(f'"{family}"', repr(str(folder)))
    snippet = snippet.replace(
        "model.generate(**inputs)", "model.generate(**inputs, max_new_tokens=6)"
    )
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PLAIN), snippet, str(folder / "model.safetensors")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["cls"] == architecture
    assert result["compared"] > 50 and result["differ"] == []  # the trained weights, not fresh ones
    assert result["shape"][:2] == [1, channels]
