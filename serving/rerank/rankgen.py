"""RankGenReranker: the RankGen scorer (Krishna et al. 2022) on ``transformers``' T5 encoder.

The model is a T5 v1.1 encoder plus a bias-free d_model x d_model linear projection of the first
token's final hidden state; no normalisation. A prefix is encoded as ``"pre " + text`` (at most
512 T5 tokens), a candidate as ``"suffi " + text`` (at most 128); the score is their dot product.
The published checkpoints (``kalpeshk2011/rankgen-t5-{base,large,xl}-all``) store the encoder
under ``t5_encoder.`` and the projection as ``projection.weight``; they are read here directly,
without the checkpoint's remote code, from a local folder or the hub cache.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serving.errors import ModelNotAvailable
from serving.rerank.config import RANKGEN_CHECKPOINTS, ScorerConfig
from serving.rerank.reranker import PrefixCache, Ranked

PREFIX_MARKER = "pre "
CANDIDATE_MARKER = "suffi "
_T5_SIZES = {512: "small", 768: "base", 1024: "large", 2048: "xl", 4096: "xxl"}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")


def _unavailable(name: str, reason: str) -> ModelNotAvailable:
    return ModelNotAvailable(
        f"cannot load the RankGen scorer {name!r}: {reason}; download the checkpoint where the "
        "hub is reachable (with its T5 tokenizer, google/t5-v1_1-<size>) and set the rerank "
        "scorer to that local folder, or use the 'embedder' scorer"
    )


def checkpoint_folder(model: str, allow_download: bool = False) -> tuple[str, Path]:
    """The display name and local folder of ``model`` (a short name from
    :data:`RANKGEN_CHECKPOINTS`, a hub name, or a folder); :class:`ModelNotAvailable` if absent."""
    name = RANKGEN_CHECKPOINTS.get(model, model)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise _unavailable(name, f"{path} has no config.json, so it is not a checkpoint folder")
        return name, path
    if name.startswith((".", "/", "~")):
        raise _unavailable(name, f"the folder {path} does not exist")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(name, local_files_only=not allow_download)
    except (OSError, ValueError) as err:  # huggingface_hub's errors derive from these
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if not allow_download:
            reason = "it is not in the local hub cache (downloads are off)"
        raise _unavailable(name, reason) from err
    return name, Path(folder)


def _state_dict(folder: Path) -> dict[str, Any]:
    """Every tensor of the checkpoint in ``folder`` (single file or sharded with an index)."""
    import torch

    files: list[Path] = []
    for weights in _WEIGHT_FILES:
        index = folder / f"{weights}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            files = [folder / shard for shard in shards]
            break
        if (folder / weights).is_file():
            files = [folder / weights]
            break
    if not files:
        raise _unavailable(str(folder), f"no {' or '.join(_WEIGHT_FILES)} in {folder}")
    tensors: dict[str, Any] = {}
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors.update(load_file(str(file)))
        else:
            tensors.update(torch.load(file, map_location="cpu", weights_only=True))
    return tensors


class RankGenReranker:
    """Batched RankGen scoring: bfloat16 on CUDA with top-k on the device, float32 on a CPU."""

    def __init__(
        self,
        encoder: Any,
        projection: Any,
        tokenizer: Any,
        *,
        name: str = "rankgen",
        config: ScorerConfig | None = None,
    ) -> None:
        """``encoder`` is a ``T5EncoderModel``, ``projection`` a bias-free ``nn.Linear(d, d)``."""
        import torch

        self.config = config or ScorerConfig()
        device = self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = self.config.dtype
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        self.dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device, self.dtype).eval()
        self.projection = projection.to(self.device, self.dtype).eval()
        self.tokenizer = tokenizer
        self._name = name
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.prefixes: PrefixCache[Any] = PrefixCache(self.config.prefix_cache)
        self._lock = threading.Lock()  # one forward at a time: servers call from threads

    # ---------------------------------------------------------------- construction

    @classmethod
    def load(cls, model: str, config: ScorerConfig | None = None) -> RankGenReranker:
        """A published checkpoint by short name (``rankgen-t5-xl-all``), hub name or folder.

        Offline by default: a hub name must already be in the local hub cache.
        """
        from transformers import AutoTokenizer, T5Config, T5EncoderModel
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        config = config or ScorerConfig()
        name, folder = checkpoint_folder(model, config.allow_download)
        try:
            t5_config = T5Config.from_pretrained(str(folder))
        except (OSError, ValueError) as err:
            raise _unavailable(name, str(err).splitlines()[0]) from err
        tensors = _state_dict(folder)
        if "projection.weight" not in tensors:
            raise _unavailable(name, "the checkpoint has no projection.weight (not RankGen)")
        encoder = T5EncoderModel(t5_config)
        own = {
            k.removeprefix("t5_encoder."): v for k, v in tensors.items() if k != "projection.weight"
        }
        if "shared.weight" not in own and "encoder.embed_tokens.weight" in own:
            own["shared.weight"] = own["encoder.embed_tokens.weight"]
        own.setdefault("encoder.embed_tokens.weight", own.get("shared.weight"))
        missing, unexpected = encoder.load_state_dict(own, strict=False)
        if missing or unexpected:
            raise _unavailable(
                name, f"weights do not fit T5: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        projection = _projection(t5_config.d_model)
        projection.weight.data.copy_(tensors["projection.weight"])
        if any((folder / f).is_file() for f in _TOKENIZER_FILES):
            source = str(folder)
        else:
            size = _T5_SIZES.get(int(t5_config.d_model), "base")
            source = config.tokenizer or f"google/t5-v1_1-{size}"
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                source, local_files_only=not config.allow_download
            )
        except (OSError, ValueError) as err:
            raise _unavailable(
                name, f"its tokenizer {source!r} is not available ({str(err).splitlines()[0]})"
            ) from err
        return cls(encoder, projection, tokenizer, name=name, config=config)

    @classmethod
    def random(
        cls,
        tokenizer: Any,
        *,
        config: ScorerConfig | None = None,
        seed: int = 0,
        **t5: Any,
    ) -> RankGenReranker:
        """Random weights for tests and benchmarks; ``t5`` are ``T5Config`` fields (d_model,
        num_layers, num_heads, d_kv, d_ff, ...), T5 v1.1's gated-gelu feed-forward by default."""
        import torch
        from transformers import T5Config, T5EncoderModel

        fields: dict[str, Any] = {
            "vocab_size": len(tokenizer),
            "feed_forward_proj": "gated-gelu",
            "pad_token_id": tokenizer.pad_token_id or 0,
        }
        fields.update(t5)
        torch.manual_seed(seed)
        t5_config = T5Config(**fields)
        encoder = T5EncoderModel(t5_config)
        projection = _projection(t5_config.d_model)
        return cls(encoder, projection, tokenizer, name=f"rankgen-random-{seed}", config=config)

    def save(self, folder: Path) -> None:
        """Write config, weights (the published layout) and tokenizer, loadable with
        :meth:`load`."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        self.encoder.config.save_pretrained(str(folder))
        tensors = {
            f"t5_encoder.{k}": v.detach().float().cpu().contiguous()
            for k, v in self.encoder.state_dict().items()
            if k != "encoder.embed_tokens.weight"  # tied to shared.weight
        }
        tensors["projection.weight"] = self.projection.weight.detach().float().cpu().contiguous()
        save_file(tensors, str(folder / "model.safetensors"))
        self.tokenizer.save_pretrained(str(folder))

    # ---------------------------------------------------------------- scoring

    @property
    def name(self) -> str:
        return self._name

    def encode(self, texts: Sequence[str], kind: str) -> Any:
        """(N, d_model) vectors on the device for ``kind`` "prefix" or "candidate" texts.

        Texts are sorted by length into batches (less padding) and put back in order. A long
        prefix keeps its last tokens (the RankGen code keeps the first 512; its training prefixes
        were ~256 words, so both agree up to that length).
        """
        import torch

        marker, limit = (
            (PREFIX_MARKER, self.config.prefix_tokens)
            if kind == "prefix"
            else (CANDIDATE_MARKER, self.config.candidate_tokens)
        )
        rows = self.tokenizer([marker + t for t in texts])["input_ids"]
        if kind == "prefix":  # keep the marker and the prefix's *end*, next to the continuation
            head = len(self.tokenizer(marker.rstrip(), add_special_tokens=False)["input_ids"])
            ids = [r if len(r) <= limit else r[:head] + r[len(r) - limit + head :] for r in rows]
        else:  # as the RankGen code: the first `limit` tokens
            ids = [r[:limit] for r in rows]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = torch.empty(len(ids), self.projection.out_features, device=self.device)
        size = self.config.batch_size
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), size):
                rows = order[start : start + size]
                width = max(len(ids[i]) for i in rows)
                tokens = torch.full((len(rows), width), self._pad, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    tokens[r, : len(ids[i])] = torch.tensor(ids[i])
                    mask[r, : len(ids[i])] = 1
                hidden = self.encoder(
                    input_ids=tokens.to(self.device), attention_mask=mask.to(self.device)
                ).last_hidden_state  # (B, T, d_model)
                vectors = self.projection(hidden[:, 0])  # (B, d_model): first token, projected
                out[torch.tensor(rows, device=self.device)] = vectors.float()
        return out

    def _scores(self, prefix: str, candidates: Sequence[str]) -> Any:
        vector = self.prefixes.get(prefix, lambda text: self.encode([text], "prefix")[0])
        return self.encode(candidates, "candidate") @ vector  # (N,)

    def score(self, prefix: str, candidates: Sequence[str]) -> list[float]:
        if not candidates:
            return []
        scores: list[float] = self._scores(prefix, candidates).tolist()
        return scores

    def top(self, prefix: str, candidates: Sequence[str], k: int) -> list[Ranked]:
        import torch

        if not candidates or k < 1:
            return []
        scores = self._scores(prefix, candidates)
        best = torch.topk(scores, min(k, len(candidates)))  # on the device: one copy back
        values, indices = best.values.tolist(), best.indices.tolist()
        return [Ranked(i, candidates[i], v) for i, v in zip(indices, values, strict=True)]


def _projection(width: int) -> Any:
    from torch import nn

    return nn.Linear(width, width, bias=False)
