"""``musicgen-train generate`` as a user scripts it: prompts files from other editors, the file
types the output's suffix names, files it replaces, the seed it used, and Ctrl-C."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicgen_train.cli import main
from musicgen_train.generation.clip_files import clip_paths, slug
from musicgen_train.generation.decode import DecodeLoop

HOP = 640  # samples per codec frame at 32 kHz


def _generate(*args: str) -> int:
    return main(["generate", "model=tiny", "generation.precision=fp32", *args])


def test_a_notepad_prompts_file_bom_crlf_and_comment(tmp_path, capsys):
    """Notepad writes a BOM: it used to glue itself to the first line, so a leading ``#``
    comment became a prompt (a clip named 001-my-prompts.wav)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("# my prompts\r\ncafé jazz\r\n\r\ncafé jazz\r\n".encode("utf-8-sig"))
    out = tmp_path / "clips"
    args = [f"prompts={prompts}", f"output={out}", "duration=0.1", "generation.format=flac"]
    assert _generate(*args) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["001-cafe-jazz.flac", "002-cafe-jazz.flac"]
    assert sf.info(str(out / names[0])).format == "FLAC"
    capsys.readouterr()

    latin = tmp_path / "latin.txt"
    latin.write_bytes("café\n".encode("latin-1"))
    assert _generate(f"prompts={latin}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"musicgen-train: error: prompts={latin} is not UTF-8 text (byte 0xe9 at offset 3): "
        "save it as UTF-8"
    ]


def test_thousands_of_prompts_are_numbered_to_sort_in_order(tmp_path):
    prompts = [f"tune {i}" for i in range(1200)]
    paths = clip_paths(tmp_path, prompts, True, None)
    assert paths[0].name == "0001-tune-0.wav" and paths[-1].name == "1200-tune-1199.wav"
    assert sorted(paths) == paths  # 1000-... used to sort before 999-...
    assert clip_paths(tmp_path, ["x"] * 3, True, "mp3")[2].name == "003-x.mp3"
    assert slug("静かなピアノ") == "prompt" and slug("Café  Del-Mar!") == "cafe-del-mar"


@pytest.mark.parametrize("suffix, fmt", [(".ogg", "OGG"), (".mp3", "MP3"), (".FLAC", "FLAC")])
def test_the_output_suffix_names_the_format_written(tmp_path, suffix, fmt):
    out = tmp_path / f"clip{suffix}"
    assert _generate("prompt=x", "duration=0.3", f"output={out}") == 0
    info = sf.info(str(out))
    assert info.format == fmt and info.samplerate == 32_000
    assert info.duration == pytest.approx(0.3, abs=0.03)  # mp3 frames round it


def test_an_existing_output_is_replaced_and_said_so(tmp_path, capsys):
    out = tmp_path / "clip.wav"
    out.write_bytes(b"an older take")
    assert _generate("prompt=x", "duration=0.1", f"output={out}") == 0
    err = capsys.readouterr().err
    assert f"replacing 1 existing file(s) as their clips are done: {out}" in err
    assert sf.info(str(out)).frames == 3200


def test_seed_null_prints_a_seed_that_makes_the_clip_again(tmp_path, capsys):
    first, again = tmp_path / "a.wav", tmp_path / "b.wav"
    assert _generate("prompt=x", "duration=0.2", "seed=null", f"output={first}") == 0
    seed = re.search(r"seed (\d+)\)$", capsys.readouterr().out.strip()).group(1)
    assert _generate("prompt=x", "duration=0.2", f"seed={seed}", f"output={again}") == 0
    np.testing.assert_array_equal(sf.read(first)[0], sf.read(again)[0])


