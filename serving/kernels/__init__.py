"""Long-context attention kernels: one exact merge primitive and the methods built on it.

Every method attends over several disjoint key/value sets, each returning an output and a
log-sum-exp (:mod:`serving.kernels.merge`), and merges them exactly:

- :mod:`serving.kernels.static`: the first ``n_init`` sink tokens and the last ``n_local`` tokens;
- :mod:`serving.kernels.blocks`: block selection by representative ("landmark") keys (InfLLM,
  EM-LLM events, Quest bounds) with +-``neighbours``;
- :mod:`serving.kernels.retrieval`: RetrievalAttention's attention-aware graph index over far keys.

Their settings, for the built-in engine and vLLM's page selection alike, are one frozen
:class:`serving.kernels.config.AttentionConfig` (no torch import: the vLLM plugin reads it). The
``triton_*`` modules hold GPU kernels, each with a PyTorch twin; :mod:`serving.kernels.backend`
runs one or the other (Triton for CUDA tensors) for the engine's batched decode step. Everything
else here is pure tensor code with no engine state; ``serving.engine`` wires it into its
attention interface.
"""
