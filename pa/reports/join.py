"""Chunk PDFs → one PDF, with "Page X of Y" stamped on every page.

WeasyPrint's `counter(page)` and `counter(pages)` count within one document, and
a chunk's page numbers are known only once every chunk before it is laid out. So
chunks are rendered without footers and the footer is added here: one small
content stream per page, in Helvetica (one of the 14 fonts every PDF reader has,
so nothing is embedded), after the page's own content wrapped in q/Q.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime

from pypdf import PageObject, PdfReader, PdfWriter
from pypdf.generic import (
    ArrayObject,
    DecodedStreamObject,
    DictionaryObject,
    NameObject,
    TextStringObject,
)

FOOTER_FONT = NameObject("/PaFooterFont")
FOOTER_SIZE = 7.5
#: distance of the footer's baseline from the bottom edge, in points (8 mm)
FOOTER_BASELINE = 22.7

# Helvetica's advance widths (1/1000 em) of the characters a footer can hold.
_WIDTHS = {" ": 278, "P": 667, "a": 556, "g": 556, "e": 556, "o": 556, "f": 278,
           **{d: 556 for d in "0123456789"}}


def footer_text(page: int, pages: int) -> str:
    return f"Page {page} of {pages}"


def _text_width(text: str, size: float) -> float:
    return sum(_WIDTHS.get(c, 556) for c in text) * size / 1000


def _stream(writer: PdfWriter, data: bytes) -> object:
    stream = DecodedStreamObject()
    stream.set_data(data)
    return writer._add_object(stream)


def _font_resources(page: PageObject) -> DictionaryObject:
    """The page's /Resources /Font dictionary, created if missing."""
    if "/Resources" not in page:
        page[NameObject("/Resources")] = DictionaryObject()
    resources = page["/Resources"].get_object()
    assert isinstance(resources, DictionaryObject)
    if "/Font" not in resources:
        resources[NameObject("/Font")] = DictionaryObject()
    fonts = resources["/Font"].get_object()
    assert isinstance(fonts, DictionaryObject)
    return fonts


def join(chunks: Sequence[bytes], *, title: str, created: datetime | None = None) -> bytes:
    """The chunks' pages in order (their bookmarks kept), each stamped "Page X of Y"."""
    writer = PdfWriter()
    for pdf in chunks:
        writer.append(PdfReader(io.BytesIO(pdf)))
    font = writer._add_object(DictionaryObject({
        NameObject("/Type"): NameObject("/Font"),
        NameObject("/Subtype"): NameObject("/Type1"),
        NameObject("/BaseFont"): NameObject("/Helvetica"),
        NameObject("/Encoding"): NameObject("/WinAnsiEncoding"),
    }))
    save_state = _stream(writer, b"q\n")
    total = len(writer.pages)
    for number, page in enumerate(writer.pages, start=1):
        text = footer_text(number, total)
        box = page.mediabox
        x = float(box.left) + (float(box.width) - _text_width(text, FOOTER_SIZE)) / 2
        y = float(box.bottom) + FOOTER_BASELINE
        footer = _stream(writer, (
            f"Q\nq BT 0.4 0.4 0.4 rg /PaFooterFont {FOOTER_SIZE} Tf "
            f"{x:.2f} {y:.2f} Td ({text}) Tj ET Q\n"
        ).encode("ascii"))
        contents = ArrayObject([save_state])
        own = page.raw_get("/Contents") if "/Contents" in page else None
        if own is not None:
            own_value = own.get_object()
            contents.extend(own_value if isinstance(own_value, ArrayObject) else [own])
        contents.append(footer)
        page[NameObject("/Contents")] = contents
        _font_resources(page)[FOOTER_FONT] = font
    metadata = {"/Title": TextStringObject(title), "/Producer": TextStringObject("pa")}
    if created is not None:
        metadata["/CreationDate"] = TextStringObject(created.strftime("D:%Y%m%d%H%M%SZ"))
    writer.add_metadata(metadata)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
