"""Text -> audio: tokenise, sample codes with the decode loop, decode them with EnCodec.

``GenerationEngine`` is what every stage uses (evaluate, the training samples callback, the
notebooks, the pyfunc model, the service). It runs ``decode.DecodeLoop`` over the loaded model's
own modules at ``generation.precision`` with ``generation.threads`` CPU threads; at fp32 a seeded
row gives the same audio as transformers' ``generate`` with ``torch.manual_seed(seed)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from musicgen_train.generation.codec import FastCodecDecoder, fast_decoder_for
from musicgen_train.generation.config import (
    env_cuda_graphs,
    env_extend_stride,
    env_precision,
    env_threads,
    env_window_seconds,
)
from musicgen_train.generation.continuation import prompt_codes
from musicgen_train.generation.decode import (
    DecodeLoop,
    GenerationInputError,
    Row,
    SamplingParams,
    frames_for,
)
from musicgen_train.generation.melody import row_chroma
from musicgen_train.generation.precision import cache_dtype, prepare_decoder, resolve_precision
from musicgen_train.generation.threads import configure_threads
from musicgen_train.model.families import is_melody
from musicgen_train.model.loader import LoadedModel


@dataclass(frozen=True)
class GenerationParams:
    duration: float = 8.0  # seconds
    guidance_scale: float = 3.0  # classifier-free guidance; 1.0 turns it off
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0  # 0 = off
    seed: int | None = None

    def generate_kwargs(self, frame_rate: float, num_codebooks: int) -> dict:
        """The same request as arguments of transformers' ``generate``."""
        # The delay pattern costs num_codebooks - 1 steps before the last codebook catches up.
        # Round up: round() would give 12 frames (0.24 s) for 0.25 s at 50 frames/s.
        kwargs = {
            "do_sample": True,
            "max_new_tokens": frames_for(self.duration, frame_rate) + num_codebooks - 1,
            "guidance_scale": self.guidance_scale if self.guidance_scale > 1.0 else None,
            "temperature": self.temperature,
            "top_k": self.top_k,
        }
        if self.top_p > 0:
            kwargs["top_p"] = self.top_p
        return kwargs

    def sampling(self, frame_rate: float, num_codebooks: int) -> SamplingParams:
        kwargs = self.generate_kwargs(frame_rate, num_codebooks)
        return SamplingParams(
            max_new_tokens=kwargs["max_new_tokens"],
            guidance_scale=kwargs["guidance_scale"],
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=kwargs.get("top_p"),
        )

    def batch_key(self) -> tuple:
        """Jobs whose keys are equal can share one ``generate`` call."""
        return tuple(v for k, v in asdict(self).items() if k != "seed")


