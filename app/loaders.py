"""Loaders: a file on disk turned into plain text for long-document ingestion.

The format comes from the extension (case-insensitive): ``.txt``/``.text``/``.log`` and anything
unknown are read as text, ``.md``/``.markdown`` as Markdown (kept as written), ``.pdf`` with pypdf,
``.docx`` with python-docx and ``.epub`` with ebooklib and BeautifulSoup. Every failure — a missing
or oversized file, binary junk, an undetectable encoding, a corrupted or encrypted document, a
document with no text — raises :class:`~app.errors.UnreadableDocument` with a one-line message that
names the file, the problem and the fix.

Compressed formats are read within limits (issue 17): a DOCX or EPUB is checked — its ZIP directory,
then every part inflated in small chunks — before a library unpacks it; a PDF's streams decode under
pypdf's limits, lowered to ours; extracted text is counted as it grows. A document over a limit
raises :class:`~app.errors.DocumentTooLarge` (the REST API answers 413) after using a few MB of
memory, however far it would expand.
"""

from __future__ import annotations

import codecs
import io
import re
import stat
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import charset_normalizer
import docx
from bs4 import BeautifulSoup, XMLParsedAsHTMLWarning
from docx.opc.exceptions import PackageNotFoundError
from docx.table import Table
from ebooklib import epub
from pypdf import PageObject, PdfReader, apply_configuration
from pypdf.constants import PageAttributes
from pypdf.errors import LimitReachedError, PyPdfError
from pypdf.generic import ArrayObject, StreamObject

from app.errors import DocumentTooLarge, UnreadableDocument

MAX_BYTES = 50 * 1024 * 1024
"""Default limit on a document's size, in bytes (50 MiB)."""

MAX_CHARS = 64 * 1024 * 1024
"""Most characters of text a document may yield (64 Mi; the longest novels hold under 10 M).

The default ``max_chars`` is 4 per byte of ``max_bytes``, at most this; it is above
:data:`MAX_BYTES`, so no plain-text file within the default byte limit is refused for its length.
"""

MAX_UNPACKED_BYTES = 128 * 1024 * 1024
"""Most bytes a DOCX or EPUB may unpack to, all its parts together, and most bytes of decoded page
content a PDF may hold (128 MiB: several times the XML of a 1,000-page book); never more than
:data:`MAX_RATIO` times ``max_bytes``."""

MAX_RATIO = 100
"""Most times a part of a DOCX or EPUB may expand when unpacked (Word's XML compresses 5-20 times,
a decompression bomb 1,000 times); a part that unpacks to 1 MiB or less is not held to it."""

MAX_ENTRIES = 10_000
"""Most files a DOCX or EPUB may hold (a long illustrated book holds a few hundred)."""

MAX_PDF_STREAM_BYTES = 16 * 1024 * 1024
"""Most bytes one PDF stream (page content, an embedded form, a font's map) may decode to (16 MiB,
pypdf's own default being 75 MB: zlib holds about twice this while refusing); never more than the
unpacked limit."""

_MB = 1024 * 1024
_RATIO_GRACE = 1024 * 1024  # parts up to this size may expand any number of times
_CHUNK = 64 * 1024  # bytes inflated at a time while checking a ZIP's parts
_ZIP_RECORD = b"PK\x01\x02"  # starts every record of a ZIP's central directory
_SHRINK_HINT = "split it into smaller files or save it as plain text"
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


@dataclass(frozen=True, slots=True)
class _Limits:
    """How much one load may unpack and extract."""

    chars: int
    """Characters of extracted text, before normalisation."""
    unpacked: int
    """Bytes a DOCX or EPUB unpacks to (all parts), or bytes of a PDF's decoded page content."""
    stream: int
    """Bytes one PDF stream may decode to."""


