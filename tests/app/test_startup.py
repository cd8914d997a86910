"""Start-up of ``mneme`` (issue 19): a command loads only what it uses.

Facts, not times: each command runs in a fresh process that then reports the modules it
imported. Listing and admin commands import no model library (torch took 30 s of a 35 s
``mneme doc list`` on a loaded machine); ``doc search`` loads the embedder and never the LLM.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.reading import Reading
from app.runtime import open_database, open_memory, open_vector_index
from app.settings import load_settings
from memory import MemoryStore
from serving.embeddings import BUNDLED_NAMES, LazyEmbedder
from tests.fakes import HashEmbedder

MODEL_LIBRARIES = frozenset({"torch", "transformers", "sentence_transformers"})
LLM_MODULES = frozenset({"serving.local", "serving.openai_client", "serving.engine.engine"})
BOOK = (
    "# A small book\n\nThe keeper of the lighthouse played chess with the harbour master.\n\n"
    "A storm came in the night and the lamp went out; the ships waited beyond the rocks.\n"
)

# Runs the CLI in-process, then writes the names in sys.modules to the file named first.
PROBE = """
import json, sys
from pathlib import Path
report = Path(sys.argv.pop(1))
try:
    from app.cli import main
    main()
finally:
    report.write_text(json.dumps(sorted(sys.modules)))
"""


def probe(*args: str, home: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``mneme ARGS`` in a fresh process; its result and the modules it imported."""
    report = home.parent / "modules.json"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MNEME_")}
    environment.update({"MNEME_HOME": str(home), **env})
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(report), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=home.parent,
    )
    return done, set(json.loads(report.read_text()))


def fill(home: Path) -> None:
    """A home holding collection "books" with one document, written in-process without a model:
    the fake embedder stands in for MiniLM under its name and dimension (384)."""
    settings = load_settings(home=home)
    embedder = HashEmbedder(dimension=384, model_name=BUNDLED_NAMES[1])
    store, _ = MemoryStore.open(open_database(settings), open_vector_index(settings), embedder)
    memory = Reading(settings, store=store).memory("books", "fixed")
    asyncio.run(memory.ingest(BOOK, name="book"))
    store.database.close()


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("startup") / "home"
    fill(home)
    return home


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("doc", "list", "--json"), 0),
        (("doc", "delete", "missing"), 2),
        (("doc", "search", "missing", "chess"), 2),
        (("db", "status", "--json"), 0),
        (("db", "upgrade"), 0),
        (("keys", "list"), 0),
        (("keys", "create", "--tenant", "acme"), 0),
    ],
)
def test_listing_and_admin_import_no_model_library(
    library: Path, args: tuple[str, ...], code: int
) -> None:
    done, modules = probe(*args, home=library)
    assert done.returncode == code, done.stderr
    assert not modules & MODEL_LIBRARIES
    assert not modules & LLM_MODULES
    assert "chromadb" not in modules  # SQL alone answers these: no vector index opened


def test_listing_reads_the_collections(library: Path) -> None:
    done, _ = probe("doc", "list", "--json", home=library)
    (books,) = json.loads(done.stdout)["collections"]
    assert books["name"] == "books" and books["episodes"] >= 1
    assert [d["name"] for d in books["documents"]] == ["book"]


def test_delete_opens_the_index_but_loads_no_model(tmp_path: Path) -> None:
    home = tmp_path / "home"
    fill(home)
    done, modules = probe("doc", "delete", "books", "--json", home=home)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"deleted": "books"}
    assert "chromadb" in modules and not modules & MODEL_LIBRARIES
    listed, _ = probe("doc", "list", "--json", home=home)
    assert json.loads(listed.stdout) == {"collections": []}


@pytest.mark.slow  # loads sentence-transformers
def test_search_loads_the_embedder_and_no_llm(library: Path) -> None:
    done, modules = probe("doc", "search", "books", "Who played chess?", "--json", home=library)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)["hits"]
    assert hits and all(h["text"] in BOOK for h in hits)
    assert "sentence_transformers" in modules
    assert not modules & LLM_MODULES


@pytest.mark.slow  # loads sentence-transformers
def test_an_unloadable_embedder_fails_at_first_embedding_not_at_listing(library: Path) -> None:
    broken = {"MNEME_EMBEDDING_MODEL": "no-such-org/no-such-model"}
    listed, _ = probe("doc", "list", home=library, **broken)
    assert listed.returncode == 0, listed.stderr
    done, _ = probe("doc", "search", "books", "chess", home=library, **broken)
    assert done.returncode == 4, done.stderr
    assert "MNEME_EMBEDDING_MODEL" in done.stderr and "Traceback" not in done.stderr


def test_the_memory_store_opens_with_its_embedder_unloaded(tmp_path: Path) -> None:
    store, _ = open_memory(load_settings(home=tmp_path))
    embedder = store.embedder
    assert isinstance(embedder, LazyEmbedder)
    assert embedder.model_name == BUNDLED_NAMES[1]  # known without the model
    assert not embedder.loaded
    store.database.close()


def test_the_catalog_opens_no_vector_index(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home")
    reading = Reading(settings)
    assert reading.catalog.namespaces.all() == []
    assert not settings.chroma_path.exists()
    reading.database.close()
