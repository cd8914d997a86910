"""Loaders: real files written by real writers (fpdf2, python-docx, ebooklib) read back as text."""

from __future__ import annotations

import codecs
import io
import os
import random
import zipfile
from collections.abc import Callable
from pathlib import Path

import docx
import pytest
from ebooklib import epub
from fpdf import FPDF

from app.errors import EXIT_USAGE, UnreadableDocument, exit_code
from app.loaders import MAX_BYTES, LoadedText, load_document

FRENCH = (
    "Il était une fois, dans un château très ancien, une princesse qui rêvait de voyages. "
    "Chaque matin, elle regardait la forêt depuis sa fenêtre.\n"
)
SHORT_FRENCH = "Café crème, déjà vu, à bientôt, garçon. Élève très âgé.\n"


def write_pdf(path: Path, pages: list[str], *, title: str | None = None) -> Path:
    pdf = FPDF()
    if title is not None:
        pdf.set_title(title)
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 10, text)
    path.write_bytes(bytes(pdf.output()))
    return path


def write_docx(path: Path) -> Path:
    document = docx.Document()
    document.core_properties.title = "The Lighthouse Logbook"
    document.add_heading("Chapter One", level=1)
    document.add_paragraph("The keeper climbed the stairs at dusk.")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text = "Lamp"
    table.cell(0, 1).text = "Lit at six"
    table.cell(1, 0).merge(table.cell(1, 1)).text = "Fog all night"
    document.add_paragraph("At dawn the ship was safe.")
    document.save(str(path))
    return path


def write_epub(path: Path) -> Path:
    book = epub.EpubBook()
    book.set_identifier("mneme-test-book")
    book.set_title("A Tale in Two Chapters")
    book.set_language("en")
    first = epub.EpubHtml(title="One", file_name="one.xhtml", lang="en")
    first.content = (
        "<h1>Chapter One</h1><p>The river rose in spring.</p>"
        "<div>The mill <em>stood</em> firm.<p>Nobody left the village.</p></div>"
        "<p>First line<br/>second line</p><script>var ignored = 1;</script>"
    )
    second = epub.EpubHtml(title="Two", file_name="two.xhtml", lang="en")
    second.content = "<p>Summer came late.</p><ul><li>Wheat</li><li>Barley</li></ul>"
    book.add_item(first)
    book.add_item(second)
    book.toc = (first, second)
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", first, second]
    epub.write_epub(str(path), book)
    return path


def refusal(path: Path, *, max_bytes: int = MAX_BYTES) -> str:
    """The one-line message of the UnreadableDocument that loading ``path`` raises."""
    with pytest.raises(UnreadableDocument) as caught:
        load_document(path, max_bytes=max_bytes)
    message = str(caught.value)
    assert path.name in message and "\n" not in message
    return message


# Text and Markdown


