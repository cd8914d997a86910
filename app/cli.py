"""The ``mneme`` command line (Typer). Library errors become one-line messages only here."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, NoReturn

import typer

from app.api_cli import api, keys_cli
from app.doc_cli import doc_cli
from app.errors import EXIT_BROKEN, KNOWN_ERRORS, SettingsError, exit_code
from app.runtime import open_database
from app.settings import Settings, load_settings
from memory.database import Database, describe_url
from serving.engine.config import Dtype, EngineConfig
from serving.kernels.config import (
    AttentionConfig,
    AttentionMode,
    MemoryPositions,
    Prefill,
    Representative,
)

ENGINE = EngineConfig()
"""The engine's defaults: ``mneme llm serve``'s options start from these (defined once, there)."""

cli = typer.Typer(
    name="mneme",
    help="Mneme: write and read text far longer than any model's context.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_cli = typer.Typer(help="The SQL database: migrations and status.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
llm_cli = typer.Typer(
    help="The LLM backend: serve a model over the OpenAI API.", no_args_is_help=True
)
cli.add_typer(llm_cli, name="llm")
cli.add_typer(doc_cli, name="doc")
cli.add_typer(keys_cli, name="keys")
cli.command()(api)


@dataclass(slots=True)
class _Invocation:
    """One run of ``mneme``: :func:`main` makes it and hands it to click as ``ctx.obj``, the
    root callback records the root options on it, and ``main``'s error handling (which runs
    after click's context has closed) reads them. Nothing of it outlives the run."""

    debug: bool = False
    """``--debug``: full tracebacks and debug logs."""


JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _settings() -> Settings:
    return load_settings()


def _emit(data: object, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, indent=2, default=str) if as_json else text)


@cli.callback()
def _main(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks and debug logs.")
    ] = False,
) -> None:
    ctx.ensure_object(_Invocation).debug = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@db_cli.command("upgrade")
def db_upgrade(as_json: JsonOption = False) -> None:
    """Create the database or apply pending migrations (safe to run again)."""
    settings = _settings()
    database = open_database(settings, migrate=True)
    revision = database.current_revision()
    _emit(
        {"database": describe_url(database.url), "revision": revision},
        as_json,
        f"{describe_url(database.url)} is at migration {revision}",
    )


@db_cli.command("status")
def db_status(as_json: JsonOption = False) -> None:
    """Show the database's migration and the newest one this Mneme ships."""
    settings = _settings()
    database = Database(settings.resolved_database_url, synchronous=settings.sqlite_synchronous)
    database.ping()
    current, head = database.current_revision(), database.head_revision()
    _emit(
        {
            "database": describe_url(database.url),
            "current": current,
            "head": head,
            "up_to_date": current == head,
        },
        as_json,
        f"{describe_url(database.url)}: at {current or 'none'}, newest {head}"
        + ("" if current == head else " — run `mneme db upgrade`"),
    )


@cli.command()
def doctor(as_json: JsonOption = False) -> None:
    """Check the database, the vector store, the embedder and the LLM; exit 1 if one is broken."""
    from app.doctor import run_checks  # httpx: imported by the one command that needs it

    checks = run_checks(_settings())
    if as_json:
        typer.echo(
            json.dumps(
                {"ok": all(c.ok for c in checks), "checks": [c.as_dict() for c in checks]}, indent=2
            )
        )
    else:
        width = max(len(c.component) for c in checks)
        for check in checks:
            mark = "ok  " if check.ok else "FAIL"
            typer.echo(f"{mark}  {check.component:<{width}}  {check.detail}")
    if not all(c.ok for c in checks):
        raise typer.Exit(EXIT_BROKEN)


