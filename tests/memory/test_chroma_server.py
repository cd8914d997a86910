"""The same index against a real Chroma server (``chroma run``) on 127.0.0.1."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from memory import ChromaVectorIndex, StoreUnavailable
from tests.net import free_port


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    beside_python = Path(sys.executable).parent / "chroma"  # the venv's bin is not always on PATH
    binary = str(beside_python) if beside_python.exists() else shutil.which("chroma")
    if binary is None:
        pytest.skip("the chroma CLI is not installed")
    port = free_port()
    folder: Path = tmp_path_factory.mktemp("chroma-server")
    server = subprocess.Popen(
        [binary, "run", "--path", str(folder), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.skip("chroma run did not answer within 60 s")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_http_client_round_trip(chroma_url: str) -> None:
    index = ChromaVectorIndex(url=chroma_url)
    index.ping()
    vectors = np.eye(4, dtype=np.float32)
    index.upsert(7, [10, 11, 12, 13], vectors, [1, 1, 2, 1])
    hits = index.query(7, vectors[2], k=2)
    assert hits[0].id == 12 and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert index.entries(7) == {10: 1, 11: 1, 12: 2, 13: 1}
    assert 7 in index.namespace_ids()
    index.drop(7)
    assert 7 not in index.namespace_ids()


def test_unreachable_server_is_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match="MNEME_CHROMA_URL"):
        ChromaVectorIndex(url=f"http://127.0.0.1:{free_port()}").ping()
