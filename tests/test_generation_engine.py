"""The generation engine: parity with transformers' generate, batch independence, precision,
threads, the ``generate`` command's errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from generation_helpers import assert_same_generation, recorder
from torch import nn

from musicgen_train.errors import ConfigError, UserError
from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.generation.decode import DecodeLoop, GenerationInputError, SamplingParams
from musicgen_train.generation.precision import prepare_decoder, resolve_precision
from musicgen_train.generation.quality import compare_precision
from musicgen_train.generation.threads import available_cpus, cgroup_cpu_limit, configure_threads

PROMPT = "a calm jazz tune with a walking bass"


def _transformers_audio(loaded, prompt: str, params: GenerationParams, **extra) -> np.ndarray:
    inputs = loaded.processor(text=[prompt], padding=True, return_tensors="pt")
    kwargs = params.generate_kwargs(loaded.frame_rate, loaded.model.decoder.num_codebooks)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        audio = loaded.model.generate(**inputs, **kwargs, **extra)
    return audio.numpy()


@pytest.mark.parametrize(
    "guidance_scale, top_k, top_p, temperature",
    [(3.0, 50, 0.0, 0.9), (1.0, 250, 0.0, 1.0), (2.5, 0, 0.8, 1.2)],
)
def test_fp32_audio_equals_transformers_generate(
    tiny_loaded, guidance_scale, top_k, top_p, temperature
):
    params = GenerationParams(
        duration=0.6,
        guidance_scale=guidance_scale,
        top_k=top_k,
        top_p=top_p,
        temperature=temperature,
        seed=11,
    )
    engine = GenerationEngine(tiny_loaded, precision="fp32")
    (ours_ids, ours_stop), (theirs_ids, theirs_stop) = recorder(), recorder()
    ours = engine.generate([PROMPT], params, stopping_criteria=ours_stop)
    reference = _transformers_audio(tiny_loaded, PROMPT, params, stopping_criteria=theirs_stop)
    assert ours.shape == (1, 1, round(0.6 * 32_000))
    assert ours_ids.ids.shape == theirs_ids.ids.shape  # every step, every codebook
    assert_same_generation(ours, reference[..., : ours.shape[-1]], ours_ids.ids, theirs_ids.ids)


def _tokens_alone(engine, prompt, params, seed) -> torch.Tensor:
    loop = engine.new_loop()
    row = engine.add(loop, prompt, params, seed=seed)
    while loop.rows:
        loop.step()
    return row.delayed_ids()


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
def test_rows_in_a_batch_give_what_they_give_alone(tiny_loaded, precision):
    """Different prompt lengths (padded cross-attention), CFG and no CFG, and a row joining a
    running batch (each row at its own position: the masked path) in one batch. At int8 too:
    activations are quantised row by row (int8.py); int4 quantises weights only (int4.py)."""
    engine = GenerationEngine(tiny_loaded, precision=precision)
    jobs = [
        ("rock", GenerationParams(duration=0.3, guidance_scale=3.0, seed=1)),
        (PROMPT + " and brushed drums", GenerationParams(duration=0.5, guidance_scale=1.0)),
        ("lofi hip hop beat", GenerationParams(duration=0.4, guidance_scale=2.0, top_k=20)),
    ]
    loop = engine.new_loop()
    rows = [engine.add(loop, p, params, seed=10 + i) for i, (p, params) in enumerate(jobs[:2])]
    for _ in range(3):
        loop.step()
    rows.append(engine.add(loop, jobs[2][0], jobs[2][1], seed=12))  # joins at step 3
    left = []
    while loop.rows:
        left += loop.step()
    assert {row.id for row in left} == {row.id for row in rows}
    differing = total = 0
    for i, (row, (prompt, params)) in enumerate(zip(rows, jobs, strict=True)):
        alone = _tokens_alone(engine, prompt, params, 10 + i)
        assert row.delayed_ids().shape == alone.shape
        differing += int((row.delayed_ids() != alone).sum())
        total += alone.numel()
    # Batched float arithmetic could flip a draw that lies on a boundary; on the tiny model it
    # never does (docs/generation.md gives the rate measured on musicgen-small's shape).
    assert differing == 0, f"{differing} of {total} tokens differ"


def test_batch_generate_rows_match_single_prompt_generate(tiny_loaded):
    engine = GenerationEngine(tiny_loaded, precision="fp32")
    params = GenerationParams(duration=0.3, guidance_scale=3.0, seed=5)
    batch = engine.generate(["a", "bright synth pop", PROMPT], params)
    for i, prompt in enumerate(["a", "bright synth pop", PROMPT]):
        alone = engine.generate([prompt], GenerationParams(duration=0.3, seed=5 + i))
        np.testing.assert_allclose(batch[i], alone[0], atol=1e-5)


def test_static_shape_step_matches_dynamic_step(tiny_loaded):
    """The CUDA graph path's arithmetic (whole-cache attention, masked) on CPU."""
    engine = GenerationEngine(tiny_loaded, precision="fp32")
    params = SamplingParams(max_new_tokens=12, guidance_scale=3.0, top_k=50)

    class Static(DecodeLoop):
        def _forward(self, ids, positions, cond):
            return self._forward_static(ids, torch.tensor(positions), cond)

    results = []
    for cls in (DecodeLoop, Static):
        loop = cls(tiny_loaded.model, tiny_loaded.processor, engine.decoder)
        rows = [loop.add_row(p, params, seed=3 + i) for i, p in enumerate(["x", PROMPT])]
        while loop.rows:
            loop.step()
        results.append(torch.stack([row.tokens for row in rows]))
    assert torch.equal(results[0], results[1])


