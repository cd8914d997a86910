"""Decompression bombs (issue 17): documents that unpack to far more than they weigh are refused
while being read, within a small memory budget, with a message that names the limit.

Every bomb is built here, in memory, in a second at most; none is stored in the repository.
Memory is what tracemalloc sees: Python's allocations, zlib's output among them (lxml's are not,
but no refusal here gets as far as lxml).
"""

from __future__ import annotations

import functools
import io
import struct
import tracemalloc
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from tempfile import TemporaryDirectory

import docx
import pytest
from ebooklib import epub

from app.errors import EXIT_USAGE, DocumentTooLarge, UnreadableDocument, exit_code, http_status
from app.loaders import (
    MAX_ENTRIES,
    MAX_PDF_STREAM_BYTES,
    MAX_RATIO,
    MAX_UNPACKED_BYTES,
    load_document,
)
from tests.app.test_loaders import write_docx, write_epub, write_pdf

MiB = 1024 * 1024
MEMORY_BUDGET = 50 * MiB
"""Most bytes a refusal may allocate at its peak, whatever the bomb would unpack to."""
BOMB_BYTES = 300 * MiB
"""What the realistic bombs unpack to: the audit's DOCX held 314 million characters."""
LETTERS = b"a" * 1000
# What each ZIP-based bomb swells: the part, where its body starts, and one paragraph of it.
SWOLLEN = {
    ".docx": ("word/document.xml", b"<w:body>", b"<w:p><w:r><w:t>%s</w:t></w:r></w:p>" % LETTERS),
    ".epub": ("EPUB/one.xhtml", b"<body>", b"<p>%s</p>" % LETTERS),
}
PATHS = b"0 0 m 612 792 l S\n"  # a line drawn across the page: content without text


