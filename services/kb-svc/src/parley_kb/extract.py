"""Turn submitted bytes into text for chunking: plain text, Markdown, HTML (to Markdown) and PDF.

Every rejection is an InvalidArgument with a message a caller can act on.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from dataclasses import dataclass

from parley_runtime.errors import InvalidArgument

from .models import ContentType

logger = logging.getLogger(__name__)

_BLANK_RUNS = re.compile(r"\n{3,}")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
# C0 controls other than tab/newline/carriage return have no place in text and NUL cannot be
# stored in a PostgreSQL text column at all.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_DROP_HTML = ("script", "style", "noscript", "template", "svg", "iframe", "object", "head")
_MAX_PDF_PAGES = 2000


@dataclass(frozen=True, slots=True)
class ExtractedText:
    text: str
    # True when `text` is Markdown whose headings should travel with chunks.
    markdown: bool


def decode_utf8(content: bytes, what: str = "content") -> str:
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"{what} is not valid UTF-8 (invalid byte at offset {exc.start}); "
            "send UTF-8 text, or PDF bytes with content_type PDF"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\x00" in text:
        raise InvalidArgument(f"{what} contains NUL characters; binary content is not accepted")
    return text


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub(" ", text)
    text = _TRAILING_SPACE.sub("\n", text)
    return _BLANK_RUNS.sub("\n\n", text).strip()


def html_to_markdown(html: str) -> str:
    """HTML to Markdown with ATX headings (so chunks keep their section titles)."""
    from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning
    from markdownify import MarkdownConverter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        soup = BeautifulSoup(html, "html.parser")
    for tag in soup(list(_DROP_HTML)):
        tag.decompose()
    body = soup.body or soup
    converter = MarkdownConverter(heading_style="ATX", strip=["a", "img"], bullets="-")
    return str(converter.convert_soup(body))


def pdf_to_text(content: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    if not content.startswith(b"%PDF-"):
        raise InvalidArgument("content is not a PDF (it does not start with %PDF-)")
    try:
        reader = PdfReader(io.BytesIO(content), strict=False)
        if reader.is_encrypted:
            raise InvalidArgument("encrypted PDFs are not supported; send an unencrypted file")
        if len(reader.pages) > _MAX_PDF_PAGES:
            raise InvalidArgument(f"PDF has more than {_MAX_PDF_PAGES} pages")
        pages = [page.extract_text() or "" for page in reader.pages]
    except InvalidArgument:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise InvalidArgument(f"PDF could not be read: {type(exc).__name__}") from None
    return "\n\n".join(p.strip() for p in pages if p.strip())


def extract_text(content: bytes, content_type: ContentType) -> ExtractedText:
    """Decode and convert `content`; raises InvalidArgument when nothing usable remains."""
    if content_type is ContentType.PDF:
        text = _normalise(pdf_to_text(content))
        if not text:
            raise InvalidArgument(
                "PDF has no extractable text (scanned pages need OCR before ingestion)"
            )
        return ExtractedText(text, markdown=False)
    raw = decode_utf8(content)
    if content_type is ContentType.HTML:
        text = _normalise(html_to_markdown(raw))
        markdown = True
    else:
        text = _normalise(raw)
        markdown = content_type is ContentType.MARKDOWN
    if not text:
        raise InvalidArgument("document has no text content")
    return ExtractedText(text, markdown=markdown)
