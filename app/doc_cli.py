"""``mneme doc``: ingest, search, ask and summarise long documents from the command line.

With ``--json`` every command prints one JSON object on stdout (the contract other tools and the
tests rely on); progress goes to stderr, and only on a terminal.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast, get_args

import typer

from app.reading import Reading, SegmenterChoice
from app.settings import load_settings
from memory import NotFound

if TYPE_CHECKING:
    from agents.reader import DocumentReader
    from memory.episodic import IngestProgress

T = TypeVar("T")

doc_cli = typer.Typer(
    help="Long documents: ingest into a collection, search, ask, summarise.",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
Collection = Annotated[str, typer.Argument(help="Collection name.")]
_STAGES = {"segment": "cutting into episodes", "embed": "embedding", "store": "storing"}


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def _print(data: object, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False) if as_json else text)


@contextmanager
def _reading() -> Iterator[Reading]:
    reading = Reading(load_settings())
    try:
        yield reading
    finally:
        reading.close()


def _existing(reading: Reading, collection: str) -> None:
    """Raise :class:`NotFound` unless ``collection`` exists (asks SQL alone: a missing name costs
    no vector index and no model)."""
    names = [n.name for n in reading.catalog.namespaces.all()]
    if collection not in names:
        known = ", ".join(names) or "none yet"
        raise NotFound(
            f"collection {collection!r} does not exist (collections: {known}); "
            "create it with `mneme doc ingest PATH --collection NAME`"
        )


def _with_reader(collection: str, work: Callable[[DocumentReader], Coroutine[Any, Any, T]]) -> T:
    """Run ``work`` with a reader of an existing collection."""
    with _reading() as reading:
        _existing(reading, collection)
        return _run(work(reading.reader(collection)))


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[IngestProgress], None] | None]:
    """A progress bar on stderr when it is a terminal; otherwise no callback."""
    if not (enabled and sys.stderr.isatty()):
        yield None
        return
    from rich.progress import Progress

    with Progress(transient=True, console=None) as bar:
        tasks: dict[str, Any] = {}

        def report(step: IngestProgress) -> None:
            if step.stage not in tasks:
                tasks[step.stage] = bar.add_task(_STAGES[step.stage], total=step.total)
            bar.update(tasks[step.stage], completed=step.done, total=step.total)

        yield report


@doc_cli.command("ingest")
def ingest(
    path: Annotated[Path, typer.Argument(help="Text, Markdown, PDF, DOCX or EPUB file.")],
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection name.")],
    segmenter: Annotated[
        str | None,
        typer.Option(help="auto, surprise, embedding or fixed; default MNEME_SEGMENTER."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Document name; default its title.")] = None,
    max_mb: Annotated[float, typer.Option(help="Refuse files larger than this (MiB).")] = 20.0,
    as_json: JsonOption = False,
) -> None:
    """Read a document into a collection (atomic: all of it, or nothing on failure)."""
    choice = _segmenter_choice(segmenter)
    with _reading() as reading, _progress(not as_json) as report:
        done = _run(
            reading.ingest_file(
                collection,
                path,
                segmenter=choice,
                name=name,
                max_bytes=int(max_mb * 1024 * 1024),
                on_progress=report,
            )
        )
    data = {
        "collection": collection,
        "document_id": done.document.id,
        "episodes": len(done.episodes),
        "tokens": done.tokens,
        "seconds": round(done.seconds, 3),
        "created": done.created,
        "segmenter": done.document.metadata.get("segmenter"),
    }
    verb = "ingested" if done.created else "already held"
    _print(
        data,
        as_json,
        f"{collection}: {verb} {path.name} as document {done.document.id} — "
        f"{len(done.episodes)} episodes, {done.tokens} tokens, {done.seconds:.1f} s",
    )


def _segmenter_choice(value: str | None) -> SegmenterChoice | None:
    choices = get_args(SegmenterChoice)
    if value is not None and value not in choices:
        raise typer.BadParameter(
            f"{value!r} is not a segmenter; use one of {', '.join(choices)}",
            param_hint="--segmenter",
        )
    return cast(SegmenterChoice | None, value)


@doc_cli.command("search")
def search(
    collection: Collection,
    query: Annotated[str, typer.Argument(help="What to look for.")],
    budget_tokens: Annotated[
        int | None, typer.Option(help="Most tokens of text returned.", min=1)
    ] = None,
    k_similar: Annotated[int | None, typer.Option(help="Episodes by similarity.", min=1)] = None,
    k_contiguous: Annotated[
        int | None, typer.Option(help="Neighbours of those added.", min=0)
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Recall the passages of a collection that answer QUERY, within a token budget."""
    with _reading() as reading:
        _existing(reading, collection)
        hits = _run(
            reading.memory(collection).search(
                query, budget_tokens=budget_tokens, k_similar=k_similar, k_contiguous=k_contiguous
            )
        )
    data = {
        "hits": [
            {
                "episode_id": h.episode_id,
                "document_id": h.document_id,
                "text": h.text,
                "start": h.start,
                "end": h.end,
                "tokens": h.tokens,
                "score": round(h.score, 4),
                "reason": h.reason,
            }
            for h in hits
        ]
    }
    lines = [
        f"[{h.reason} {h.score:.3f}] document {h.document_id} chars {h.start}-{h.end}\n"
        f"{h.text.strip()}\n"
        for h in hits
    ]
    _print(data, as_json, "\n".join(lines) or "nothing found")


