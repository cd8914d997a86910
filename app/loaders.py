"""Loaders: a file on disk turned into plain text for long-document ingestion.

The format comes from the extension (case-insensitive): ``.txt``/``.text``/``.log`` and anything
unknown are read as text, ``.md``/``.markdown`` as Markdown (kept as written), ``.pdf`` with pypdf,
``.docx`` with python-docx and ``.epub`` with ebooklib and BeautifulSoup. Every failure — a missing
or oversized file, binary junk, an undetectable encoding, a corrupted or encrypted document, a
document with no text — raises :class:`~app.errors.UnreadableDocument` with a one-line message that
names the file, the problem and the fix.
"""

from __future__ import annotations

import codecs
import io
import re
import stat
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import charset_normalizer
import docx
from bs4 import BeautifulSoup, XMLParsedAsHTMLWarning
from docx.opc.exceptions import PackageNotFoundError
from docx.table import Table
from ebooklib import epub
from pypdf import PdfReader
from pypdf.errors import PyPdfError

from app.errors import UnreadableDocument

MAX_BYTES = 50 * 1024 * 1024
"""Default limit on a document's size, in bytes (50 MiB)."""

_MB = 1024 * 1024
_FORMATS = {
    ".txt": "text",
    ".text": "text",
    ".log": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".pdf": "pdf",
    ".docx": "docx",
    ".epub": "epub",
}
# What to do when a document holds no text, by format.
_EMPTY_HINTS = {
    "pdf": "it has no text layer (a scanned document?); run OCR on it first, e.g. ocrmypdf",
    "docx": "it contains no text; add text to it or choose another file",
    "epub": "its chapters contain no text; choose another file",
}
# Short texts often tie between code pages that read the same bytes as different letters (cp1250,
# cp1252, iso8859_10); on a tie prefer the commonest legacy encodings.
_PREFERRED_ENCODINGS = ("cp1252", "latin_1")
_EPUB_BLOCKS = [
    "p", "div", "section", "article", "header", "footer", "aside", "nav", "blockquote", "pre",
    "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "tr", "caption", "figcaption", "hr",
]  # fmt: skip
_PARAGRAPH = "\u2029"  # PARAGRAPH SEPARATOR: marks block boundaries while flattening HTML
_LINE = "\u2028"  # LINE SEPARATOR: marks <br> so that whitespace collapsing keeps it
_NEWLINES = re.compile(r"\r\n?")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all C0/C1 controls but \t and \n
_BLANK_RUNS = re.compile(r"\n(?:[ \t]*\n){2,}")
_LEADING_BLANKS = re.compile(r"\A(?:[ \t]*\n)+")


@dataclass(frozen=True, slots=True)
class LoadedText:
    """A document's plain text and where it came from."""

    text: str
    """The plain text, paragraphs separated by one blank line, newlines normalised to ``\\n``."""
    title: str
    """The title from the document's metadata (PDF, DOCX, EPUB), else the file name's stem."""
    format: str
    """One of ``text``, ``markdown``, ``pdf``, ``docx``, ``epub``."""
    source: str
    """The resolved path of the file."""


def load_document(path: Path, *, max_bytes: int = MAX_BYTES) -> LoadedText:
    """Read ``path`` and return its plain text; at most ``max_bytes`` bytes are ever read.

    Raises :class:`~app.errors.UnreadableDocument` when the file is missing, not a regular file,
    unreadable, empty, larger than ``max_bytes``, binary, in an undetectable encoding, corrupted,
    encrypted, or holds only whitespace.
    """
    try:
        source = path.expanduser().resolve()
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop on Python 3.11
        raise UnreadableDocument(f"{path}: cannot resolve the path ({err}); fix the path") from err
    data = _read(source, max_bytes)
    kind = _FORMATS.get(source.suffix.lower(), "text")
    raw_text, title = _EXTRACTORS[kind](data, source)
    text = _normalise(raw_text)
    if not text.strip():
        hint = _EMPTY_HINTS.get(kind, "it contains only whitespace; choose a file with text in it")
        raise UnreadableDocument(f"{source}: no text could be extracted: {hint}")
    title = " ".join((title or "").split()) or source.stem
    return LoadedText(text=text, title=title, format=kind, source=str(source))


