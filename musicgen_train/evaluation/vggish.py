"""VGGish (Hershey et al. 2017), the embedder of the classic FAD, as a small torch network.

Layer names follow torchvggish (``features.*``, ``embeddings.*``), so its converted release
``vggish-10086976.pth`` (a torch state_dict of Google's published weights) loads as it is:
``eval.vggish.weights=/path/to/vggish-10086976.pth``. No weights file, no VGGish: the FAD of this
embedder is then skipped, never computed with random weights.

Input: 16 kHz mono -> log-mel (25 ms window, 10 ms hop, 64 bands 125-7500 Hz, log(mel + 0.01))
-> non-overlapping 0.96 s patches of 96x64 -> 128-d per patch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from musicgen_train.evaluation.embedder_base import Embedder, EmbedderUnavailable, state_dict_digest
from musicgen_train.evaluation.logmel import frame, log_mel_spectrogram

PATCH_FRAMES = 96  # 0.96 s of 10 ms log-mel frames
MEL_BANDS = 64


REAL_CHANNELS = (64, 128, 256, 256, 512, 512)
POOL_AFTER = (0, 1, 3, 5)  # max-pool after these convolutions: 96x64 -> 6x4


class VGGish(nn.Module):
    """Six 3x3 convolutions in four pooled blocks, then three dense layers down to 128.

    The widths are arguments only so that tests can build a small one; ``load_vggish`` reads them
    from the weights file, so the real release always gets the real shape.
    """

    def __init__(
        self,
        channels=REAL_CHANNELS,
        hidden: int = 4096,
        embedding: int = 128,
        embedding_relu: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        previous = 1
        for index, width in enumerate(channels):
            layers += [nn.Conv2d(previous, width, kernel_size=3, padding=1), nn.ReLU(True)]
            if index in POOL_AFTER:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            previous = width
        self.features = nn.Sequential(*layers)
        dense: list[nn.Module] = [
            nn.Linear(previous * 6 * 4, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, embedding),
        ]
        # No ReLU after the last layer by default: Google's VGGish (whose embeddings audiocraft
        # scored) and fadtk (which drops torchvggish's final ReLU) give signed embeddings; fadtk's
        # fma_pop ``vggish.mu`` has 72 of 128 entries negative. ``embedding_relu=True`` keeps
        # torchvggish's rectified output, for comparing with numbers made that way.
        if embedding_relu:
            dense.append(nn.ReLU(True))
        self.embeddings = nn.Sequential(*dense)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """``[batch, 1, 96, 64]`` log-mel patches -> ``[batch, embedding]``."""
        x = self.features(patches)
        # Flatten in TensorFlow's (height, width, channels) order, as the weights were trained.
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return self.embeddings(x)


def load_vggish(weights: str | Path, embedding_relu: bool = False) -> VGGish:
    """A VGGish holding the weights of a torch state_dict file (torchvggish's layout)."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise EmbedderUnavailable(
            f"VGGish weights file {path} does not exist: fix eval.vggish.weights, or remove "
            "vggish from eval.embedders"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated download, an HTML error page, a pickled model, ...
        raise EmbedderUnavailable(
            f"VGGish weights file {path} cannot be read ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:120]}): download vggish-10086976.pth again"
        ) from err
    if isinstance(state, dict):
        state = state.get("state_dict", state)
    if not isinstance(state, dict):
        state = {}  # a bare tensor or list: refused below as not a VGGish state_dict
    wanted = {k: v for k, v in state.items() if k.startswith(("features.", "embeddings."))}
    convs = sorted(
        (int(k.split(".")[1]), v.shape[0])
        for k, v in wanted.items()
        if k.startswith("features.") and k.endswith(".weight")
    )
    if len(convs) != len(REAL_CHANNELS) or "embeddings.4.weight" not in wanted:
        raise EmbedderUnavailable(
            f"VGGish weights file {path} is not a VGGish state_dict (torchvggish layout: "
            "features.*, embeddings.*)"
        )
    model = VGGish(
        channels=[width for _, width in convs],
        hidden=wanted["embeddings.0.weight"].shape[0],
        embedding=wanted["embeddings.4.weight"].shape[0],
        embedding_relu=embedding_relu,
    )
    try:
        model.load_state_dict(wanted)
    except RuntimeError as err:  # right names, wrong shapes (another network's file)
        raise EmbedderUnavailable(
            f"VGGish weights file {path} does not fit VGGish: {str(err).splitlines()[-1][:160]}"
        ) from err
    return model.eval()


class VGGishEmbedder(Embedder):
    name = "vggish"
    sample_rate = 16_000
    fadtk_names = ("vggish",)

    def __init__(self, model: VGGish, checkpoint: str, batch_size: int = 64):
        self.model = model.eval()
        self.checkpoint = checkpoint
        self.weights_digest = state_dict_digest(model)
        self.batch_size = batch_size
        last = model.embeddings[-1]
        self.embedding_relu = isinstance(last, nn.ReLU)
        # The setting is part of the window text, hence of every report and of the cache key: a
        # report made with the old default (final ReLU kept) says so.
        self.window = (
            "0.96 s patches, 0.96 s hop; log-mel 25 ms / 10 ms, 64 bands 125-7500 Hz; 128-d, "
            + ("final ReLU kept (torchvggish)" if self.embedding_relu else "no final ReLU")
        )

    def identity(self) -> dict:
        return {**super().identity(), "embedding_relu": self.embedding_relu}

    @classmethod
    def from_config(cls, vggish_cfg, **_) -> VGGishEmbedder:
        weights = vggish_cfg.get("weights")
        if not weights:
            raise EmbedderUnavailable(
                "no VGGish weights file (eval.vggish.weights is null): convert Google's release "
                "or download torchvggish's vggish-10086976.pth once and point eval.vggish.weights "
                "at it"
            )
        model = load_vggish(weights, embedding_relu=bool(vggish_cfg.get("embedding_relu", False)))
        return cls(model, checkpoint=str(weights))

    def patches(self, wave: np.ndarray) -> np.ndarray:
        """``[patches, 96, 64]``; a clip shorter than one patch is zero-padded to one."""
        wave = np.pad(wave, (0, max(0, 15_600 - len(wave))))  # 96 frames of 10 ms + 15 ms tail
        spectrogram = log_mel_spectrogram(wave, self.sample_rate, num_bins=MEL_BANDS)
        return frame(spectrogram, PATCH_FRAMES, PATCH_FRAMES).astype(np.float32)

    def embed_mono(self, wave: np.ndarray) -> np.ndarray:
        patches = torch.from_numpy(self.patches(wave))[:, None]
        chunks = [self.model(chunk) for chunk in patches.split(self.batch_size)]
        return torch.cat(chunks).numpy()
