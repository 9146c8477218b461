"""Many fine-tunes on one base: LoRA exports kept apart, served as peft adapters of one model.

An export with ``export.merge_lora=false`` is the base model's folder plus the adapter in
``adapter/`` (``model.lora_targets.ADAPTER_DIR``). A served model with ``base: <name>`` in
``serve.models`` loads only that ``adapter/`` onto the decoder of the served model ``<name>``
(``PeftModel.load_adapter``): one copy of the base weights, plus a few MB per adapter.

The engine's decode loop calls the decoder's modules directly, one batch through each module, and
peft picks the adapter of a LoRA layer per module call (its per-row ``adapter_names`` need the same
rows in every call, which the loop's cross-attention on conditional rows only and per-row prefill
do not have). So rows are grouped by adapter: each adapter (and the base) has its own decode loop
in the scheduler, and ``AdapterLoop`` makes its adapter the active one around its prefill and each
of its steps. Rows of one adapter share their steps; the loops of different adapters take turns,
one step each, in the same process on the same weights.

Adapters share the base only where the engine runs the model's own decoder: at the model's dtype
(fp32 on CPU). A converted decoder (int8, bf16, fp16) is a copy with the adapter merged into it,
so there each adapter gets its own converted decoder copy (text encoder and codec still shared);
``serve.precision=fp32`` keeps one copy of everything.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from peft import PeftModel

from musicgen_train.errors import ConfigError
from musicgen_train.generation import GenerationEngine
from musicgen_train.generation.decode import DecodeLoop
from musicgen_train.model.lora import peft_quietly
from musicgen_train.model.lora_targets import ADAPTER_DIR
from musicgen_train.serve.models import load_engine
from musicgen_train.serve.settings import ModelSpec

log = logging.getLogger(__name__)


@contextlib.contextmanager
def active_adapter(peft_model: PeftModel, adapter: str | None):
    """``adapter`` on for the block (None: the base, adapters off)."""
    if adapter is None:
        with peft_model.disable_adapter():
            yield
        return
    peft_model.set_adapter(adapter)
    yield


class AdapterLoop(DecodeLoop):
    """A decode loop whose rows run with one adapter of a peft-wrapped decoder (None: the base,
    adapters off)."""

    def __init__(self, *args, peft_model: PeftModel, adapter: str | None, **kwargs):
        super().__init__(*args, **kwargs)
        self.peft_model, self.adapter = peft_model, adapter

    def _active(self):
        return active_adapter(self.peft_model, self.adapter)

    def add_row(self, *args, **kwargs):
        with self._active():  # the prefill's cross-attention K/V go through LoRA layers too
            return super().add_row(*args, **kwargs)

    def step(self):
        with self._active():
            return super().step()


class AdapterEngine(GenerationEngine):
    """An engine over a shared peft-wrapped decoder, generating with one adapter (or none)."""

    def __init__(self, base: GenerationEngine, peft_model: PeftModel, adapter: str | None):
        # The base engine's state as it is (its decoder is the model's own); nothing is copied.
        self.__dict__.update(base.__dict__)
        self.peft_model, self.adapter = peft_model, adapter

    def new_loop(self) -> DecodeLoop:
        return AdapterLoop(
            self.model,
            self.processor,
            self.decoder,
            self.cache_dtype,
            peft_model=self.peft_model,
            adapter=self.adapter,
        )


def adapter_folder(spec: ModelSpec) -> Path:
    folder = Path(spec.source).expanduser() / ADAPTER_DIR
    if not (folder / "adapter_config.json").is_file():
        raise ConfigError(
            f"serve.models: {spec.name} has base={spec.base!r} but {folder} holds no LoRA adapter "
            "(an export with export.merge_lora=false has adapter/adapter_config.json)"
        )
    return folder


def load_engines(
    specs: list[ModelSpec], device: str, precision: str | None, threads: int | None
) -> dict[str, GenerationEngine]:
    """Every served model's engine; adapters (``base:``) on their base's weights."""
    names = {spec.name for spec in specs}
    for spec in specs:
        if spec.base is not None and spec.base not in names:
            raise ConfigError(
                f"serve.models: {spec.name} has base={spec.base!r}, which is not a served model "
                f"(served: {sorted(names)})"
            )
    engines = {
        spec.name: load_engine(spec, device, precision, threads)
        for spec in specs
        if spec.base is None
    }
    adapters = [spec for spec in specs if spec.base is not None]
    for base_name in dict.fromkeys(spec.base for spec in adapters):
        ours = [spec for spec in adapters if spec.base == base_name]
        base = engines[base_name]
        if base.decoder is not base.model.decoder:  # a converted copy: no sharing possible
            log.warning(
                "serve.precision=%s converts the decoder: adapters of %s get a merged copy each "
                "(serve.precision=fp32 shares one)",
                base.precision,
                base_name,
            )
            for spec in ours:
                adapter_folder(spec)
                engines[spec.name] = load_engine(spec, device, precision, threads)
            continue
        peft_model = None
        for spec in ours:
            folder = str(adapter_folder(spec))
            with peft_quietly():
                if peft_model is None:
                    peft_model = PeftModel.from_pretrained(
                        base.model.decoder, folder, adapter_name=spec.name
                    )
                else:
                    peft_model.load_adapter(folder, adapter_name=spec.name)
            peft_model.eval()
            log.info("model %s: LoRA adapter %s on %s's weights", spec.name, folder, base_name)
        for spec in ours:
            engines[spec.name] = AdapterEngine(base, peft_model, spec.name)
        engines[base_name] = AdapterEngine(base, peft_model, None)
    return {spec.name: engines[spec.name] for spec in specs}