@llm_cli.command(
    "serve", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def llm_serve(
    ctx: typer.Context,
    engine: Annotated[
        Literal["torch", "vllm"],
        typer.Option(help="Inference engine: torch (built in) or vllm."),
    ] = "torch",
    model: Annotated[
        str | None,
        typer.Option(
            help="Hub name or local folder; default MNEME_LLM_MODEL or the bundled "
            "SmolLM2-135M-Instruct."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    api_key: Annotated[
        str | None, typer.Option(help="Require 'Authorization: Bearer KEY' on /v1 routes.")
    ] = None,
    device: Annotated[str, typer.Option(help="torch device for the torch engine.")] = ENGINE.device,
    dtype: Annotated[
        Dtype, typer.Option(help="Weights' dtype; auto = float32 on CPU, bfloat16 on CUDA.")
    ] = ENGINE.dtype,
    max_batch: Annotated[
        int, typer.Option(help="Sequences decoded together.", min=1)
    ] = ENGINE.max_batch,
    prefix_cache_tokens: Annotated[
        int | None,
        typer.Option(
            help="torch engine: prompt tokens whose KV is kept for prompts sharing a prefix "
            f"(0 = off; default {ENGINE.prefix_cache_tokens}).",
            min=0,
        ),
    ] = None,
    python: Annotated[
        str | None,
        typer.Option(
            help="vllm engine: the Python that has vLLM, e.g. .venv-vllm/bin/python "
            "(made by .ci/vllm-venv); default: Mneme's own."
        ),
    ] = None,
    # The attention options: one per AttentionConfig field, its default and its docstring.
    attention: Annotated[
        AttentionMode, typer.Option(help=AttentionConfig.describe("mode"))
    ] = ENGINE.attention.mode,
    attention_budget: Annotated[
        int, typer.Option(help=AttentionConfig.describe("budget"))
    ] = ENGINE.attention.budget,
    attention_sinks: Annotated[
        int, typer.Option(help=AttentionConfig.describe("sinks"))
    ] = ENGINE.attention.sinks,
    attention_window: Annotated[
        int,
        typer.Option(
            "--attention-window", "--attention-local", help=AttentionConfig.describe("window")
        ),
    ] = ENGINE.attention.window,
    attention_block_size: Annotated[
        int, typer.Option(help=AttentionConfig.describe("block_size"))
    ] = ENGINE.attention.block_size,
    attention_representative: Annotated[
        Representative, typer.Option(help=AttentionConfig.describe("representative"))
    ] = ENGINE.attention.representative,
    attention_neighbours: Annotated[
        int, typer.Option(help=AttentionConfig.describe("neighbours"))
    ] = ENGINE.attention.neighbours,
    attention_positions: Annotated[
        MemoryPositions, typer.Option(help=AttentionConfig.describe("positions"))
    ] = ENGINE.attention.positions,
    attention_prefill: Annotated[
        Prefill, typer.Option(help=AttentionConfig.describe("prefill"))
    ] = ENGINE.attention.prefill,
    retrieval_segment: Annotated[
        int, typer.Option(help=AttentionConfig.describe("retrieval_segment"))
    ] = ENGINE.attention.retrieval_segment,
    retrieval_degree: Annotated[
        int, typer.Option(help=AttentionConfig.describe("retrieval_degree"))
    ] = ENGINE.attention.retrieval_degree,
) -> None:
    """Serve a model over the OpenAI API (/v1/completions, /v1/chat/completions, /v1/embeddings)."""
    settings = _settings()
    if engine == "vllm" and attention == "retrieval":
        raise SettingsError(
            "--attention retrieval is served by --engine torch; vLLM offers full or blocks"
        )
    if engine == "vllm" and prefix_cache_tokens is not None:
        raise SettingsError(
            "--prefix-cache-tokens is the torch engine's; vLLM caches prefixes itself "
            "(pass --no-enable-prefix-caching to turn that off)"
        )
    # AttentionSettingsError (a bad count, a budget below sinks + window) is a usage error
    attention_config = AttentionConfig(
        mode=attention,
        budget=attention_budget,
        sinks=attention_sinks,
        window=attention_window,
        block_size=attention_block_size,
        representative=attention_representative,
        neighbours=attention_neighbours,
        positions=attention_positions,
        prefill=attention_prefill,
        retrieval_segment=retrieval_segment,
        retrieval_degree=retrieval_degree,
    )
    if engine == "vllm":
        from serving.vllm.pages import environment

        selection = environment(attention_config)  # refuses what vLLM's pages cannot do
        _serve_vllm(ctx.args, settings, model, host, port, api_key, dtype, python, selection)
    if ctx.args or python is not None:
        unknown = " ".join([*ctx.args, *(["--python"] if python is not None else [])])
        raise SettingsError(f"{unknown}: only --engine vllm takes vLLM options")
    from app.serving import serve_torch

    config = EngineConfig(
        model=model or settings.llm_model,
        device=device,
        dtype=dtype,
        max_batch=max_batch,
        prefix_cache_tokens=(
            ENGINE.prefix_cache_tokens if prefix_cache_tokens is None else prefix_cache_tokens
        ),
        attention=attention_config,
    )
    serve_torch(settings, config, host=host, port=port, api_key=api_key)


def _serve_vllm(
    extra_args: list[str],
    settings: Settings,
    model: str | None,
    host: str,
    port: int,
    api_key: str | None,
    dtype: str,
    python: str | None,
    env: dict[str, str] | None = None,
) -> NoReturn:
    """Run vLLM's OpenAI server with Mneme's plugin; extra arguments go to vLLM unchanged;
    ``env`` reaches every vLLM process (the plugin's attention settings)."""
    from serving.vllm.launcher import VLLMServerConfig, serve

    name = model or settings.llm_model
    if name is None:
        raise SettingsError("--engine vllm needs --model (hub name or folder) or MNEME_LLM_MODEL")
    passed = [*(["--dtype", dtype] if dtype != "auto" else []), *extra_args]
    try:
        config = VLLMServerConfig(
            model=name,
            host=host,
            port=port,
            api_key=api_key,
            python=python or sys.executable,
            extra_args=tuple(passed),
            env=env or {},
        )
    except ValueError as err:
        raise SettingsError(str(err)) from err
    raise typer.Exit(serve(config, on_line=lambda line: typer.echo(line, err=True)))


@cli.command()
def ui(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8501,
) -> None:
    """Start the Streamlit web app for writers."""
    settings = _settings()
    open_database(settings).close()  # fail here, clearly, not inside the page
    page = Path(__file__).resolve().parent.parent / "ui" / "home.py"
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(page),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        # Writers get no Deploy button, rerun or clear-cache: Streamlit's developer toolbar.
        "--client.toolbarMode",
        "viewer",
    ]
    typer.echo(f"Mneme is at http://{host}:{port}")
    sys.stdout.flush()
    # Become Streamlit (no child process): a signal to `mneme ui` reaches the server itself.
    os.execv(sys.executable, command)


def main() -> None:
    """Entry point: run the CLI, turning known errors into one line and an exit code."""
    invocation = _Invocation()
    try:
        # Without standalone mode click returns the code of a `typer.Exit` instead of exiting.
        result = cli(standalone_mode=False, obj=invocation)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except KNOWN_ERRORS as err:
        if invocation.debug:
            logging.exception("mneme failed")
        typer.echo(f"error: {err}", err=True)
        sys.exit(exit_code(err))
    except typer.TyperException as err:  # usage errors: bad option, missing argument
        typer.echo(f"error: {err.format_message()} (see `mneme --help`)", err=True)
        sys.exit(err.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as err:  # the process edge: log the traceback, never show it raw
        logging.getLogger("mneme").debug("unexpected error", exc_info=True)
        if invocation.debug:
            raise
        typer.echo(f"error: unexpected {type(err).__name__}: {err} (rerun with --debug)", err=True)
        sys.exit(EXIT_BROKEN)
    sys.exit(result if isinstance(result, int) else 0)
