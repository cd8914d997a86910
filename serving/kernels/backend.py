"""Which implementation runs the batched decode kernels: Triton on CUDA, the PyTorch twins
elsewhere, with the same calls and shapes.

The engine's long-context modes (``serving.engine.sparsity``) decode a whole batch through
one :class:`DecodeKernels`: :meth:`~DecodeKernels.block_scores` scores every row's block
representatives (``triton_landmark.landmark_scores`` or ``blocks.score_blocks``) and
:meth:`~DecodeKernels.decode` attends over every row's selected positions
(``triton_decode.selected_decode``, whose splits ``triton_merge.merge_partials`` merges, or
``triton_decode.selected_decode_reference``). "auto" picks Triton per call, for CUDA tensors
when Triton is installed; "triton" forces it (on CPU tensors only under Triton's interpreter,
``TRITON_INTERPRET=1``, as the kernel tests run), "torch" forces the twins.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from serving.kernels.config import KERNEL_BACKENDS, KernelBackend
from serving.kernels.errors import AttentionSettingsError
from serving.kernels.merge import Partial
from serving.kernels.triton_decode import selected_decode, selected_decode_reference
from serving.kernels.triton_landmark import landmark_scores, landmark_scores_reference


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (it is not on every CPU install)."""
    return importlib.util.find_spec("triton") is not None


class DecodeKernels:
    """The decode step's kernels on one backend (see the module docstring)."""

    def __init__(self, backend: KernelBackend = "auto") -> None:
        if backend not in KERNEL_BACKENDS:
            raise AttentionSettingsError(
                f"kernel backend {backend!r} is not one of {', '.join(KERNEL_BACKENDS)}"
            )
        if backend == "triton" and not triton_available():
            raise AttentionSettingsError(
                "kernel backend 'triton' needs Triton installed; use 'auto' or 'torch'"
            )
        self.backend = backend

    def uses_triton(self, tensor: torch.Tensor) -> bool:
        """Whether calls on ``tensor``'s device run the Triton kernels."""
        if self.backend == "auto":
            return tensor.is_cuda and triton_available()
        return self.backend == "triton"

    def block_scores(self, query: torch.Tensor, representatives: torch.Tensor) -> torch.Tensor:
        """(B, Hkv, nb) float32 block scores for one query (B, Hq, D) per row and head over
        each row's representatives (B, Hkv, nb, D) or Quest bounds (B, Hkv, nb, 2, D): the
        best over each KV head's group of query heads."""
        if self.uses_triton(query):
            return landmark_scores(query, representatives)
        return landmark_scores_reference(query, representatives)

    def decode(
        self,
        query: torch.Tensor,  # (B, Hq, D) one query per row and head
        keys: torch.Tensor,  # (B, Hkv, S, D) each row's cached keys (strided views welcome)
        values: torch.Tensor,  # (B, Hkv, S, D)
        positions: torch.Tensor,  # (B, Hp, N) int64; Hp = Hkv or Hq lists of positions
        valid: torch.Tensor,  # (B, Hp, N) bool; False = padding
        scaling: float,
    ) -> Partial:  # out (B, Hq, D), lse (B, Hq) float32
        """Exact attention of every row's query over the keys at its valid positions."""
        if self.uses_triton(query):
            return selected_decode(query, keys, values, positions, valid, scaling)
        return selected_decode_reference(query, keys, values, positions, valid, scaling)
