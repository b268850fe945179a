"""Content extraction: UTF-8, HTML to Markdown, PDF, rejections."""

from __future__ import annotations

import pytest
from parley_kb.extract import extract_text
from parley_kb.models import ContentType
from parley_kb.testing import make_pdf
from parley_runtime.errors import InvalidArgument

pytestmark = pytest.mark.unit


def test_text_is_normalised() -> None:
    got = extract_text("\ufeffline one\r\nline two\x07\n\n\n\nend  \n".encode(), ContentType.TEXT)
    assert got.text == "line one\nline two\n\nend"
    assert not got.markdown


@pytest.mark.parametrize("ctype", [ContentType.TEXT, ContentType.MARKDOWN, ContentType.HTML])
def test_invalid_utf8_is_rejected_with_offset(ctype: ContentType) -> None:
    with pytest.raises(InvalidArgument, match="not valid UTF-8.*offset 6"):
        extract_text(b"hello \xff\xfe world", ctype)


def test_nul_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="NUL"):
        extract_text(b"abc\x00def", ContentType.TEXT)


def test_whitespace_only_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="no text"):
        extract_text(b"   \n\n\t ", ContentType.MARKDOWN)


def test_html_becomes_markdown_without_scripts() -> None:
    html = (
        "<html><head><title>T</title><style>p{color:red}</style></head><body>"
        "<h1>Refunds</h1><p>Refunds take <b>5 days</b>.</p><script>alert('x')</script>"
        "<h2>Exceptions</h2><ul><li>Gift cards</li><li>Sale items</li></ul>"
        "<p><a href='https://evil.example'>link text</a></p></body></html>"
    )
    got = extract_text(html.encode(), ContentType.HTML)
    assert got.markdown
    assert "# Refunds" in got.text and "## Exceptions" in got.text
    assert "5 days" in got.text and "- Gift cards" in got.text
    assert "alert" not in got.text and "color:red" not in got.text
    assert "link text" in got.text and "evil.example" not in got.text


def test_html_without_text_is_rejected() -> None:
    with pytest.raises(InvalidArgument):
        extract_text(b"<script>x()</script>", ContentType.HTML)


def test_pdf_text_is_extracted() -> None:
    got = extract_text(make_pdf(["Quarterly report", "Revenue grew by 12 percent."]),
                       ContentType.PDF)
    assert "Quarterly report" in got.text
    assert "Revenue grew by 12 percent." in got.text


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"not a pdf at all", "not a PDF"),
        (b"%PDF-1.4\n garbage without objects", "PDF"),
    ],
)
def test_bad_pdf_is_rejected(content: bytes, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        extract_text(content, ContentType.PDF)


def test_pdf_without_text_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="no extractable text|could not be read"):
        extract_text(make_pdf([]), ContentType.PDF)