def load_document(
    path: Path,
    *,
    max_bytes: int = MAX_BYTES,
    max_chars: int | None = None,
    name: str | None = None,
) -> LoadedText:
    """Read ``path`` and return its plain text; at most ``max_bytes`` bytes are ever read.

    ``max_chars`` bounds the extracted text (default: 4 per byte of ``max_bytes``, at most
    :data:`MAX_CHARS`); a DOCX or EPUB may unpack to at most :data:`MAX_RATIO` times ``max_bytes``
    (at most :data:`MAX_UNPACKED_BYTES`). ``name`` is what messages call the file (an upload's own
    file name, so that they never show a server's temporary path); by default the resolved path.

    Raises :class:`~app.errors.UnreadableDocument` when the file is missing, not a regular file,
    unreadable, empty, binary, in an undetectable encoding, corrupted, encrypted, or holds only
    whitespace; :class:`~app.errors.DocumentTooLarge`, a subclass, when it is larger than
    ``max_bytes`` or would unpack or extract to more than the limits above.
    """
    chars = min(4 * max_bytes, MAX_CHARS) if max_chars is None else max_chars
    unpacked = min(MAX_RATIO * max_bytes, MAX_UNPACKED_BYTES)
    limits = _Limits(chars=chars, unpacked=unpacked, stream=min(MAX_PDF_STREAM_BYTES, unpacked))
    # One line whatever the client called its file.
    label = None if name is None else " ".join(name.split()) or "the document"
    try:
        source = path.expanduser().resolve()
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop on Python 3.11
        detail = err if label is None else getattr(err, "strerror", None) or "a symlink loop"
        raise UnreadableDocument(
            f"{label or path}: cannot resolve the path ({detail}); fix the path"
        ) from err
    label = label or str(source)
    data = _read(source, max_bytes, label)
    kind = _FORMATS.get(source.suffix.lower(), "text")
    raw_text, title = _EXTRACTORS[kind](data, label, limits)
    text = _normalise(raw_text)
    if not text.strip():
        hint = _EMPTY_HINTS.get(kind, "it contains only whitespace; choose a file with text in it")
        raise UnreadableDocument(f"{label}: no text could be extracted: {hint}")
    title = " ".join((title or "").split()) or source.stem
    return LoadedText(text=text, title=title, format=kind, source=str(source))


def _read(source: Path, max_bytes: int, label: str) -> bytes:
    """The file's bytes, refusing by ``stat`` before reading anything too large."""
    try:
        info = source.stat()
    except FileNotFoundError as err:
        raise UnreadableDocument(f"{label}: does not exist; check the path") from err
    except OSError as err:
        raise UnreadableDocument(
            f"{label}: cannot be read ({err.strerror}); check its permissions"
        ) from err
    if stat.S_ISDIR(info.st_mode):
        raise UnreadableDocument(
            f"{label}: is a folder, not a file; give the path of a document inside it"
        )
    if not stat.S_ISREG(info.st_mode):
        raise UnreadableDocument(
            f"{label}: is not a regular file (a pipe, socket or device); save it to a file first"
        )
    try:
        with source.open("rb") as stream:
            # read(n) sets n bytes aside first: ask for what stat saw, then for the rest if the
            # file has grown since; never beyond the limit.
            data = stream.read(min(info.st_size, max_bytes) + 1)
            if len(data) > info.st_size:
                data += stream.read(max_bytes + 1 - len(data))
    except OSError as err:
        raise UnreadableDocument(
            f"{label}: cannot be read ({err.strerror}); check its permissions"
        ) from err
    size = max(info.st_size, len(data))
    if size > max_bytes:
        raise DocumentTooLarge(
            f"{label}: is {_size(size)}, over the limit of {_size(max_bytes)}; "
            "split it into smaller files"
        )
    if not data:
        raise UnreadableDocument(f"{label}: is empty (0 bytes); choose a file with text in it")
    return data


def _count(chars: int, label: str, limits: _Limits) -> int:
    """``chars`` if within the text limit; :class:`DocumentTooLarge` else."""
    if chars > limits.chars:
        raise DocumentTooLarge(
            f"{label}: holds more than {limits.chars:,} characters of text, the limit; "
            "split it into smaller files"
        )
    return chars


def _unpacks_too_much(label: str, limits: _Limits) -> DocumentTooLarge:
    return DocumentTooLarge(
        f"{label}: unpacks to more than {_size(limits.unpacked)}, the limit; {_SHRINK_HINT}"
    )