def _read(source: Path, max_bytes: int) -> bytes:
    """The file's bytes, refusing by ``stat`` before reading anything too large."""
    try:
        info = source.stat()
    except FileNotFoundError as err:
        raise UnreadableDocument(f"{source}: does not exist; check the path") from err
    except OSError as err:
        raise UnreadableDocument(
            f"{source}: cannot be read ({err.strerror}); check its permissions"
        ) from err
    if stat.S_ISDIR(info.st_mode):
        raise UnreadableDocument(
            f"{source}: is a folder, not a file; give the path of a document inside it"
        )
    if not stat.S_ISREG(info.st_mode):
        raise UnreadableDocument(
            f"{source}: is not a regular file (a pipe, socket or device); save it to a file first"
        )
    try:
        with source.open("rb") as stream:
            data = stream.read(max_bytes + 1)  # bounded: the file may have grown since stat
    except OSError as err:
        raise UnreadableDocument(
            f"{source}: cannot be read ({err.strerror}); check its permissions"
        ) from err
    size = max(info.st_size, len(data))
    if size > max_bytes:
        raise UnreadableDocument(
            f"{source}: is {_size(size)}, over the limit of {_size(max_bytes)}; "
            "split it into smaller files"
        )
    if not data:
        raise UnreadableDocument(f"{source}: is empty (0 bytes); choose a file with text in it")
    return data


def _size(count: int) -> str:
    return f"{count / _MB:,.1f} MB" if count >= _MB // 10 else f"{count:,} bytes"


def _normalise(text: str) -> str:
    """``\\n`` newlines, no control characters, at most one blank line in a row, no outer blanks."""
    text = _CONTROL.sub("", _NEWLINES.sub("\n", text))
    return _LEADING_BLANKS.sub("", _BLANK_RUNS.sub("\n\n", text)).rstrip()


def _text(data: bytes, source: Path) -> tuple[str, str | None]:
    """Decode plain text or Markdown: UTF-8 (BOM or not), UTF-16 with BOM, else a detected charset.

    NUL bytes mean binary (UTF-16 without a BOM is rejected too); so does charset-normalizer
    finding no encoding whose decoded text is coherent (its mess ratio under 0.2).
    """
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), None
        except UnicodeDecodeError as err:
            raise UnreadableDocument(
                f"{source}: starts with a UTF-16 byte-order mark but is not valid UTF-16; "
                "save it again as UTF-8"
            ) from err
    if b"\x00" in data:
        raise UnreadableDocument(
            f"{source}: looks binary (it contains NUL bytes), not text; convert it to "
            ".txt, .md, .pdf, .docx or .epub (UTF-16 text needs a byte-order mark)"
        )
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        pass
    matches = charset_normalizer.from_bytes(data)
    best = matches.best()
    if best is None:
        raise UnreadableDocument(
            f"{source}: is not UTF-8 and no text encoding fits it (binary, or an unknown "
            "encoding); convert it to UTF-8 text"
        )
    tied = [m for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence)]
    chosen = next((m for m in tied if m.encoding in _PREFERRED_ENCODINGS), best)
    return str(chosen), None


def _pdf(data: bytes, source: Path) -> tuple[str, str | None]:
    """Page texts joined by blank lines; the title from the document information."""
    encrypted = (
        f"{source}: the PDF is encrypted and needs a password; save an unencrypted copy "
        "(e.g. print it to PDF) and load that"
    )
    # pypdf raises plain Python errors as well as its own on malformed files.
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")  # PDFs with only an owner password open like this
            except PyPdfError as err:  # DependencyError: AES needs the cryptography package
                raise UnreadableDocument(encrypted) from err
            if not opened:
                raise UnreadableDocument(encrypted)
        pages = [page.extract_text() for page in reader.pages]
        title = reader.metadata.title if reader.metadata is not None else None
    except (PyPdfError, OSError, ValueError, LookupError, TypeError, AttributeError) as err:
        raise _corrupted(source, "PDF", err) from err
    return "\n\n".join(pages), title