def test_hooks_stream_tokens_and_stop_one_row(tiny_loaded):
    engine = GenerationEngine(tiny_loaded, precision="fp32")
    params = GenerationParams(duration=0.3, seed=2)
    loop = engine.new_loop()
    seen = []
    stop = {"now": None}
    kept = engine.add(loop, "keep", params, on_step=lambda row: seen.append(row.step))
    dropped = engine.add(loop, "drop", params, should_stop=lambda: stop["now"])
    for _ in range(4):
        loop.step()
    stop["now"] = "canceled"
    left = loop.step()
    assert dropped in left and dropped.stop_reason == "canceled" and dropped.step == 4
    while loop.rows:
        left += loop.step()
    assert kept in left and kept.stop_reason is None
    assert seen == list(range(1, kept.params.max_new_tokens + 1))
    assert torch.equal(kept.delayed_ids(), _tokens_alone(engine, "keep", params, 2))


def test_stopping_criteria_feed_a_codec_streamer_like_generate(tiny_loaded):
    """serve/batch.py streams through transformers-style stopping criteria: the streamer must
    see the same tokens as with transformers' generate."""
    from transformers import StoppingCriteriaList

    from musicgen_train.generation.streaming import CodecStreamer, TokenFeed

    params = GenerationParams(duration=0.4, seed=4)
    kwargs = params.generate_kwargs(tiny_loaded.frame_rate, 4)
    streams = []
    for use_engine in (True, False):
        streamer = CodecStreamer(
            tiny_loaded.model,
            batch_size=1,
            max_new_tokens=kwargs["max_new_tokens"],
            num_samples=round(0.4 * 32_000),
        )
        criteria = StoppingCriteriaList([TokenFeed(streamer)])
        if use_engine:
            GenerationEngine(tiny_loaded, precision="fp32").generate(
                ["feed"], params, stopping_criteria=criteria
            )
        else:
            inputs = tiny_loaded.processor(text=["feed"], return_tensors="pt")
            torch.manual_seed(4)
            tiny_loaded.model.generate(**inputs, **kwargs, stopping_criteria=criteria)
        streams.append(streamer.codes(0, streamer.total_frames))
    assert torch.equal(streams[0], streams[1])


def test_bad_requests_are_one_clear_line(tiny_loaded):
    engine = GenerationEngine(tiny_loaded, precision="fp32")
    with pytest.raises(GenerationInputError, match="prompt must be text"):
        engine.generate([None], GenerationParams(duration=0.2))
    with pytest.raises(GenerationInputError, match="more than 0"):
        engine.generate(["x"], GenerationParams(duration=0))
    # One window (the loop) cannot pass the position table; longer durations are long form
    # (tests/test_long_form.py), made window by window.
    with pytest.raises(GenerationInputError, match="beyond this model's limit of 40.88 s"):
        engine.sampling(GenerationParams(duration=41))
    # Reached by the service and the pyfunc model as well as the CLI: before any planning.
    with pytest.raises(GenerationInputError, match="long form makes up to 3600 s"):
        engine.generate(["x"], GenerationParams(duration=1e9))
    with pytest.raises(GenerationInputError, match="outside torch's range"):
        engine.generate(["x"], GenerationParams(duration=0.2, seed=2**64))


# --- precision -------------------------------------------------------------------------------


def test_precision_resolution():
    assert resolve_precision("auto", "cpu") == "int8"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ConfigError, match="choose one of"):
        resolve_precision("fp8", "cpu")
    with pytest.raises(ConfigError, match="CPU only"):
        resolve_precision("int8", "cuda")


