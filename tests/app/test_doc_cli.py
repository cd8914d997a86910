"""``mneme doc``: the JSON contract, budgets, errors and atomic ingestion (real processes,
real SQLite, real Chroma, the bundled MiniLM embedder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.tokens import TiktokenCounter
from tests.app.test_cli import mneme
from tests.net import free_port
from tests.texts import story


def write_book(folder: Path) -> Path:
    path = folder / "book.md"
    path.write_text("# A small book\n\n" + story(5, "\n\n") + "\n", encoding="utf-8")
    return path


def run_json(*args: str, home: Path, **env: str) -> dict[str, object]:
    done = mneme(*args, "--json", home=home, **env)
    assert done.returncode == 0, done.stderr
    data: dict[str, object] = json.loads(done.stdout)
    return data


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with one collection holding the small book (ingested once for the module)."""
    home = tmp_path_factory.mktemp("doc") / "home"
    book = write_book(home.parent)
    data = run_json("doc", "ingest", str(book), "--collection", "books",
                    "--segmenter", "embedding", home=home)  # fmt: skip
    assert data["collection"] == "books" and data["created"] is True
    assert isinstance(data["episodes"], int) and data["episodes"] >= 3
    assert isinstance(data["tokens"], int) and data["tokens"] > 100
    assert set(data) >= {"collection", "document_id", "episodes", "tokens", "seconds"}
    return home


def test_search_json_contract_within_budget(library: Path) -> None:
    data = run_json("doc", "search", "books", "Who sacrificed a queen at chess?",
                    "--budget-tokens", "64", home=library)  # fmt: skip
    hits = data["hits"]
    assert isinstance(hits, list) and hits
    assert set(hits[0]) >= {"episode_id", "text", "start", "end", "score", "reason"}
    counter = TiktokenCounter("cl100k_base")
    assert sum(counter.count(h["text"]) for h in hits) <= 64
    assert any("chess" in h["text"] for h in hits)
    book = (library.parent / "book.md").read_text(encoding="utf-8")
    assert all(book[h["start"] : h["end"]] == h["text"] for h in hits)


def test_reingesting_the_same_file_keeps_one_copy(library: Path) -> None:
    book = library.parent / "book.md"
    data = run_json("doc", "ingest", str(book), "-c", "books", "--segmenter", "embedding",
                    home=library)  # fmt: skip
    assert data["created"] is False
    listing = run_json("doc", "list", home=library)
    (books,) = [c for c in listing["collections"] if c["name"] == "books"]  # type: ignore[attr-defined]
    assert len(books["documents"]) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("doc", "search", "missing", "query"), "collection 'missing' does not exist"),
        (("doc", "delete", "missing"), "collection 'missing' does not exist"),
        (("doc", "search", "books", "  "), "the query is empty"),
        (("doc", "search", "books", "word " * 80, "--budget-tokens", "20"), "more than the budget"),
        (("doc", "ingest", "/nonexistent.txt", "-c", "books"), "does not exist"),
        (("doc", "ingest", "README.md", "-c", "books", "--segmenter", "magic"), "not a segmenter"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    library: Path, args: tuple[str, ...], message: str
) -> None:
    done = mneme(*args, home=library)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_empty_and_binary_files_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "data.txt"
    binary.write_bytes(bytes(range(256)) * 8)
    for path in (empty, binary):
        done = mneme("doc", "ingest", str(path), "-c", "x", home=tmp_path / "home")
        assert done.returncode == 2 and path.name in done.stderr, done.stderr


def test_llm_down_mid_ingest_leaves_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    book = write_book(tmp_path)
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    done = mneme("doc", "ingest", str(book), "-c", "books", "--segmenter", "surprise",
                 home=home, MNEME_LLM_BASE_URL=url, MNEME_LLM_CONTEXT_TOKENS="256")  # fmt: skip
    assert done.returncode == 4, done.stderr
    assert "Traceback" not in done.stderr and "127.0.0.1" in done.stderr
    listing = run_json("doc", "list", home=home)
    assert all(not c["documents"] for c in listing["collections"])  # type: ignore[attr-defined]


def test_delete_removes_the_collection(tmp_path: Path) -> None:
    home = tmp_path / "home"
    book = write_book(tmp_path)
    run_json("doc", "ingest", str(book), "-c", "gone", "--segmenter", "fixed", home=home)
    assert run_json("doc", "delete", "gone", home=home) == {"deleted": "gone"}
    assert run_json("doc", "list", home=home) == {"collections": []}


@pytest.mark.model
@pytest.mark.slow
def test_surprise_ingest_with_the_tiny_model_then_ask_and_summarize(
    tmp_path: Path, test_model: Path
) -> None:
    """Surprise from the tiny pretrained model; answers from the bundled SmolLM2-135M-Instruct
    (the tiny model has no chat template)."""
    home = tmp_path / "home"
    book = write_book(tmp_path)
    data = run_json("doc", "ingest", str(book), "-c", "books", "--segmenter", "surprise",
                    home=home, MNEME_LLM_MODEL=str(test_model))  # fmt: skip
    assert data["segmenter"] == "surprise"
    env = {"MNEME_LLM_CONTEXT_TOKENS": "2048"}
    answer = run_json("doc", "ask", "books", "Who polished the lens?", home=home, **env)
    assert isinstance(answer["answer"], str)
    assert answer["citations"] and all("start" in c for c in answer["citations"])  # type: ignore[attr-defined]
    summary = run_json("doc", "summarize", "books", home=home, **env)
    assert isinstance(summary["summary"], str)
    assert isinstance(summary["calls"], int) and summary["calls"] >= 1
