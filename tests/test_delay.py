"""The delay pattern of training labels: hand-written formula, generate's own pattern, padding."""

import pytest
import torch

from musicgen_train.model.delay import IGNORE_INDEX, delay_codes, delayed_labels, undelay_labels


@pytest.fixture(scope="module")
def model(tiny_loaded):
    return tiny_loaded.model


def hand_delayed(codes: torch.Tensor, pad: int) -> torch.Tensor:
    """Independent formula: out[b, k, t] = codes[b, k, t - k] when 0 <= t - k < T, else pad."""
    batch, num_codebooks, frames = codes.shape
    out = torch.full((batch, num_codebooks, frames + num_codebooks - 1), pad)
    for b in range(batch):
        for k in range(num_codebooks):
            for t in range(frames + num_codebooks - 1):
                if 0 <= t - k < frames:
                    out[b, k, t] = codes[b, k, t - k]
    return out


def test_delay_matches_hand_written_formula(model):
    codes = torch.randint(0, 64, (3, 4, 7), generator=torch.Generator().manual_seed(0))
    pad = model.config.decoder.pad_token_id
    assert pad == 64
    assert torch.equal(delay_codes(model.decoder, codes, pad), hand_delayed(codes, pad))


def test_labels_layout_ignore_index_and_inverse(model):
    codes = torch.randint(0, 64, (2, 4, 5), generator=torch.Generator().manual_seed(1))
    labels = delayed_labels(model.decoder, codes)
    assert labels.shape == (2, 5 + 4 - 1, 4)
    expected = hand_delayed(codes, 64).transpose(1, 2)
    expected[expected == 64] = IGNORE_INDEX
    assert torch.equal(labels, expected)
    # codebook k ignores exactly its first k and last K-1-k positions
    for k in range(4):
        ignored = (labels[0, :, k] == IGNORE_INDEX).nonzero().flatten().tolist()
        assert ignored == list(range(k)) + list(range(k + 5, 8))
    assert torch.equal(undelay_labels(labels), codes)


def test_padding_frames_are_ignored(model):
    codes = torch.randint(0, 64, (2, 4, 6), generator=torch.Generator().manual_seed(2))
    padding_mask = torch.ones(2, 6, dtype=torch.bool)
    padding_mask[1, 4:] = False  # the second item has 4 real frames
    labels = delayed_labels(model.decoder, codes, padding_mask)
    assert torch.equal(labels[0], delayed_labels(model.decoder, codes[:1])[0])
    short = delayed_labels(model.decoder, codes[1:, :, :4])[0]  # [4 + 3, 4]
    assert torch.equal(labels[1, : short.shape[0]], short)
    assert (labels[1, short.shape[0] :] == IGNORE_INDEX).all()
    assert (labels[1] != IGNORE_INDEX).sum() == 4 * 4


def test_labels_equal_the_pattern_generate_uses(model):
    """Sample with ``generate``, capture the delayed sequence it decoded (after its own
    ``apply_delay_pattern_mask``) and the codes it handed to the codec: delaying those codes
    with our function must give back generate's sequence exactly."""
    decoder = model.decoder
    captured: dict = {}
    apply = decoder.apply_delay_pattern_mask

    def spy_apply(ids, mask):
        captured["delayed"] = out = apply(ids, mask)
        return out

    original_decode = model.audio_encoder.decode

    def spy_decode(codes, *args, **kwargs):
        captured["codes"] = codes
        return original_decode(codes, *args, **kwargs)

    frames, num_codebooks = 6, 4
    decoder.apply_delay_pattern_mask = spy_apply
    model.audio_encoder.decode = spy_decode
    try:
        torch.manual_seed(0)
        model.generate(
            input_ids=torch.ones(2, 3, dtype=torch.long),
            do_sample=True,
            guidance_scale=None,
            max_new_tokens=frames + num_codebooks - 1,
        )
    finally:
        del decoder.apply_delay_pattern_mask
        del model.audio_encoder.decode
    codes = captured["codes"][0]  # [1, B, K, T] -> [B, K, T]
    assert codes.shape == (2, num_codebooks, frames)
    generated = captured["delayed"].reshape(2, num_codebooks, -1)
    # generate's sequence starts with the decoder start column; ours is what follows it
    assert (generated[:, :, 0] == 64).all()
    assert torch.equal(delay_codes(decoder, codes, 64), generated[:, :, 1:])