def test_plain_text_is_normalised(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    raw = "\n\nFirst line\r\nsecond\x07 line\r\rThird\x1b\x85\x0c?\n\n\n\n\nFourth\tcol\n \n"
    path.write_text(raw, encoding="utf-8", newline="")  # C0 and C1 controls, CR and CRLF
    loaded = load_document(path)
    assert loaded == LoadedText(
        text="First line\nsecond line\n\nThird?\n\nFourth\tcol",
        title="notes",
        format="text",
        source=str(path.resolve()),
    )


def test_markdown_is_kept_as_written(tmp_path: Path) -> None:
    markdown = "# Title\n\nSome *emphasis* and a [link](http://x.org).  \nHard break.\n\n- a\n- b"
    path = tmp_path / "README.MarkDown"
    path.write_text("\ufeff" + markdown, encoding="utf-8")  # with a UTF-8 BOM
    loaded = load_document(path)
    assert (loaded.text, loaded.format, loaded.title) == (markdown, "markdown", "README")


def test_unknown_extension_is_read_as_text(tmp_path: Path) -> None:
    path = tmp_path / "draft.chapter"
    path.write_text("Plain words in an odd file.", encoding="utf-8")
    loaded = load_document(path)
    assert (loaded.text, loaded.format) == ("Plain words in an odd file.", "text")


@pytest.mark.parametrize("text", [FRENCH, SHORT_FRENCH], ids=["paragraph", "short"])
def test_latin1_decodes(tmp_path: Path, text: str) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes(text.encode("latin-1"))
    assert load_document(path).text == text.strip()


@pytest.mark.parametrize(
    ("bom", "codec"),
    [(codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")],
    ids=["little-endian", "big-endian"],
)
def test_utf16_with_bom_decodes(tmp_path: Path, bom: bytes, codec: str) -> None:
    text = "Ünïcödé — 日本語の文章。\nSecond line."
    path = tmp_path / "wide.txt"
    path.write_bytes(bom + text.encode(codec))
    assert load_document(path).text == text


# PDF, DOCX, EPUB


def test_pdf_pages_round_trip(tmp_path: Path) -> None:
    path = write_pdf(
        tmp_path / "report.PDF",
        ["The survey began in March. It rained often.", "The results arrived in June."],
        title="Field Survey",
    )
    loaded = load_document(path)
    assert (loaded.title, loaded.format) == ("Field Survey", "pdf")
    assert loaded.text == (
        "The survey began in March. It rained often.\n\nThe results arrived in June."
    )


def test_pdf_without_title_uses_the_stem(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "untitled-scan.pdf", ["Only a sentence."])
    assert load_document(path).title == "untitled-scan"


def test_docx_paragraphs_and_tables_round_trip(tmp_path: Path) -> None:
    loaded = load_document(write_docx(tmp_path / "log.docx"))
    assert (loaded.title, loaded.format) == ("The Lighthouse Logbook", "docx")
    assert loaded.text.split("\n\n") == [
        "Chapter One",
        "The keeper climbed the stairs at dusk.",
        "Lamp\tLit at six",
        "Fog all night",
        "At dawn the ship was safe.",
    ]


def test_epub_spine_round_trips(tmp_path: Path) -> None:
    loaded = load_document(write_epub(tmp_path / "tale.epub"))
    assert (loaded.title, loaded.format) == ("A Tale in Two Chapters", "epub")
    assert loaded.text.split("\n\n") == [
        "Chapter One",
        "The river rose in spring.",
        "The mill stood firm.",
        "Nobody left the village.",
        "First line\nsecond line",
        "Summer came late.",
        "Wheat",
        "Barley",
    ]


# Refusals


def test_missing_file(tmp_path: Path) -> None:
    assert "does not exist; check the path" in refusal(tmp_path / "nowhere.txt")


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "chapters"
    folder.mkdir()
    assert "is a folder" in refusal(folder)


def test_pipe_is_not_a_regular_file(tmp_path: Path) -> None:
    pipe = tmp_path / "stream.txt"
    os.mkfifo(pipe)
    assert "not a regular file" in refusal(pipe)  # and does not block reading it


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.txt"
    path.write_text("hidden", encoding="utf-8")
    path.chmod(0)
    assert "check its permissions" in refusal(path)


@pytest.mark.parametrize("content", [b"", b" \n\t\r\n  \n"], ids=["empty", "whitespace"])
def test_empty_or_blank_text(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "blank.txt"
    path.write_bytes(content)
    message = refusal(path)
    assert "empty" in message or "only whitespace" in message
    assert "choose a file with text" in message


def test_scanned_pdf_without_text_layer_suggests_ocr(tmp_path: Path) -> None:
    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 150, style="F")  # a page of "image", no text
    path = tmp_path / "scan.pdf"
    path.write_bytes(bytes(pdf.output()))
    message = refusal(path)
    assert "no text layer" in message and "OCR" in message


def test_too_large_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "novel.txt"
    path.write_text("word " * 100_000, encoding="utf-8")  # 500,000 bytes
    message = refusal(path, max_bytes=200_000)
    assert "0.5 MB" in message and "0.2 MB" in message and "split it" in message


def test_too_large_is_refused_before_reading(tmp_path: Path) -> None:
    # A sparse 4 GiB file of NUL bytes: read in full it would be slow and rejected as binary.
    path = tmp_path / "huge.txt"
    with path.open("wb") as stream:
        stream.truncate(4 * 1024**3)
    message = refusal(path)
    assert "4,096.0 MB" in message and f"{MAX_BYTES // 1024**2}.0 MB" in message


@pytest.mark.parametrize(
    ("name", "content", "hint"),
    [
        ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "NUL bytes"),
        ("blob.bin", random.Random(7).randbytes(4096), "NUL bytes"),
        (
            "noise.log",
            bytes(b for b in random.Random(7).randbytes(4096) if b),
            "convert it to UTF-8",
        ),
    ],
    ids=["text-extension", "unknown-extension", "no-nul-bytes"],
)
def test_binary_junk_is_refused(tmp_path: Path, name: str, content: bytes, hint: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert hint in refusal(path)


def test_bad_utf16_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.txt"
    path.write_bytes(codecs.BOM_UTF16_LE + b"a\x00\x00\xd8")  # a lone surrogate
    assert "save it again as UTF-8" in refusal(path)


WRITERS: dict[str, Callable[[Path], Path]] = {
    ".pdf": lambda path: write_pdf(path, ["Some text."]),
    ".docx": write_docx,
    ".epub": write_epub,
}


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def without(part: str) -> Callable[[bytes], bytes]:
    """Spoils a zip-based document by dropping the member whose name ends with ``part``."""

    def spoil(data: bytes) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(buffer, "w") as target:
            for name in source.namelist():
                if not name.endswith(part):
                    target.writestr(name, source.read(name))
        return buffer.getvalue()

    return spoil


def replaced(junk: bytes) -> Callable[[bytes], bytes]:
    return lambda data: junk


@pytest.mark.parametrize(
    ("suffix", "spoil"),
    [
        (".pdf", replaced(b"%PDF-1.7\nnot really a pdf")),
        (".pdf", truncated),
        (".docx", replaced(b"plain text pretending to be a docx")),
        (".docx", truncated),
        (".docx", without("document.xml")),
        (".epub", replaced(b"plain text pretending to be an epub")),
        (".epub", truncated),
        (".epub", without("container.xml")),
    ],
)
def test_corrupted_documents_are_refused(
    tmp_path: Path, suffix: str, spoil: Callable[[bytes], bytes]
) -> None:
    good = WRITERS[suffix](tmp_path / f"good{suffix}")
    path = tmp_path / f"spoiled{suffix}"
    path.write_bytes(spoil(good.read_bytes()))
    message = refusal(path)
    assert "corrupted" in message and "re-save it" in message


def test_encrypted_pdf_is_refused(tmp_path: Path) -> None:
    pdf = FPDF()
    pdf.set_encryption(owner_password="owner", user_password="reader")
    pdf.set_font("Helvetica")
    pdf.add_page()
    pdf.cell(text="Top secret.")
    path = tmp_path / "locked.pdf"
    path.write_bytes(bytes(pdf.output()))
    assert "is encrypted" in refusal(path)


def test_owner_password_only_pdf_opens(tmp_path: Path) -> None:
    pdf = FPDF()
    pdf.set_encryption(owner_password="owner")  # restricts editing, not reading
    pdf.set_font("Helvetica")
    pdf.add_page()
    pdf.cell(text="Readable by anyone.")
    path = tmp_path / "restricted.pdf"
    path.write_bytes(bytes(pdf.output()))
    assert load_document(path).text == "Readable by anyone."


def test_unreadable_document_is_a_usage_error() -> None:
    assert exit_code(UnreadableDocument("x.txt: is empty")) == EXIT_USAGE


# Messages about uploads: the API saves an upload to a temporary file and names the upload instead


def textless_pdf() -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 150, style="F")
    return bytes(pdf.output())


@pytest.mark.parametrize(
    ("suffix", "content", "problem"),
    [
        (".txt", b"", "is empty"),
        (".txt", b" \n\t\r\n ", "only whitespace"),
        (".txt", b"text\x00with a NUL", "NUL bytes"),
        (".pdf", textless_pdf(), "no text layer"),
        (".docx", b"plain text pretending to be a docx", "corrupted"),
        (".txt", b"word " * 1000, "over the limit of 1,024 bytes"),
    ],
    ids=["empty", "whitespace", "nul", "textless-pdf", "corrupted-docx", "too-large"],
)
def test_messages_name_the_upload_not_the_temporary_path(
    tmp_path: Path, suffix: str, content: bytes, problem: str
) -> None:
    path = tmp_path / f"upload{suffix}"
    path.write_bytes(content)
    with pytest.raises(UnreadableDocument) as caught:
        load_document(path, max_bytes=1024, name=f"My notes{suffix}")
    message = str(caught.value)
    assert message.startswith(f"My notes{suffix}: ") and problem in message
    assert str(tmp_path) not in message and "upload" not in message


def test_name_is_kept_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "upload.txt"
    path.write_bytes(b"")
    with pytest.raises(UnreadableDocument) as caught:
        load_document(path, name="two\nlines\r.txt")
    assert str(caught.value).startswith("two lines .txt: is empty")


def test_name_leaves_source_and_title_alone(tmp_path: Path) -> None:
    path = tmp_path / "upload.txt"
    path.write_text("Some words.", encoding="utf-8")
    loaded = load_document(path, name="notes.txt")
    assert (loaded.source, loaded.title) == (str(path.resolve()), "upload")