def _check_zip(data: bytes, label: str, kind: str, limits: _Limits) -> None:
    """Refuse a DOCX or EPUB that would unpack to too much, before a library unpacks any of it.

    First the ZIP's directory: how many files, their compression and the sizes and ratios they
    declare. Then every part is inflated 64 KiB at a time and its bytes counted and thrown away, so
    memory stays small whatever the file claims; zipfile stops a part at its declared size and
    checks its CRC, so a directory that lies about a size fails here as corrupted.
    """
    # Counting signatures bounds the records before zipfile turns each into an object.
    records = data.count(_ZIP_RECORD)
    if records > MAX_ENTRIES:
        raise DocumentTooLarge(
            f"{label}: lists {records:,} files, over the limit of {MAX_ENTRIES:,} for a {kind}; "
            f"{_SHRINK_HINT}"
        )
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            parts = archive.infolist()
            declared = packed = 0
            for part in parts:
                if part.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise _corrupted(
                        label, kind, f"{part.filename!r} uses compression {part.compress_type}"
                    )
                declared += part.file_size
                packed += part.compress_size
                if declared > limits.unpacked:
                    raise _unpacks_too_much(label, limits)
                ratio = part.file_size / max(part.compress_size, 1)
                if part.file_size > _RATIO_GRACE and ratio > MAX_RATIO:
                    raise DocumentTooLarge(
                        f"{label}: its part {part.filename!r} expands {ratio:,.0f} times, over "
                        f"the limit of {MAX_RATIO} (a decompression bomb?); {_SHRINK_HINT}"
                    )
            if packed > len(data):  # parts that overlap: the "better zip bomb" (Fifield, 2019)
                raise _corrupted(label, kind, "its parts overlap")
            unpacked = 0
            for part in parts:
                with archive.open(part) as stream:
                    while chunk := stream.read(_CHUNK):
                        unpacked += len(chunk)
                        if unpacked > limits.unpacked:
                            raise _unpacks_too_much(label, limits)
    # zlib.error and EOFError: a damaged deflate stream; RuntimeError: an encrypted part.
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, ValueError) as err:
        raise _corrupted(label, kind, err) from err


def _size(count: int) -> str:
    return f"{count / _MB:,.1f} MB" if count >= _MB // 10 else f"{count:,} bytes"


def _normalise(text: str) -> str:
    """``\\n`` newlines, no control characters, at most one blank line in a row, no outer blanks."""
    text = _CONTROL.sub("", _NEWLINES.sub("\n", text))
    return _LEADING_BLANKS.sub("", _BLANK_RUNS.sub("\n\n", text)).rstrip()


def _text(data: bytes, label: str, limits: _Limits) -> tuple[str, str | None]:
    """Decode plain text or Markdown: UTF-8 (BOM or not), UTF-16 with BOM, else a detected charset.

    NUL bytes mean binary (UTF-16 without a BOM is rejected too); so does charset-normalizer
    finding no encoding whose decoded text is coherent (its mess ratio under 0.2). The bytes are
    bounded already, so the text is counted once decoded.
    """
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as err:
            raise UnreadableDocument(
                f"{label}: starts with a UTF-16 byte-order mark but is not valid UTF-16; "
                "save it again as UTF-8"
            ) from err
        _count(len(text), label, limits)
        return text, None
    if b"\x00" in data:
        raise UnreadableDocument(
            f"{label}: looks binary (it contains NUL bytes), not text; convert it to "
            ".txt, .md, .pdf, .docx or .epub (UTF-16 text needs a byte-order mark)"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        matches = charset_normalizer.from_bytes(data)
        best = matches.best()
        if best is None:
            raise UnreadableDocument(
                f"{label}: is not UTF-8 and no text encoding fits it (binary, or an unknown "
                "encoding); convert it to UTF-8 text"
            ) from None
        tied = [m for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence)]
        text = str(next((m for m in tied if m.encoding in _PREFERRED_ENCODINGS), best))
    _count(len(text), label, limits)
    return text, None