def test_int8_quantises_decoder_linears_only_and_leaves_the_model(tiny_loaded):
    model = tiny_loaded.model
    decoder = prepare_decoder(model.decoder, "int8")
    from musicgen_train.generation.int8 import RowInt8Linear

    quantized = [m for m in decoder.modules() if isinstance(m, RowInt8Linear)]
    linears = [m for m in model.decoder.modules() if isinstance(m, nn.Linear)]
    # 2 layers x (4 self + 4 cross attention projections + 2 feed-forward) + 4 LM heads
    assert len(linears) == 2 * 10 + 4
    # fused: 2 layers x (QKV + out + 4 cross + 2 feed-forward) + one LM head matrix
    assert len(quantized) == 2 * 8 + 1
    assert all(type(m) is nn.Linear for m in linears)  # the loaded model is untouched
    unfused = prepare_decoder(model.decoder, "int8", fuse=False)
    assert len([m for m in unfused.modules() if isinstance(m, RowInt8Linear)]) == 24
    assert not any(type(m) is nn.Linear for m in unfused.modules())
    engine = GenerationEngine(tiny_loaded, precision="int8")
    assert engine.decoder is not model.decoder
    assert next(model.audio_encoder.parameters()).dtype == torch.float32
    audio = engine.generate([PROMPT], GenerationParams(duration=0.3, seed=1))
    assert audio.shape == (1, 1, 9600) and np.isfinite(audio).all()


def test_fused_projections_compute_what_the_separate_ones_do(tiny_loaded):
    import copy

    from musicgen_train.generation.precision import fuse_projections

    model = tiny_loaded.model
    fused = copy.deepcopy(model.decoder)
    fuse_projections(fused)
    assert not hasattr(fused, "lm_heads") and hasattr(fused, "fused_heads")
    seen = {}
    tokens = []
    for name, decoder in (("plain", model.decoder), ("fused", fused)):
        loop = DecodeLoop(model, tiny_loaded.processor, decoder)
        loop.observer = lambda row, scores, name=name: seen.setdefault(name, []).append(scores)
        row = loop.add_row(PROMPT, SamplingParams(max_new_tokens=10), seed=1)
        while loop.rows:
            loop.step()
        tokens.append(row.tokens)
    for a, b in zip(seen["plain"], seen["fused"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(tokens[0], tokens[1])


def test_lora_model_generates_like_transformers_and_merges_into_int8_copies(tiny_model_dir):
    """The training samples callback generates with LoRA adapters still attached."""
    from musicgen_train.model.lora import apply_lora
    from musicgen_train.sources import load_musicgen

    loaded = load_musicgen(str(tiny_model_dir))
    apply_lora(loaded.model, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, param in loaded.model.decoder.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # adapters that change the output
    loaded.model.eval()
    params = GenerationParams(duration=0.3, seed=6)
    ours = GenerationEngine(loaded, precision="fp32").generate([PROMPT], params)
    np.testing.assert_array_equal(ours, _transformers_audio(loaded, PROMPT, params)[..., :9600])
    int8 = GenerationEngine(loaded, precision="int8")
    assert not hasattr(int8.decoder, "peft_config")
    assert np.isfinite(int8.generate([PROMPT], params)).all()


def test_bf16_copy_and_fp32_shares_the_loaded_decoder(tiny_loaded):
    assert prepare_decoder(tiny_loaded.model.decoder, "fp32") is tiny_loaded.model.decoder
    engine = GenerationEngine(tiny_loaded, precision="bf16")
    assert next(engine.decoder.parameters()).dtype == torch.bfloat16
    assert next(tiny_loaded.model.decoder.parameters()).dtype == torch.float32
    audio = engine.generate([PROMPT], GenerationParams(duration=0.3, seed=1))
    assert audio.dtype == np.float32 and np.isfinite(audio).all()


def test_int8_quality_is_measured_against_fp32(tiny_loaded):
    model, processor = tiny_loaded.model, tiny_loaded.processor
    same = compare_precision(model, processor, "fp32", ["a", PROMPT], steps=8)
    assert same["kl_nats"] == pytest.approx(0.0, abs=1e-9)
    assert same["argmax_agreement"] == 1.0 and same["sampled_agreement"] == 1.0
    int8 = compare_precision(model, processor, "int8", ["a", PROMPT], steps=8)
    assert 0.0 < int8["kl_nats"] < 0.05
    assert 0.5 < int8["argmax_agreement"] <= 1.0


def test_kl_matches_an_independent_formula():
    """The KL in compare_precision is sum p (log p - log q); check the formula on known values."""
    p = torch.tensor([0.5, 0.25, 0.25])
    q = torch.tensor([0.25, 0.5, 0.25])
    logp, logq = p.log(), q.log()
    ours = float((logp.exp() * (logp - logq)).sum())
    assert ours == pytest.approx(0.25 * math.log(2))


# --- threads ---------------------------------------------------------------------------------


def _cgroup(tmp_path, files: dict, own: str = "0::/") -> tuple:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc = tmp_path / "proc_cgroup"
    proc.write_text(own + "\n")
    return root, proc


def test_cgroup_v2_quota(tmp_path, monkeypatch):
    root, proc = _cgroup(tmp_path, {"cpu.max": "150000 100000\n"})
    assert cgroup_cpu_limit(root, proc) == 1.5
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert available_cpus(root, proc) == 2  # 1.5 CPUs of quota: 2 threads


def test_cgroup_v2_own_group_and_no_limit(tmp_path, monkeypatch):
    root, proc = _cgroup(
        tmp_path,
        {"cpu.max": "max 100000", "app/job/cpu.max": "100000 100000"},
        own="0::/app/job",
    )
    assert cgroup_cpu_limit(root, proc) == 1.0
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    assert available_cpus(root, proc) == 1
    root, proc = _cgroup(tmp_path / "b", {"cpu.max": "max 100000"})
    assert cgroup_cpu_limit(root, proc) is None
    assert available_cpus(root, proc) == 8  # only the affinity mask limits


def test_cgroup_v1_quota_and_affinity_below_quota(tmp_path, monkeypatch):
    root, proc = _cgroup(
        tmp_path, {"cpu/cpu.cfs_quota_us": "400000", "cpu/cpu.cfs_period_us": "100000"}
    )
    assert cgroup_cpu_limit(root, proc) == 4.0
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2})
    assert available_cpus(root, proc) == 3
    root, proc = _cgroup(
        tmp_path / "b", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}
    )
    assert cgroup_cpu_limit(root, proc) is None


