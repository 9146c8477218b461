"""EnCodec's decoder, fast on CPU: transformers' own modules and weights, the same audio up to
float rounding.

Profiled on musicgen-small's codec (32 kHz, 30 s of audio, one thread): the plain
``EncodecModel.decode`` spends ~10 CPU-s, of which
- ~40 % in the upsampling stack working on whole-clip activations (64 channels x 960,000
  samples is 246 MB a tensor): every ELU, reflect pad, convolution and residual add streams it
  through memory;
- torch's oneDNN ``conv_transpose1d`` is 2x slower than a plain matrix product for these
  shapes, and leaves a layout copy behind;
- weight norm is recomputed at every call (35 ms for the first transposed convolution alone,
  which matters for the streamer's short decodes);
- the LSTM (2 layers of 1024, 50 steps per second of audio): ~25 %, bound by reading its
  recurrent weights (16 MB a layer) at every step; left as it is.

``FastCodecDecoder`` keeps the codec's modules (a copy of its decoder whose weight norm is
folded into plain weights once; the LSTM's and biases' tensors are shared, not copied), runs the
part up to and including the LSTM over the whole clip (the LSTM carries state), and the
upsampling stack after it in chunks of ``chunk_frames`` codec frames with ``margin_frames`` of
context on each side, discarded afterwards: the stack's receptive field is about 2 frames, so
each kept sample sees exactly the inputs it sees in one pass, and the activations stay in cache.
Transposed convolutions with ``kernel = 2 * stride`` (all of EnCodec's) run as one matrix
product plus an overlap-add.
"""

from __future__ import annotations

import copy
import threading
import weakref

import torch
from torch import nn
from torch.nn.utils import parametrize

CHUNK_FRAMES = 100  # ~2 s of audio per chunk: fastest of 25 / 50 / 100 / 200 measured
MARGIN_FRAMES = 4  # context each side; the stack after the LSTM sees ~2 frames each way


