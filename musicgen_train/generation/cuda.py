"""``generation.cuda_graphs=true``: the decoder step captured once in a CUDA graph and replayed.

A decode step launches a few hundred small kernels; on a GPU the launch overhead, not the
arithmetic, bounds a small batch. The static cache makes every step's shapes the same (attention
over the whole cache, masked past each row's position: ``DecodeLoop._forward_static``), so one
capture per batch layout (rows joined or left, cache grown) serves every step until the layout
changes again. Unmeasured until ``bench/gpu_check.sh`` has run on a GPU (see docs/generation.md).
"""

from __future__ import annotations

import torch

from musicgen_train.errors import ConfigError
from musicgen_train.generation.decode import DecodeLoop

WARMUP_STEPS = 2  # eager runs on a side stream before capture, as torch.cuda.graphs advises


def check_cuda_graphs(device: torch.device | str) -> None:
    """One clear line when CUDA graphs cannot work here."""
    device = torch.device(device)
    if not torch.cuda.is_available():
        raise ConfigError(
            "generation.cuda_graphs=true needs CUDA, and this torch sees no GPU: "
            "set generation.cuda_graphs=false (CPU generation does not use it)"
        )
    if device.type != "cuda":
        raise ConfigError(
            f"generation.cuda_graphs=true needs the model on a GPU, it is on {device}: "
            "load it with device=cuda or set generation.cuda_graphs=false"
        )


class GraphedDecodeLoop(DecodeLoop):
    """``DecodeLoop`` whose step replays a CUDA graph of ``_forward_static``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_cuda_graphs(self.device)
        self._graph = None
        self._graph_key = None

    def _forward(self, ids: torch.Tensor, positions: list[int], cond: int) -> torch.Tensor:
        index = torch.tensor(positions, device=self.device)
        key = (ids.shape[0], cond, self._k[0].data_ptr(), self._k[0].shape[2])
        if key != self._graph_key:
            self._capture(ids, index, cond)
            self._graph_key = key
        self._ids.copy_(ids)
        self._index.copy_(index)
        self._graph.replay()
        return self._out.clone()

    def _capture(self, ids: torch.Tensor, index: torch.Tensor, cond: int) -> None:
        self._ids, self._index = ids.clone(), index.clone()
        # The warm-up runs write the same K/V the real step writes (same ids, same positions).
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_STEPS):
                self._forward_static(self._ids, self._index, cond)
        torch.cuda.current_stream().wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._out = self._forward_static(self._ids, self._index, cond)
