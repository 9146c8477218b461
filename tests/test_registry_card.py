"""The model card states the license the base model's weights carry, and its snippet loads the
model from where it is published."""

from __future__ import annotations

import yaml

from musicgen_train.registry.model_card import render_model_card


def _card(base: str, hub_repo: str | None = None) -> str:
    return render_model_card(
        name="jazz",
        base_model=base,
        train_cfg={},
        prepare_report=None,
        eval_report=None,
        export_info={"lora": "none"},
        hub_repo=hub_repo,
    )


def test_the_card_states_the_license_of_the_base_weights():
    card = _card("facebook/musicgen-small")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "cc-by-nc-4.0" and front["base_model"] == "facebook/musicgen-small"
    assert "## License" in card and "CC-BY-NC 4.0 (non-commercial use only)" in card
    other = _card("someone/their-musicgen")
    assert "license" not in yaml.safe_load(other.split("---\n")[1])
    assert "The license of the base model `someone/their-musicgen` applies" in other
    assert "no base model license applies" in _card("tiny")


def test_the_snippet_loads_the_hub_repo_it_is_pushed_to():
    assert 'from_pretrained("me/jazz-musicgen")' in _card("tiny", hub_repo="me/jazz-musicgen")
    assert 'from_pretrained("jazz")' in _card("tiny")