class MatmulConvTranspose1d(nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` with ``kernel_size == 2 * stride`` as one matrix product.

    Output position ``t * s + j`` receives input ``t`` through tap ``j`` and input ``t - 1``
    through tap ``j + s``: ``z = W^T x`` gives every tap of every input at once, and two
    shifted slices of it add up to the output (the same sums as the convolution, in another
    order)."""

    @classmethod
    def from_conv(cls, conv: nn.ConvTranspose1d) -> MatmulConvTranspose1d:
        new = cls.__new__(cls)
        new.__dict__ = conv.__dict__.copy()
        new._parameters = dict(conv._parameters)
        new._buffers = dict(conv._buffers)
        new._modules = dict(conv._modules)
        in_channels, out_channels, kernel = conv.weight.shape
        # [out * kernel, in]: row (o, m) holds tap m of output channel o.
        new.register_buffer(
            "matrix",
            conv.weight.detach().permute(1, 2, 0).reshape(out_channels * kernel, in_channels),
            persistent=False,
        )
        new._parameters["weight"] = None  # the matrix holds it; no second copy
        return new

    @staticmethod
    def supports(conv: nn.Module) -> bool:
        return (
            type(conv) is nn.ConvTranspose1d
            and conv.kernel_size[0] == 2 * conv.stride[0]
            and conv.groups == 1
            and conv.dilation[0] == 1
            and conv.padding[0] == 0
            and conv.output_padding[0] == 0
        )

    def forward(self, hidden_states: torch.Tensor, output_size=None) -> torch.Tensor:
        batch, _, length = hidden_states.shape
        stride = self.stride[0]
        out_channels = self.out_channels
        taps = torch.matmul(self.matrix, hidden_states)  # [B, out * 2s, L]
        taps = taps.view(batch, out_channels, 2, stride, length)
        out = hidden_states.new_empty(batch, out_channels, length + 1, stride)
        out[:, :, :length] = taps[:, :, 0].transpose(2, 3)
        out[:, :, length] = 0
        out[:, :, 1:] += taps[:, :, 1].transpose(2, 3)
        out = out.view(batch, out_channels, (length + 1) * stride)
        if self.bias is not None:
            out += self.bias[:, None]
        return out


def _fold_weight_norm(module: nn.Module) -> None:
    """In place, on a copy: every weight-normed submodule gets its current weight as a plain
    tensor. (Not ``parametrize.remove_parametrizations``: a deep copy shares its parametrized
    class with the original, and that function deletes the property from the class, which
    would break the loaded codec.)"""
    for sub in module.modules():
        if parametrize.is_parametrized(sub):
            weights = {name: getattr(sub, name).detach().clone() for name in sub.parametrizations}
            del sub._modules["parametrizations"]
            sub.__class__ = type(sub).__bases__[0]  # the module's own class again
            for name, value in weights.items():
                sub.register_parameter(name, nn.Parameter(value, requires_grad=False))
        for key, hook in list(getattr(sub, "_forward_pre_hooks", {}).items()):
            if type(hook).__name__ == "WeightNorm":  # the older nn.utils.weight_norm
                weight = hook.compute_weight(sub).detach().clone()
                del sub._forward_pre_hooks[key]
                for suffix in ("_g", "_v"):
                    delattr(sub, hook.name + suffix)
                sub.register_parameter(hook.name, nn.Parameter(weight, requires_grad=False))


class FastCodecDecoder(nn.Module):
    """Codes ``[batch, K, frames]`` -> audio ``[batch, channels, frames * hop]``, as
    ``codec.decode(codes[None], [None]).audio_values`` gives it (up to float rounding)."""

    def __init__(
        self,
        codec: nn.Module,
        *,
        chunk_frames: int = CHUNK_FRAMES,
        margin_frames: int = MARGIN_FRAMES,
    ):
        super().__init__()
        self.quantizer = codec.quantizer  # shared: an embedding lookup, nothing to speed up
        decoder = codec.decoder
        # Copy the decoder, sharing every tensor that weight norm does not compute.
        originals = {
            id(p): p
            for name, p in decoder.named_parameters()
            if "parametrizations" not in name and not name.endswith(("weight_g", "weight_v"))
        }
        self.decoder = copy.deepcopy(decoder, memo=originals)
        with torch.no_grad():
            _fold_weight_norm(self.decoder)
            for sub in list(self.decoder.modules()):
                conv = getattr(sub, "conv", None)
                if conv is not None and MatmulConvTranspose1d.supports(conv):
                    sub.conv = MatmulConvTranspose1d.from_conv(conv)
        self.decoder.requires_grad_(False).eval()
        layers = list(self.decoder.layers)
        lstm = [i for i, layer in enumerate(layers) if isinstance(_inner(layer), nn.LSTM)]
        split = lstm[-1] + 1 if lstm else 0
        self.whole = layers[:split]  # run over the whole clip (the LSTM carries state)
        self.stack = layers[split:]  # local: run in chunks
        self.hop = int(torch.tensor(codec.config.upsampling_ratios).prod())
        self.chunk_frames = int(chunk_frames)
        self.margin_frames = int(margin_frames)

    @staticmethod
    def supports(codec: nn.Module) -> bool:
        """Whether the codec decodes in one frame (MusicGen's codecs: no ``chunk_length``,
        no normalisation), the case this class reproduces."""
        config = getattr(codec, "config", None)
        return (
            config is not None
            and getattr(config, "chunk_length", None) is None
            and hasattr(codec, "decoder")
            and hasattr(codec, "quantizer")
        )

    @torch.inference_mode()
    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        hidden = self.quantizer.decode(codes.long().transpose(0, 1))  # [B, dim, frames]
        for layer in self.whole:
            hidden = layer(hidden)
        return self.upsample(hidden.contiguous())

    def upsample(self, hidden: torch.Tensor) -> torch.Tensor:
        """The stack after the LSTM, chunk by chunk: ``[B, C, frames]`` -> ``[B, ch, frames *
        hop]``."""
        frames = hidden.shape[-1]
        chunk, margin, hop = self.chunk_frames, self.margin_frames, self.hop
        if frames <= chunk + 2 * margin:
            return self._stack(hidden)
        pieces = []
        for start in range(0, frames, chunk):
            stop = min(frames, start + chunk)
            low, high = max(0, start - margin), min(frames, stop + margin)
            audio = self._stack(hidden[..., low:high])
            offset = (start - low) * hop
            pieces.append(audio[..., offset : offset + (stop - start) * hop])
        return torch.cat(pieces, dim=-1)

    def _stack(self, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.stack:
            hidden = layer(hidden)
        return hidden


def _inner(layer: nn.Module) -> nn.Module:
    return getattr(layer, "lstm", layer)


_FAST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_FAST_LOCK = threading.Lock()


def fast_decoder_for(codec: nn.Module) -> FastCodecDecoder | None:
    """The ``FastCodecDecoder`` of ``codec``, built once per codec object and shared (by every
    engine and streamer over it; its forward keeps no state), or None where it does not apply.
    Built from the codec's weights as they are then: a codec whose weights change later (it is
    frozen everywhere in this project) needs ``forget_fast_decoders()``."""
    if not FastCodecDecoder.supports(codec):
        return None
    with _FAST_LOCK:
        fast = _FAST.get(codec)
        if fast is None:
            fast = _FAST[codec] = FastCodecDecoder(codec)
        return fast


def forget_fast_decoders() -> None:
    with _FAST_LOCK:
        _FAST.clear()


def decode(codec: nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """Codes ``[B, K, frames]`` -> audio ``[B, channels, samples]``: the fast decoder where it
    applies, else the codec's own ``decode``."""
    fast = fast_decoder_for(codec)
    if fast is not None:
        return fast(codes)
    return codec.decode(codes[None], audio_scales=[None] * codes.shape[0]).audio_values
