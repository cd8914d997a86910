"""Uploaded files handed to ``app`` as paths (the loaders read files, not byte buffers)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from streamlit.runtime.uploaded_file_manager import UploadedFile


@contextmanager
def saved(upload: UploadedFile) -> Iterator[Path]:
    """The upload written to a private temporary folder under its own name, removed after."""
    with tempfile.TemporaryDirectory(prefix="mneme-upload-") as folder:
        path = Path(folder) / Path(upload.name).name
        path.write_bytes(upload.getvalue())
        yield path
