"""The fast EnCodec decoder: same audio as the codec's own decode, the loaded codec untouched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize
from transformers import EncodecModel

from musicgen_train.generation.codec import FastCodecDecoder, MatmulConvTranspose1d
from musicgen_train.model.shapes import encodec_32khz_config


def _codec(seed: int = 0) -> EncodecModel:
    """musicgen-small's codec layout (upsampling 8, 5, 4, 4; 2-layer LSTM; reflect padding;
    weight norm), narrow so the test is quick."""
    config = encodec_32khz_config(hidden_size=16, num_filters=4, codebook_size=64, codebook_dim=16)
    torch.manual_seed(seed)
    codec = EncodecModel(config).eval()
    with torch.no_grad():  # weight-norm gains away from 1, so folding them matters
        for name, param in codec.named_parameters():
            if name.endswith("original0"):
                param.mul_(torch.rand_like(param) + 0.5)
            if "quantizer" in name or name.endswith("embed"):
                param.normal_()
        for layer in codec.quantizer.layers:
            layer.codebook.embed.normal_()
    return codec


def _plain(codec, codes):
    with torch.inference_mode():
        return codec.decode(codes[None], [None]).audio_values


@pytest.mark.parametrize("batch, frames, chunk", [(1, 57, 7), (3, 40, 10), (2, 9, 100)])
def test_fast_decode_equals_the_codecs_decode(batch, frames, chunk):
    codec = _codec()
    codes = torch.randint(0, 64, (batch, 4, frames), generator=torch.Generator().manual_seed(1))
    fast = FastCodecDecoder(codec, chunk_frames=chunk, margin_frames=4)
    ours = fast(codes)
    reference = _plain(codec, codes)
    assert ours.shape == reference.shape == (batch, 1, frames * 640)
    scale = reference.abs().max().item()
    assert scale > 1e-3
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5 * scale)


def test_chunks_without_context_would_differ():
    """The margin is what makes chunking exact: without it the chunk borders are audible."""
    codec = _codec()
    codes = torch.randint(0, 64, (1, 4, 40), generator=torch.Generator().manual_seed(2))
    reference = _plain(codec, codes)
    bare = FastCodecDecoder(codec, chunk_frames=5, margin_frames=0)(codes)
    assert (bare - reference).abs().max() > 1e-3 * reference.abs().max()


def test_loaded_codec_is_left_as_it_was():
    codec = _codec()
    keys = sorted(codec.state_dict())
    codes = torch.randint(0, 64, (1, 4, 12), generator=torch.Generator().manual_seed(3))
    before = _plain(codec, codes)
    fast = FastCodecDecoder(codec)
    # The copy has plain weights; the codec keeps its weight-norm parametrizations.
    assert not any(parametrize.is_parametrized(m) for m in fast.decoder.modules())
    assert any(parametrize.is_parametrized(m) for m in codec.decoder.modules())
    assert sorted(codec.state_dict()) == keys
    torch.testing.assert_close(_plain(codec, codes), before, rtol=0, atol=0)
    # The LSTM's weights are shared with the codec, not copied.
    assert fast.decoder.layers[1].lstm.weight_hh_l0 is codec.decoder.layers[1].lstm.weight_hh_l0


def test_folded_weight_is_weight_norm():
    codec = _codec()
    fast = FastCodecDecoder(codec)
    conv = codec.decoder.layers[0].conv
    gain = conv.parametrizations.weight.original0
    direction = conv.parametrizations.weight.original1
    norm = direction.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()
    torch.testing.assert_close(fast.decoder.layers[0].conv.weight, gain * direction / norm)


@pytest.mark.parametrize("cin, cout, stride, length", [(6, 5, 8, 9), (4, 3, 5, 1), (8, 2, 4, 30)])
def test_matmul_conv_transpose_equals_conv_transpose(cin, cout, stride, length):
    torch.manual_seed(4)
    conv = torch.nn.ConvTranspose1d(cin, cout, 2 * stride, stride)
    x = torch.randn(2, cin, length)
    expected = F.conv_transpose1d(x, conv.weight, conv.bias, stride=stride)
    assert MatmulConvTranspose1d.supports(conv)
    with torch.no_grad():
        ours = MatmulConvTranspose1d.from_conv(conv)(x)
    assert ours.shape == expected.shape == (2, cout, (length + 1) * stride)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert not MatmulConvTranspose1d.supports(torch.nn.ConvTranspose1d(4, 4, 3, 2))


def test_one_fast_decoder_per_codec_and_none_without_weights():
    from musicgen_train.generation.codec import decode, fast_decoder_for, forget_fast_decoders
    from musicgen_train.model.codec import CodecNotLoaded

    first, second = _codec(0), _codec(1)
    assert fast_decoder_for(first) is fast_decoder_for(first)
    assert fast_decoder_for(second) is not fast_decoder_for(first)
    assert fast_decoder_for(CodecNotLoaded(first.config)) is None
    codes = torch.randint(0, 64, (2, 4, 30), generator=torch.Generator().manual_seed(6))
    reference = _plain(second, codes)
    torch.testing.assert_close(decode(second, codes), reference, rtol=0, atol=1e-5)
    forget_fast_decoders()
    assert fast_decoder_for(first) is not None