def _docx(data: bytes, source: Path) -> tuple[str, str | None]:
    """Paragraphs and table rows (cells tab-separated) in document order; the core title."""
    try:
        document = docx.Document(io.BytesIO(data))
        blocks = [
            row
            for block in document.iter_inner_content()
            for row in (_table_rows(block) if isinstance(block, Table) else [block.text])
        ]
        title = document.core_properties.title
    # lxml's XMLSyntaxError is a SyntaxError; a zip without the parts raises KeyError.
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError, SyntaxError) as err:
        raise _corrupted(source, "DOCX", err) from err
    return "\n\n".join(blocks), title


def _table_rows(table: Table) -> Iterator[str]:
    for row in table.rows:
        texts: list[str] = []
        previous: object = None
        for cell in row.cells:
            # A merged cell comes back once per grid column it spans; keep it once.
            if cell._tc is not previous:
                texts.append(cell.text)
            previous = cell._tc
        yield "\t".join(texts)


def _epub(data: bytes, source: Path) -> tuple[str, str | None]:
    """The spine's XHTML documents in reading order, block elements as paragraphs; the DC title.

    The navigation document (the table of contents) is skipped even when it is in the spine.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="ebooklib")  # its deprecation notices
            book = epub.read_epub(io.BytesIO(data), {"ignore_ncx": True})
        documents = [book.get_item_with_id(idref) for idref, _linear in book.spine]
        chapters = [
            _html_text(bytes(item.get_content()))
            for item in documents
            if isinstance(item, epub.EpubHtml) and not isinstance(item, epub.EpubNav)
        ]
        titles = book.get_metadata("DC", "title")
    # ebooklib lets zip, lxml (SyntaxError) and missing-element errors through unwrapped.
    except (
        epub.EpubException,
        zipfile.BadZipFile,
        LookupError,
        AttributeError,
        ValueError,
        SyntaxError,
    ) as err:
        raise _corrupted(source, "EPUB", err) from err
    return "\n\n".join(chapters), str(titles[0][0]) if titles else None


def _html_text(markup: bytes) -> str:
    """Visible text of an XHTML document: one paragraph per block element, ``<br>`` kept."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)  # XHTML through the HTML parser
        soup = BeautifulSoup(markup, "lxml")
    for tag in soup.find_all(["head", "script", "style"]):
        tag.decompose()
    for tag in soup.find_all("br"):
        tag.replace_with(_LINE)
    for tag in soup.find_all(_EPUB_BLOCKS):
        tag.insert_before(_PARAGRAPH)
        tag.insert_after(_PARAGRAPH)
    paragraphs = []
    for chunk in soup.get_text().split(_PARAGRAPH):
        lines = (" ".join(line.split()) for line in chunk.split(_LINE))
        paragraph = "\n".join(line for line in lines if line)
        if paragraph:
            paragraphs.append(paragraph)
    return "\n\n".join(paragraphs)


def _corrupted(source: Path, kind: str, err: Exception) -> UnreadableDocument:
    detail = " ".join(str(err).split()) or type(err).__name__
    return UnreadableDocument(
        f"{source}: is not a readable {kind} file ({detail}); it may be corrupted or "
        f"mislabelled — open and re-save it, or export it again"
    )


_EXTRACTORS: dict[str, Callable[[bytes, Path], tuple[str, str | None]]] = {
    "text": _text,
    "markdown": _text,
    "pdf": _pdf,
    "docx": _docx,
    "epub": _epub,
}