def _pdf(data: bytes, label: str, limits: _Limits) -> tuple[str, str | None]:
    """Page texts joined by blank lines; the title from the document information.

    Each stream decodes to at most ``limits.stream`` bytes (pypdf's limits, lowered for this
    call only), pages' content to ``limits.unpacked`` bytes together; the text is counted page by
    page, so extraction stops at the first page past the limit.
    """
    encrypted = (
        f"{label}: the PDF is encrypted and needs a password; save an unencrypted copy "
        "(e.g. print it to PDF) and load that"
    )
    # Outside the try: a pypdf without these settings (before 7.1) fails loudly, not as corrupted.
    with apply_configuration(
        zlib_maximum_output_length=limits.stream,
        lzw_maximum_output_length=limits.stream,
        run_length_maximum_output_length=limits.stream,
        brotli_maximum_output_length=limits.stream,
        jbig2_maximum_output_length=limits.stream,
        array_based_stream_maximum_output_length=limits.stream,
    ):
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
            pages: list[str] = []
            content = chars = 0
            counted: set[int] = set()
            for page in reader.pages:
                content += _new_content(page, counted)
                if content > limits.unpacked:
                    raise _unpacks_too_much(label, limits)
                pages.append(page.extract_text())
                chars = _count(chars + len(pages[-1]), label, limits)
            title = reader.metadata.title if reader.metadata is not None else None
        except LimitReachedError as err:
            raise DocumentTooLarge(
                f"{label}: the PDF is over a decoding limit ({_detail(err)}); a stream may decode "
                f"to at most {_size(limits.stream)}; {_SHRINK_HINT}"
            ) from err
        except (PyPdfError, OSError, ValueError, LookupError, TypeError, AttributeError) as err:
            raise _corrupted(label, "PDF", err) from err
    return "\n\n".join(pages), title


def _new_content(page: PageObject, counted: set[int]) -> int:
    """Decoded bytes of the page's content streams not in ``counted`` (ids), which gains them.

    pypdf keeps every stream it decodes for the reader's life (so ids stay unique), and the
    streams' total bounds that memory; a stream that pages share (a letterhead) is counted once.
    """
    contents = page.get(PageAttributes.CONTENTS)
    contents = None if contents is None else contents.get_object()
    total = 0
    for item in contents if isinstance(contents, ArrayObject) else [contents]:
        stream = None if item is None else item.get_object()
        if isinstance(stream, StreamObject) and id(stream) not in counted:
            counted.add(id(stream))
            total += len(stream.get_data())
    return total


def _docx(data: bytes, label: str, limits: _Limits) -> tuple[str, str | None]:
    """Paragraphs and table rows (cells tab-separated) in document order; the core title."""
    _check_zip(data, label, "DOCX", limits)
    try:
        document = docx.Document(io.BytesIO(data))
        blocks: list[str] = []
        chars = 0
        for block in document.iter_inner_content():
            for row in _table_rows(block) if isinstance(block, Table) else [block.text]:
                blocks.append(row)
                chars = _count(chars + len(row), label, limits)
        title = document.core_properties.title
    # lxml's XMLSyntaxError is a SyntaxError; a zip without the parts raises KeyError.
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError, SyntaxError) as err:
        raise _corrupted(label, "DOCX", err) from err
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


def _epub(data: bytes, label: str, limits: _Limits) -> tuple[str, str | None]:
    """The spine's XHTML documents in reading order, block elements as paragraphs; the DC title.

    The navigation document (the table of contents) is skipped even when it is in the spine.
    """
    _check_zip(data, label, "EPUB", limits)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="ebooklib")  # its deprecation notices
            book = epub.read_epub(io.BytesIO(data), {"ignore_ncx": True})
        documents = [book.get_item_with_id(idref) for idref, _linear in book.spine]
        chapters: list[str] = []
        chars = 0
        for item in documents:
            if isinstance(item, epub.EpubHtml) and not isinstance(item, epub.EpubNav):
                chapters.append(_html_text(bytes(item.get_content())))
                chars = _count(chars + len(chapters[-1]), label, limits)
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
        raise _corrupted(label, "EPUB", err) from err
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


def _detail(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _corrupted(label: str, kind: str, err: Exception | str) -> UnreadableDocument:
    detail = err if isinstance(err, str) else _detail(err)
    return UnreadableDocument(
        f"{label}: is not a readable {kind} file ({detail}); it may be corrupted or "
        f"mislabelled — open and re-save it, or export it again"
    )


_EXTRACTORS: dict[str, Callable[[bytes, str, _Limits], tuple[str, str | None]]] = {
    "text": _text,
    "markdown": _text,
    "pdf": _pdf,
    "docx": _docx,
    "epub": _epub,
}