def _interrupt_at_step(monkeypatch, at: int) -> None:
    """Ctrl-C as Python delivers it: KeyboardInterrupt out of the ``at``-th decoder step."""
    step, calls = DecodeLoop.step, {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(DecodeLoop, "step", interrupted)


@pytest.mark.parametrize(
    "duration, window, interrupt_at, least_frames",
    [
        ("0.5", [], 15, 5),  # one pass: the rows' complete frames
        # long form, windows of 1.0 s by 0.6 s: stopped in the second window, so more than the
        # first window's 50 frames are kept.
        ("2.2", ["generation.window_seconds=1.0", "generation.extend_stride=0.6"], 70, 51),
    ],
)
def test_ctrl_c_keeps_what_was_made(
    tmp_path, capsys, monkeypatch, duration, window, interrupt_at, least_frames
):
    full = tmp_path / "full.wav"
    args = ["prompt=x", f"duration={duration}", "seed=3", *window]
    assert _generate(*args, f"output={full}") == 0
    out = tmp_path / "clip.wav"
    _interrupt_at_step(monkeypatch, interrupt_at)
    assert _generate(*args, f"output={out}") == 130
    kept = out.with_name("clip.interrupted.wav")
    assert not out.exists() and kept.exists()  # the name asked for only ever a whole clip
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2:] == [
        f"musicgen-train: kept the {sf.info(str(kept)).duration:.2f} s made so far in {kept}",
        "musicgen-train: interrupted",
    ]
    audio, whole = sf.read(kept)[0], sf.read(full)[0]
    frames = len(audio) // HOP
    assert len(audio) == frames * HOP and least_frames <= frames < len(whole) // HOP
    # The same seed made the same frames; the codec's last frames see no right context.
    same = (frames - 4) * HOP
    np.testing.assert_allclose(audio[:same], whole[:same], atol=1e-4)
    assert not list(Path(tmp_path).glob(".*partial*"))


def test_more_threads_than_cpus_is_warned(monkeypatch, caplog):
    """generation.threads=64 on a 2-CPU container ran silently, every step slower."""
    import torch

    from musicgen_train.generation.threads import configure_threads

    monkeypatch.setattr("musicgen_train.generation.threads.available_cpus", lambda: 1)
    before = torch.get_num_threads()
    try:
        with caplog.at_level("WARNING", logger="musicgen_train.generation.threads"):
            assert configure_threads(1) == 1 and not caplog.records
            assert configure_threads(2) == 2
        assert caplog.messages == [
            "generation.threads=2 is more than the 1 CPU(s) this process may use: the threads "
            "wait for each other and every step is slower; null uses 1"
        ]
    finally:
        torch.set_num_threads(before)


def test_an_empty_melody_file_is_named(tmp_path, capsys):
    empty = tmp_path / "hum.wav"
    sf.write(str(empty), np.zeros(0), 32_000)
    args = ["generate", "model=tiny-melody", "prompt=x", "duration=0.1", f"melody={empty}"]
    assert main([*args, f"output={tmp_path / 'a.wav'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"musicgen-train: error: melody={empty} holds no audio (0 samples)"]


def test_a_model_saved_with_nan_weights_is_one_line_at_load(tmp_path, tiny_loaded, capsys):
    # A checkpoint from a diverged run (before training stopped at a NaN loss) failed at its
    # first generation with int8's "min should be less than or equal to max" traceback.
    import copy

    model = copy.deepcopy(tiny_loaded.model)
    weight = model.decoder.model.decoder.layers[0].fc1.weight
    weight.data[0, :3] = float("nan")
    model.save_pretrained(tmp_path / "diverged")
    tiny_loaded.processor.save_pretrained(tmp_path / "diverged")
    capsys.readouterr()  # transformers' own progress while saving
    code = main(
        [
            "generate",
            f"model={tmp_path / 'diverged'}",
            "prompt=x",
            "duration=0.2",
            f"output={tmp_path / 'out.wav'}",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "holds 3 NaN or infinite value(s) in decoder.model.decoder.layers.0.fc1.weight" in err[0]
    assert not (tmp_path / "out.wav").exists()