@doc_cli.command("ask")
def ask(
    collection: Collection,
    question: Annotated[str, typer.Argument(help="The question.")],
    budget_tokens: Annotated[
        int | None, typer.Option(help="Tokens of passages given to the model.", min=1)
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Answer QUESTION from a collection, citing the passages used."""
    answer = _with_reader(collection, lambda r: r.ask(question, budget_tokens=budget_tokens))
    citations = [
        {
            "number": c.number,
            "episode_id": c.episode_id,
            "document_id": c.document_id,
            "start": c.start,
            "end": c.end,
            "text": c.text,
        }
        for c in answer.citations
    ]
    sources = "\n".join(
        f"[{c.number}] document {c.document_id} chars {c.start}-{c.end}" for c in answer.citations
    )
    _print({"answer": answer.text, "citations": citations}, as_json, f"{answer.text}\n\n{sources}")


@doc_cli.command("summarize")
def summarize(
    collection: Collection,
    document: Annotated[
        int | None, typer.Option(help="Only this document id (see `mneme doc list`).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Summarise a collection (or one document) hierarchically: events, sections, whole."""
    summary = _with_reader(collection, lambda r: r.summarize(document_id=document))
    data = {
        "summary": summary.text,
        "levels": len(summary.levels),
        "calls": summary.calls,
        "max_prompt_tokens": summary.max_prompt_tokens,
    }
    _print(data, as_json, summary.text)


@doc_cli.command("list")
def list_collections(as_json: JsonOption = False) -> None:
    """Collections with their documents."""
    with _reading() as reading:
        catalog = reading.catalog  # SQL alone: listing opens no vector index and loads no model
        collections: list[dict[str, Any]] = []
        for space in catalog.namespaces.all():
            documents = catalog.documents.all(space.name)
            collections.append(
                {
                    "name": space.name,
                    "episodes": catalog.episodes.count(space.name),
                    "documents": [
                        {"id": d.id, "name": d.name, "source": d.source, "chars": d.char_count}
                        for d in documents
                    ],
                }
            )
    lines = [
        f"{c['name']}: {len(c['documents'])} documents, {c['episodes']} episodes"
        for c in collections
    ]
    _print({"collections": collections}, as_json, "\n".join(lines) or "no collections yet")


@doc_cli.command("delete")
def delete(collection: Collection, as_json: JsonOption = False) -> None:
    """Delete a collection with all its documents and episodes."""
    with _reading() as reading:
        _existing(reading, collection)
        reading.store.delete_namespace(collection)
    _print({"deleted": collection}, as_json, f"deleted collection {collection}")