def test_threads_setting_overrides_and_default_caps(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert configure_threads(3) == 3 and torch.get_num_threads() == 3
        monkeypatch.setattr("musicgen_train.generation.threads.available_cpus", lambda: 2)
        assert configure_threads(None) == 2  # torch's 3 capped at what the process may use
        torch.set_num_threads(1)
        assert configure_threads(None) == 1  # a lower count someone chose is kept
        with pytest.raises(ConfigError, match="generation.threads"):
            configure_threads(0)
    finally:
        torch.set_num_threads(before)


# --- config and command ------------------------------------------------------------------------


def test_generation_config_is_validated_at_composition():
    from musicgen_train.config import load_config

    cfg = load_config(["prompt=a b", "duration=3", "output=x.wav", "seed=9"])
    assert cfg.generation.prompt == "a b" and cfg.generation.duration == 3
    assert cfg.output == "x.wav" and cfg.seed == 9  # top-level, shared with import
    assert cfg.generation.precision == "auto"
    for bad, message in [
        ("generation.precision=fp64", "generation.precision='fp64'"),
        ("generation.threads=0", "generation.threads=0"),
        ("duration=-1", "duration=-1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config([bad])


def test_engine_takes_precision_from_the_exported_config(tiny_loaded, monkeypatch):
    from musicgen_train.config import load_config
    from musicgen_train.generation.config import export_defaults

    for key in ("PRECISION", "THREADS", "CUDA_GRAPHS"):
        monkeypatch.delenv(f"MUSICGEN_GENERATION_{key}", raising=False)
    assert GenerationEngine(tiny_loaded).precision == "fp32"  # no config: plain fp32
    export_defaults(load_config(["generation.precision=bf16"]))
    assert GenerationEngine(tiny_loaded).precision == "bf16"


def test_cuda_graphs_without_cuda_is_one_clear_line(tiny_loaded):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(UserError, match="needs CUDA"):
        GenerationEngine(tiny_loaded, precision="fp32", cuda_graphs=True)


def test_generate_command_writes_a_clip_and_reports_the_real_time_factor(tmp_path, capsys):
    import soundfile as sf

    from musicgen_train.cli import main

    out = tmp_path / "clips" / "one.wav"
    args = ["generate", "model=tiny", "prompt=soft piano", "duration=0.3", "seed=1"]
    assert main([*args, f"output={out}", "generation.precision=fp32"]) == 0
    audio, rate = sf.read(out)
    assert rate == 32_000 and audio.shape == (9600,)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert str(out) in last and "real-time factor" in last


def test_generate_command_prompts_file_writes_a_folder(tmp_path, capsys):
    from musicgen_train.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("first tune\n\n# a comment\nsecond tune\nthird tune\n")
    out = tmp_path / "folder"
    args = [f"prompts={prompts}", f"output={out}", "duration=0.2", "generation.batch_size=2"]
    assert main(["generate", "model=tiny", *args]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["001-first-tune.wav", "002-second-tune.wav", "003-third-tune.wav"]
    assert str(out) in capsys.readouterr().out.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["prompt= "], "prompt is empty"),
        (["prompt=x", "duration=0"], "duration=0"),
        (["prompt=x", "generation.extend_stride=30"], "must be below generation.window_seconds"),
        (["prompt=x", "output={blocker}/a.wav"], "is a file, not a folder"),
        (["prompt=x", "output={tmp}/a.mp4"], "ending in .wav, .flac, .ogg, .mp3"),
        # Opus cannot hold MusicGen's 32 kHz: refused before generating, not after.
        (["prompt=x", "output={tmp}/a.opus"], "ending in .wav, .flac, .ogg, .mp3"),
        # A folder named clips.wav was created for one clip a prompt.
        (["prompts={prompts}", "output={tmp}/clips.wav"], "prompts= writes one clip a prompt"),
        (["prompts={prompts}", "generation.format=aac"], "generation.format='aac'"),
        (["prompt=x", "output={tmp}/a.wav", "generation.format=flac"], "disagree"),
        (["prompts={tmp}/missing.txt"], "cannot read it"),
        # nan compares False with everything: it used to pass "<= 0" and generate 8 s.
        (["prompt=x", "duration=nan"], "duration=nan is not allowed"),
        (["prompt=x", "generation.window_seconds=nan"], "window_seconds=nan"),
        # Long form planned 1e9 s window by window and filled memory before the first step.
        (["prompt=x", "duration=1e9"], "long form makes up to 3600 s"),
        (["prompt=x", "duration=inf"], "long form makes up to 3600 s"),
        (["prompt=x", "duration=0.1", "seed=99999999999999999999"], "between 0 and 4294967295"),
        (["prompt=x", "seed=abc"], "seed='abc' is not allowed"),
        # os.access says yes to root in /proc; only a real write tells.
        (["prompt=x", "output=/proc/a.wav"], "cannot write into /proc"),
    ],
)
def test_generate_command_bad_input_is_one_error_line(tmp_path, capsys, args, message):
    from musicgen_train.cli import main

    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\n")
    args = [a.format(tmp=tmp_path, blocker=blocker, prompts=prompts) for a in args]
    assert main(["generate", "model=tiny", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("musicgen-train: error:") and message in err[0]


def test_a_row_joins_a_running_batch_with_a_narrower_cache(tiny_loaded):
    """The masked path writes K/V with index_put, which does not cast: with a bf16 cache (the
    int8 engine's on CPUs with native bf16) a joining row used to fail with a dtype error."""
    loop = DecodeLoop(tiny_loaded.model, tiny_loaded.processor, cache_dtype=torch.bfloat16)
    params = SamplingParams(max_new_tokens=6, guidance_scale=3.0, top_k=50)
    first = loop.add_row("x", params, seed=1)
    loop.step()
    second = loop.add_row("y", params, seed=2)  # one position behind: the masked path
    while loop.rows:
        loop.step()
    assert first.step == second.step == 6
    assert loop._k == [] and first.codes().shape == (4, 3)


def test_a_prompt_beyond_t5s_limit_is_cut_with_a_warning(tiny_loaded, caplog):
    from musicgen_train.generation.text_condition import MAX_PROMPT_TOKENS, text_states

    loop = DecodeLoop(tiny_loaded.model, tiny_loaded.processor)
    short = "warm lo-fi piano with soft drums"
    pasted = " ".join(["slow jazz ballad with brushed drums"] * 200)  # ~1,400 tokens
    with caplog.at_level("WARNING", logger="musicgen_train.generation.text_condition"):
        assert text_states(loop, pasted).shape[1] == MAX_PROMPT_TOKENS
        short_states = text_states(loop, short)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert f"cut to its first {MAX_PROMPT_TOKENS}" in warning and "slow jazz ballad" in warning
    # below the limit, the encoding is transformers' own (no truncation, no warning)
    expected = len(tiny_loaded.processor(text=[short])["input_ids"][0])
    assert short_states.shape[1] == expected < MAX_PROMPT_TOKENS
