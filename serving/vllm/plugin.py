"""Mneme's vLLM plugin, loaded by vLLM in each of its processes (API server, engine core, workers).

Declared in pyproject.toml as the ``vllm.general_plugins`` entry point ``mneme =
"serving.vllm.plugin:register"``. vLLM calls :func:`register` once per process, early, before
the model is built, so this is where Mneme attaches GPU features (long-context attention
backends; later RankGen reranking) to a vLLM run.

On load it announces itself (Mneme and vLLM versions, pid: one line per vLLM process, which is
how a run shows the plugin is active), warns when vLLM is not a release Mneme was written against,
and registers :data:`ATTENTION_BACKENDS`. Importing this module imports nothing heavy: vLLM
imports it in every process, and vLLM itself is reached only inside functions.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from serving.kernels.config import AttentionConfig
from serving.vllm.errors import AttentionBackendConflict
from serving.vllm.pages import ENVIRONMENT
from serving.vllm.versions import TESTED_RELEASES, is_tested

# A child of vLLM's "vllm" logger, so that vLLM's handler prints our lines with its own prefix
# ("(EngineCore pid=…) INFO …") once vLLM has configured logging in the process.
log = logging.getLogger("vllm.plugins.mneme")

LOADED_MESSAGE = "Mneme vLLM plugin loaded"
"""Start of the line :func:`register` prints in each process."""

ATTENTION_BACKENDS: tuple[tuple[str, str], ...] = ()
"""Mneme's attention backends as (name, class path), bound in every vLLM process on load. A name
of vLLM's own (``CPU_ATTN``, ``FLASH_ATTN``…) overrides that backend; a new name adds one."""

_REGISTRY = "vllm.v1.attention.backends.registry"


def register() -> None:
    """The entry point vLLM calls in each process. Idempotent: repeated calls do nothing more."""
    _load_once()


@functools.cache  # vLLM may call general plugins more than once per process; act only once
def _load_once() -> None:
    vllm: Any = importlib.import_module("vllm")  # already imported: vLLM is loading us
    vllm_version = str(getattr(vllm, "__version__", "unknown"))
    versions = f"mneme {mneme_version()}, vllm {vllm_version}"
    _announce(f"{LOADED_MESSAGE}: {versions}, pid {os.getpid()}")
    if not is_tested(vllm_version):
        log.warning(
            "Mneme's vLLM plugin was written against vLLM %s, not %s; its attention backends "
            "may not fit this release's internals",
            " and ".join(TESTED_RELEASES),
            vllm_version,
        )
    for name, class_path in ATTENTION_BACKENDS:
        register_attention_backend(name, class_path, replace=True)
    if page_settings() is not None:  # block selection asked for: CPU_ATTN gains it
        register_attention_backend("CPU_ATTN", SELECTION_BACKEND, replace=True)


SELECTION_BACKEND = "serving.vllm.backend.BlockSelectionBackend"
"""CPU_ATTN plus decode-time page selection, bound when ``MNEME_VLLM_ATTENTION`` asks for it."""


def page_settings() -> AttentionConfig | None:
    """Mneme's attention settings for this vLLM process, from ``MNEME_VLLM_ATTENTION`` (the
    variable every vLLM process inherits); None = attend in full. AttentionSettingsError on bad
    JSON, an unknown field, a bad value, or what page selection cannot do (retrieval)."""
    text = os.environ.get(ENVIRONMENT)
    if not text:
        return None
    config = AttentionConfig.from_json(text)
    config.check_paged()
    return config if config.mode == "blocks" else None


def mneme_version() -> str:
    """Mneme's installed version, or ``"unknown"`` when it runs from a plain checkout."""
    try:
        return version("mneme")
    except PackageNotFoundError:
        return "unknown"


def register_attention_backend(name: str, class_path: str, *, replace: bool = False) -> None:
    """Bind the attention backend ``name`` to the class at ``class_path`` in vLLM's registry
    (``vllm.v1.attention.backends.registry.register_backend``), in this process only.

    A new name becomes a new ``AttentionBackendEnum`` member, selectable with
    ``--attention-backend NAME`` on GPU. A name vLLM already has (``FLASH_ATTN``, ``CPU_ATTN``…)
    is rebound only with ``replace=True``; on CPU, vLLM selects ``CPU_ATTN`` whatever is asked,
    so replacing it is the way to a CPU run. Binding the same path again does nothing.

    Raises ValueError when ``name`` is not an identifier, ``class_path`` is not ``module.Class``
    or its module cannot be found, and :class:`AttentionBackendConflict` when ``name`` is bound to
    another class and ``replace`` is false. Call it inside vLLM's processes (the plugin does):
    the registry is per process.
    """
    module, _, class_name = class_path.rpartition(".")
    if not name.isidentifier():
        raise ValueError(f"attention backend name {name!r} must be a Python identifier")
    if not (module and all(part.isidentifier() for part in [*module.split("."), class_name])):
        raise ValueError(f"class path {class_path!r} must look like 'package.module.ClassName'")
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        found = False
    if not found:
        raise ValueError(f"module {module!r} of attention backend {name} cannot be found")

    registry: Any = importlib.import_module(_REGISTRY)
    backends = registry.AttentionBackendEnum
    if name in backends.__members__:
        current = _bound_path(backends[name])
        if current == class_path:
            return
        if current is not None and not replace:
            raise AttentionBackendConflict(
                f"attention backend {name} is bound to {current}; pass replace=True to bind it "
                f"to {class_path}"
            )
        registry.register_backend(backends[name], class_path)
    else:
        registry.register_backend(name, class_path)
    log.info("attention backend %s -> %s", name, class_path)


def _bound_path(member: Any) -> str | None:
    """The class path a registry member resolves to; None for a member with no class (CUSTOM)."""
    try:
        return str(member.get_path())
    except ValueError:
        return None


def _announce(message: str) -> None:
    """Log ``message`` at INFO, or write it to stderr where no logging is set up yet: vLLM loads
    plugins in its API server process before it configures logging, and an INFO record would be
    dropped there."""
    if log.hasHandlers():
        log.info("%s", message)
    else:
        print(f"INFO [mneme] {message}", file=sys.stderr, flush=True)