class GenerationEngine:
    """The model at one precision, ready to generate.

    ``precision``: ``auto`` | ``fp32`` | ``bf16`` | ``fp16`` | ``int8`` | ``int4`` (see
    ``precision.py``);
    ``threads``: torch's CPU threads (None: at most the CPUs this process may use);
    ``cuda_graphs``: the decoder step captured as a ``torch.cuda.CUDAGraph`` and replayed
    (CUDA only; see ``cuda.py``). Each None means: as the config said (``generation.*``, exported
    by the CLI), else fp32 / torch's threads capped / off."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        precision: str | None = None,
        threads: int | None = None,
        cuda_graphs: bool | None = None,
        window_seconds: float | None = None,
        extend_stride: float | None = None,
    ):
        self.loaded = loaded
        self.model = loaded.model
        self.processor = loaded.processor
        self.precision = resolve_precision(precision or env_precision(), self.device)
        self.threads = configure_threads(threads if threads is not None else env_threads())
        self.decoder = prepare_decoder(self.model.decoder, self.precision)
        self.cache_dtype = cache_dtype(self.precision, self.device)
        self.cuda_graphs = env_cuda_graphs() if cuda_graphs is None else bool(cuda_graphs)
        if self.cuda_graphs:
            from musicgen_train.generation.cuda import check_cuda_graphs

            check_cuda_graphs(self.device)
        # Long form: clips longer than the window are made window by window (long_form.py).
        window = window_seconds if window_seconds is not None else env_window_seconds()
        self.window_seconds = min(float(window), self.max_duration)
        stride = extend_stride if extend_stride is not None else env_extend_stride()
        self.extend_stride = float(stride)

    @property
    def sample_rate(self) -> int:
        return self.loaded.sample_rate

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_codebooks(self) -> int:
        return int(self.model.config.decoder.num_codebooks)

    @property
    def condition_positions(self) -> int:
        """Positions a melody model's chroma takes before the tokens (its prompt's text takes
        as many more as it has tokens); 0 for a model that cross-attends to its condition."""
        return int(self.model.config.chroma_length) if is_melody(self.model) else 0

    @property
    def max_duration(self) -> float:
        """The longest clip the model's position table allows, in seconds (for a melody model,
        after its chroma; a long prompt text may leave a little less)."""
        steps = int(self.model.config.decoder.max_position_embeddings) - 1
        steps -= self.condition_positions
        return (steps - self.num_codebooks + 1) / self.loaded.frame_rate

    def _generate_kwargs(self, params: GenerationParams) -> dict:
        """The request as transformers' ``generate`` arguments (streamers size themselves by
        its ``max_new_tokens``)."""
        return params.generate_kwargs(self.loaded.frame_rate, self.num_codebooks)

    def new_loop(self) -> DecodeLoop:
        """An empty running batch over this engine's decoder (for continuous batching)."""
        if self.cuda_graphs:
            from musicgen_train.generation.cuda import GraphedDecodeLoop

            return GraphedDecodeLoop(self.model, self.processor, self.decoder, self.cache_dtype)
        return DecodeLoop(self.model, self.processor, self.decoder, self.cache_dtype)

    def sampling(self, params: GenerationParams) -> SamplingParams:
        if params.duration <= 0:
            raise GenerationInputError(f"duration={params.duration} must be more than 0 seconds")
        if params.duration > self.max_duration + 1e-9:
            raise GenerationInputError(
                f"duration={params.duration} is beyond this model's limit of "
                f"{self.max_duration:.2f} s"
            )
        return params.sampling(self.loaded.frame_rate, self.num_codebooks)

    def add(
        self,
        loop: DecodeLoop,
        prompt: str,
        params: GenerationParams,
        *,
        seed: int | None = None,
        on_step: Callable[[Row], None] | None = None,
        should_stop: Callable[[], str | None] | None = None,
        tag: object = None,
        audio_prompt=None,
        melody=None,
    ) -> Row:
        """Put one request into ``loop``; its seed is ``seed``, else ``params.seed``.
        ``audio_prompt``: float audio ``[channels, samples]`` at ``sample_rate`` that the row
        continues (``params.duration`` seconds are generated after it; ``decode`` gives the
        prompt's frames, as the codec re-synthesises them, then the continuation).
        ``melody``: a melody model's reference (a file, its bytes, or float audio ``[C, S]`` at
        ``sample_rate``)."""
        seed = params.seed if seed is None else seed
        prefix = None if audio_prompt is None else self.prompt_codes(audio_prompt, params)
        chroma = row_chroma(self.loaded, 1, melody, {}, self.sample_rate, self.window_seconds)
        return loop.add_row(
            prompt,
            self.sampling(params),
            seed=seed,
            on_step=on_step,
            should_stop=should_stop,
            tag=tag,
            prefix=prefix,
            chroma=chroma.at(0)[0],
        )

    def prompt_codes(self, audio, params: GenerationParams | None = None) -> torch.Tensor:
        """An audio prompt's codec codes ``[K, frames]``; with ``params``, checked to leave
        room for ``params.duration`` more seconds in the model's positions."""
        codes = prompt_codes(self.model, audio)
        seconds = codes.shape[-1] / self.loaded.frame_rate
        one_pass = params is not None and params.duration <= self.window_seconds + 1e-9
        if one_pass and seconds + params.duration > self.max_duration + 1e-9:
            raise GenerationInputError(
                f"audio_prompt ({seconds:.2f} s) + duration={params.duration:g} is beyond "
                f"this model's limit of {self.max_duration:.2f} s"
            )
        if seconds >= self.window_seconds:
            raise GenerationInputError(
                f"audio_prompt is {seconds:.2f} s long: it must be shorter than the model's "
                f"window of {self.window_seconds:g} s"
            )
        return codes

    @torch.inference_mode()
    def decode(self, rows: Sequence[Row]) -> np.ndarray:
        """Finished rows (of the same length) -> float32 audio ``[rows, channels, samples]``."""
        stereo = self.model.config.decoder.audio_channels == 2
        return self.decode_codes(torch.stack([row.codes(stereo) for row in rows]))

    @torch.inference_mode()
    def decode_codes(self, codes: torch.Tensor) -> np.ndarray:
        """Codes ``[B, K, frames]`` -> float32 audio ``[B, channels, samples]`` (EnCodec, fp32).

        Through ``FastCodecDecoder`` (the codec's own modules, weight norm folded once, the
        upsampling stack in chunks: the same audio up to float rounding, ~1.5x faster on CPU)
        when the codec allows it, else the codec's ``decode``. Stereo codes interleave the
        channels' codebooks (left's k at 2k): each channel is decoded on its own."""
        stereo = self.model.config.decoder.audio_channels == 2
        codes = codes.to(self.device)
        fast = self._fast_codec()
        if fast is not None:
            if stereo:  # apart, as transformers does (a batch of 2 rounds differently)
                audio = torch.cat([fast(codes[:, ::2]), fast(codes[:, 1::2])], dim=1)
            else:
                audio = fast(codes)
            return audio.float().cpu().numpy()
        codes = codes[None]  # [1, B, K, frames]
        codec = self.model.audio_encoder
        scales = [None] * codes.shape[1]
        if stereo:
            left = codec.decode(codes[:, :, ::2], audio_scales=scales).audio_values
            right = codec.decode(codes[:, :, 1::2], audio_scales=scales).audio_values
            audio = torch.cat([left, right], dim=1)
        else:
            audio = codec.decode(codes, audio_scales=scales).audio_values
        return audio.float().cpu().numpy()

    def _fast_codec(self) -> FastCodecDecoder | None:
        """The fast decoder of the model's current codec (one per codec object, shared; training
        swaps the codec in and out), or None where it does not apply."""
        return fast_decoder_for(self.model.audio_encoder)

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[str],
        params: GenerationParams | None = None,
        *,
        seeds: Sequence[int | None] | None = None,
        stopping_criteria=None,
        on_step: Callable[[Row], None] | None = None,
        on_codes: Callable[[int, torch.Tensor], None] | None = None,
        audio_prompt=None,
        melody=None,
        **conditioning,
    ) -> np.ndarray:
        """Audio for each prompt as float32 ``[batch, channels, samples]`` at ``sample_rate``.

        ``melody``: a melody model's reference (a file, or float audio ``[C, S]`` at
        ``sample_rate``), for every row, or a list of them (None: no melody), one per row;
        ``conditioning``: a melody model's ``input_features`` ``[batch, frames, 12]`` as its own
        ``generate`` takes them (see ``generation.melody``), one chroma per row. Beyond the
        window, each window reads the reference from its own start (``melody.RowChroma``);
        ``input_features`` serve every window as they are.

        Row ``i`` is seeded with ``seeds[i]``, else ``params.seed + i`` (so the first prompt of
        a batch sounds as it does alone with ``params.seed``), else from torch's global RNG.
        ``stopping_criteria`` (transformers' ``StoppingCriteria``) are called after every step
        with ``input_ids`` ``[batch * codebooks, length]`` as ``generate`` would hold them; when
        all say stop, generation ends and the audio of the frames made so far is returned.

        ``audio_prompt``: float audio ``[channels, samples]`` at ``sample_rate``, continued by
        every row. The result then holds the prompt (its ``F = ceil(samples / hop)`` codec
        frames, re-synthesised) followed by ``params.duration`` s of continuation, as
        transformers' ``generate`` with ``input_values`` returns it.

        ``params.duration`` beyond ``window_seconds``: long form (``long_form.py``), windows
        advancing by ``extend_stride`` seconds, each continuing the previous one's last codes
        (``on_step`` sees each window's rows, ``on_codes`` the clip's frames as they become
        final (``long_form_codes``); with ``stopping_criteria`` it stays one pass, within the
        model's positions)."""
        params = params or GenerationParams()
        if seeds is None:
            seeds = [None if params.seed is None else params.seed + i for i in range(len(prompts))]
        chroma = row_chroma(
            self.loaded, len(prompts), melody, conditioning, self.sample_rate, self.window_seconds
        )
        prefix = None if audio_prompt is None else self.prompt_codes(audio_prompt, params)
        hop = int(round(self.sample_rate / self.loaded.frame_rate))
        wanted = int(round(params.duration * self.sample_rate))
        if prefix is not None:
            wanted += prefix.shape[-1] * hop
        # Streaming and cancellation (stopping_criteria) see one sequence of ids: one pass.
        if params.duration > self.window_seconds + 1e-9 and stopping_criteria is None:
            from musicgen_train.generation.long_form import long_form_codes

            made = long_form_codes(
                self,
                list(prompts),
                params,
                list(seeds),
                window=self.window_seconds,
                stride=self.extend_stride,
                prefixes=[prefix] * len(prompts),
                on_step=on_step,
                on_codes=on_codes,
                chroma=chroma,
            )
            audio = self.decode_codes(torch.stack(made.codes))
            return np.ascontiguousarray(audio[..., :wanted])
        loop = self.new_loop()
        sampling = self.sampling(params)
        rows = [
            loop.add_row(
                prompt, sampling, seed=seed, on_step=on_step, prefix=prefix, chroma=melody_row
            )
            for prompt, seed, melody_row in zip(prompts, seeds, chroma.at(0), strict=True)
        ]
        while loop.rows:
            loop.step()
            if stopping_criteria is not None and self._should_stop(rows, stopping_criteria):
                loop.remove(list(loop.rows))
        audio = self.decode(rows)
        return np.ascontiguousarray(audio[..., :wanted])

    @staticmethod
    def _should_stop(rows: list[Row], criteria) -> bool:
        ids = torch.cat([row.tokens[:, : row.step + 1] for row in rows])
        done = torch.zeros(ids.shape[0], dtype=torch.bool)
        for criterion in criteria:
            done = done | criterion(ids, None).cpu()
        return bool(done.all())
