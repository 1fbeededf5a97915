"""PDFs written for the tests, byte by byte: known text on known pages, and hostile ones.

A minimal valid PDF 1.4 (catalog, page tree, Helvetica, one content stream per page,
a cross-reference table with real offsets), so that what pypdf reads back is exactly
what a test wrote. ``encrypted`` uses pypdf's own writer.
"""

from __future__ import annotations

import io
import zlib

import pypdf

__all__ = ["bomb_pdf", "encrypted", "image_only_pdf", "many_pages_pdf", "text_pdf"]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _text_stream(lines: list[str]) -> bytes:
    ops = ["BT", "/F1 12 Tf", "14 TL", "72 740 Td"]
    for line in lines:
        ops.append(f"({_escape(line)}) Tj T*")
    ops.append("ET")
    return "\n".join(ops).encode("latin-1")


def _pdf(contents: list[bytes], *, kids_repeat: int = 1, flate: bool = False) -> bytes:
    """Objects: 1 catalog, 2 pages, 3 font, then per page a page and its content."""
    objects: list[bytes] = []
    page_ids = [4 + 2 * i for i in range(len(contents))]
    kids = " ".join(f"{pid} 0 R" for pid in page_ids for _ in range(kids_repeat))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(
        f"<< /Type /Pages /Kids [{kids}] /Count {len(page_ids) * kids_repeat} >>".encode()
    )
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for pid, content in zip(page_ids, contents, strict=True):
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {pid + 1} 0 R >>".encode()
        )
        if flate:
            data = zlib.compress(content, 9)
            head = f"<< /Length {len(data)} /Filter /FlateDecode >>".encode()
        else:
            data = content
            head = f"<< /Length {len(data)} >>".encode()
        objects.append(head + b"\nstream\n" + data + b"\nendstream")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out.getvalue()


def text_pdf(pages: list[list[str]], *, compress: bool = False) -> bytes:
    """A PDF whose page N shows the lines ``pages[N-1]`` (streams deflated: ``compress``)."""
    return _pdf([_text_stream(lines) for lines in pages], flate=compress)


def image_only_pdf(pages: int = 2) -> bytes:
    """Pages that only paint (as a scan does): no text to extract."""
    return _pdf([b"0.5 g 72 72 400 600 re f"] * pages)


def many_pages_pdf(count: int) -> bytes:
    """A small file whose page tree names one page ``count`` times."""
    return _pdf([_text_stream(["Page"])], kids_repeat=count)


def bomb_pdf(decompressed: int = 60 * 1024 * 1024) -> bytes:
    """One page whose content stream inflates to ``decompressed`` bytes."""
    return _pdf([b" " * decompressed], flate=True)


def encrypted(pdf: bytes, password: str = "secret") -> bytes:
    """``pdf`` encrypted with a user password (pypdf's writer)."""
    writer = pypdf.PdfWriter(clone_from=io.BytesIO(pdf))
    writer.encrypt(password, algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