@pytest.fixture(scope="module", autouse=True)
def warm(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Load each format once, so that imports done on first use do not count as a bomb's cost."""
    folder = tmp_path_factory.mktemp("warm")
    (folder / "drawn.pdf").write_bytes(pdf([deflated(b"BT /F1 9 Tf (Warm.) Tj ET\n", 1)]))
    for path in (
        folder / "drawn.pdf",
        write_pdf(folder / "warm.pdf", ["Warm."]),
        write_docx(folder / "warm.docx"),
        write_epub(folder / "warm.epub"),
    ):
        load_document(path)


def refusal(path: Path, **limits: int) -> tuple[UnreadableDocument, int]:
    """What loading ``path`` (named by its file name) raises, and the peak bytes it allocated."""
    tracemalloc.start()
    try:
        with pytest.raises(UnreadableDocument) as caught:
            load_document(path, name=path.name, **limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert message.startswith(f"{path.name}: ") and "\n" not in message
    assert str(path.parent) not in message
    return caught.value, peak


# Builders


@functools.cache
def good(suffix: str) -> bytes:
    """A small real DOCX or EPUB, as its writer saves it."""
    writer = write_docx if suffix == ".docx" else write_epub
    with TemporaryDirectory() as folder:
        return writer(Path(folder) / f"good{suffix}").read_bytes()


def swollen(suffix: str, size: int, *, level: int = 6) -> bytes:
    """The good ``suffix`` document whose main part holds ``size`` more bytes of paragraphs (of
    1,000 letters each, so as many paragraphs as fit).

    The part is streamed into the ZIP 1 MiB at a time, so building it takes little memory.
    """
    member, body, paragraph = SWOLLEN[suffix]
    block = paragraph * (MiB // len(paragraph))
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(good(suffix))) as source,
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as target,
    ):
        for info in source.infolist():
            if info.filename != member:
                target.writestr(info, source.read(info))  # keeps its compression: mimetype stored
                continue
            head, tail = source.read(info).split(body)
            blocks, rest = divmod(size // len(paragraph), len(block) // len(paragraph))
            with target.open(member, "w") as stream:
                stream.write(head + body)
                for _ in range(blocks):
                    stream.write(block)
                stream.write(paragraph * rest + tail)
    return buffer.getvalue()


def padded(suffix: str, count: int, size: int) -> bytes:
    """The good ``suffix`` document plus ``count`` parts of ``size`` zero bytes, unread."""
    buffer = io.BytesIO(good(suffix))
    with zipfile.ZipFile(buffer, "a", zipfile.ZIP_DEFLATED) as archive:
        for index in range(count):
            archive.writestr(f"padding/{index}.bin", bytes(size))
    return buffer.getvalue()


@functools.cache
def bomb(suffix: str) -> bytes:
    """The audit's bomb: a DOCX or EPUB of under 1 MB whose main part unpacks to 300 MB."""
    return swollen(suffix, BOMB_BYTES)


def directory_records(data: bytes) -> Iterator[tuple[int, str]]:
    """(offset, name) of each record in a ZIP's central directory."""
    end = data.rindex(b"PK\x05\x06")
    count, _size, at = struct.unpack_from("<HII", data, end + 10)
    for _ in range(count):
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", data, at + 28)
        yield at, data[at + 46 : at + 46 + name_length].decode()
        at += 46 + name_length + extra_length + comment_length


def lying(data: bytes, member: str, size: int) -> bytes:
    """``data`` whose directory says that ``member`` unpacks to ``size`` bytes."""
    patched = bytearray(data)
    for at, name in directory_records(data):
        if name == member:
            struct.pack_into("<I", patched, at + 24, size)  # the uncompressed size field
    return bytes(patched)


def overlapping(data: bytes, copies: int) -> bytes:
    """``data`` whose directory lists every part ``copies`` times, all at the same bytes."""
    end = data.rindex(b"PK\x05\x06")
    count, size, at = struct.unpack_from("<HII", data, end + 10)
    record = bytearray(data[end:])
    struct.pack_into("<HHI", record, 8, count * copies, count * copies, size * copies)
    return data[:at] + data[at : at + size] * copies + bytes(record)


def deflated(unit: bytes, size: int) -> bytes:
    """``unit`` repeated to ``size`` bytes or more (once at least), zlib-compressed, at any size
    built at once.

    After a full flush deflate forgets what came before, so every further 1 MiB block compresses
    to the same bytes: those are repeated rather than compressed again, and the checksum is
    computed over the blocks.
    """
    block = unit * max(min(size, MiB) // len(unit), 1)
    count = -(-size // len(block))  # rounded up
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)  # raw: no header, no check
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    check = 1
    for _ in range(count):
        check = zlib.adler32(block, check)
    body = first + again * (count - 1) + compressor.flush()
    return b"\x78\xda" + body + struct.pack(">I", check)


def pdf(streams: list[bytes], pages: list[int] | None = None) -> bytes:
    """A PDF written by hand: page ``i`` shows the FlateDecode content ``streams[pages[i]]``."""
    pages = list(range(len(streams))) if pages is None else pages
    first_stream = 4 + len(pages)  # objects: catalog, page tree, font, pages, then streams
    kids = " ".join(f"{4 + i} 0 R" for i in range(len(pages)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        *(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font "
            f"<< /F1 3 0 R >> >> /Contents {first_stream + index} 0 R >>".encode()
            for index in pages
        ),
        *(
            b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(body), body)
            for body in streams
        ),
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    table = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        table,
    )
    return bytes(out)


# DOCX and EPUB: ZIP containers


@pytest.mark.parametrize("suffix", [".docx", ".epub"])
def test_zip_bomb_is_refused_by_its_directory(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"bomb{suffix}"
    path.write_bytes(bomb(suffix))
    assert path.stat().st_size < MiB  # the audit's: 347 KB for 314 million characters
    error, peak = refusal(path)
    assert isinstance(error, DocumentTooLarge)
    assert f"unpacks to more than {MAX_UNPACKED_BYTES // MiB:.1f} MB, the limit" in str(error)
    assert "split it" in str(error) and "plain text" in str(error)
    assert peak < MEMORY_BUDGET


@pytest.mark.parametrize("suffix", [".docx", ".epub"])
def test_part_that_expands_too_many_times_is_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"dense{suffix}"
    path.write_bytes(swollen(suffix, 20 * MiB))  # within the unpacked limit, 400 times its size
    error, peak = refusal(path)
    assert isinstance(error, DocumentTooLarge)
    assert f"over the limit of {MAX_RATIO} (a decompression bomb?)" in str(error)
    assert repr(SWOLLEN[suffix][0]) in str(error)
    assert peak < MEMORY_BUDGET


def test_part_within_the_ratio_grace_loads(tmp_path: Path) -> None:
    path = tmp_path / "repetitive.docx"
    path.write_bytes(swollen(".docx", 900 * 1024))  # 900 KiB that compress some 300 times
    paragraphs = 900 * 1024 // len(SWOLLEN[".docx"][2])
    assert load_document(path).text.count(LETTERS.decode()) == paragraphs


def test_lower_byte_limit_lowers_the_unpacked_limit(tmp_path: Path) -> None:
    path = tmp_path / "padded.epub"
    path.write_bytes(padded(".epub", 3, 900 * 1024))  # 2.6 MiB in parts within the ratio grace
    limit = 16 * 1024
    assert path.stat().st_size < limit
    error, _ = refusal(path, max_bytes=limit)
    assert f"unpacks to more than {MAX_RATIO * limit / MiB:.1f} MB, the limit" in str(error)
    assert load_document(path, max_bytes=MiB).format == "epub"


def test_sizes_that_lie_are_caught_while_inflating(tmp_path: Path) -> None:
    path = tmp_path / "liar.docx"
    path.write_bytes(lying(bomb(".docx"), "word/document.xml", 1000))  # 300 MB said to be 1 KB
    error, peak = refusal(path)
    assert not isinstance(error, DocumentTooLarge)  # a false directory: corrupted, not large
    assert "corrupted" in str(error) and "word/document.xml" in str(error)
    assert peak < MEMORY_BUDGET


def test_too_many_files_are_refused_before_listing_them(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(MAX_ENTRIES + 1):
            archive.writestr(f"word/media/{index}.xml", b"")
    path = tmp_path / "crowded.docx"
    path.write_bytes(buffer.getvalue())
    error, peak = refusal(path)
    assert isinstance(error, DocumentTooLarge)
    assert f"lists {MAX_ENTRIES + 1:,} files, over the limit of {MAX_ENTRIES:,}" in str(error)
    assert peak < MEMORY_BUDGET


def test_parts_that_overlap_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # stored: the directory's ratios are all 1
        archive.writestr("word/document.xml", bytes(range(256)) * 1024)
    path = tmp_path / "overlap.docx"
    path.write_bytes(overlapping(buffer.getvalue(), 3))
    error, _ = refusal(path)
    assert "its parts overlap" in str(error) and "corrupted" in str(error)


# PDF


def test_pdf_stream_bomb_is_refused_at_the_stream_limit(tmp_path: Path) -> None:
    path = tmp_path / "bomb.pdf"
    path.write_bytes(pdf([deflated(PATHS, BOMB_BYTES)]))
    assert path.stat().st_size < MiB
    error, peak = refusal(path)
    assert isinstance(error, DocumentTooLarge)
    assert f"a stream may decode to at most {MAX_PDF_STREAM_BYTES // MiB:.1f} MB" in str(error)
    assert peak < MEMORY_BUDGET


def test_pdf_pages_content_is_limited_in_total(tmp_path: Path) -> None:
    limit = 2 * 1024  # so the unpacked limit is 200 KiB (0.2 MB)
    # 90 KB of content, almost all a comment, which pypdf skips quickly.
    drawing = deflated(b"BT /F1 9 Tf (Drawing.) Tj ET\n%" + b"x" * 90_000 + b"\n", 1)
    shared = tmp_path / "shared.pdf"
    shared.write_bytes(pdf([drawing], pages=[0, 0, 0]))
    assert load_document(shared, max_bytes=limit).text == "Drawing.\n\nDrawing.\n\nDrawing."
    apart = tmp_path / "apart.pdf"
    apart.write_bytes(pdf([drawing] * 3))  # the same content three times over
    error, _ = refusal(apart, max_bytes=limit)
    assert "unpacks to more than 0.2 MB, the limit" in str(error)


# Text


def write_text(folder: Path, suffix: str, paragraphs: list[str]) -> Path:
    path = folder / f"long{suffix}"
    if suffix == ".pdf":
        return write_pdf(path, paragraphs)
    if suffix == ".docx":
        document = docx.Document()
        for paragraph in paragraphs:
            document.add_paragraph(paragraph)
        document.save(str(path))
        return path
    if suffix == ".epub":
        book = epub.EpubBook()
        book.set_identifier("mneme-long-book")
        book.set_title("Long")
        chapters = []
        for index, paragraph in enumerate(paragraphs):
            chapter = epub.EpubHtml(title=str(index), file_name=f"{index}.xhtml", lang="en")
            chapter.content = f"<p>{paragraph}</p>"
            book.add_item(chapter)
            chapters.append(chapter)
        book.add_item(epub.EpubNav())
        book.spine = chapters
        epub.write_epub(str(path), book)
        return path
    path.write_text("\n\n".join(paragraphs), encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".txt", ".pdf", ".docx", ".epub"])
def test_text_over_max_chars_is_refused(tmp_path: Path, suffix: str) -> None:
    paragraphs = [f"Paragraph {index} tells the story a little further." for index in range(30)]
    path = write_text(tmp_path, suffix, paragraphs)
    length = len(load_document(path, max_chars=10_000).text)
    assert length > 30 * 40
    error, _ = refusal(path, max_chars=length // 2)
    assert isinstance(error, DocumentTooLarge)
    assert f"holds more than {length // 2:,} characters of text, the limit" in str(error)


def test_plain_text_at_max_chars_loads(tmp_path: Path) -> None:
    path = tmp_path / "exact.txt"
    path.write_text("x" * 1000, encoding="utf-8")
    assert len(load_document(path, max_chars=1000).text) == 1000
    assert "holds more than 999 characters" in str(refusal(path, max_chars=999)[0])


def test_default_max_chars_follows_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "repetitive.docx"
    path.write_bytes(swollen(".docx", 900 * 1024))  # 871,000 characters in some 40 KB
    limit = 64 * 1024
    assert path.stat().st_size < limit
    error, _ = refusal(path, max_bytes=limit)
    assert f"holds more than {4 * limit:,} characters of text, the limit" in str(error)


# Errors


def test_too_large_is_unreadable_and_answers_413(tmp_path: Path) -> None:
    path = tmp_path / "novel.txt"
    path.write_text("word " * 1000, encoding="utf-8")
    error, _ = refusal(path, max_bytes=1024)
    assert isinstance(error, DocumentTooLarge)
    assert http_status(error) == (413, "payload_too_large")
    assert exit_code(error) == EXIT_USAGE
    assert http_status(UnreadableDocument("x.txt: is empty")) == (422, "unreadable_document")
