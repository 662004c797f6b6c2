"""A small document model (typed blocks) and its two renderers, Markdown and standalone HTML5.

A report is built once as a :class:`Document`; :func:`render_markdown` and :func:`render_html` turn the same
tree into text, so both outputs always carry the same headings, paragraphs, table cells and figures.

Inline text is a tuple of parts: a plain ``str`` (literal text, escaped by each renderer) or one of
:class:`Code`, :class:`Emph`, :class:`Strong`. Table cells are plain strings.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import quote


# ------------------------------------------------------------------------------------------------ model
@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Emph:
    text: str


@dataclass(frozen=True)
class Strong:
    text: str


Inline = str | Code | Emph | Strong
Text = tuple[Inline, ...]


def as_text(value: str | Inline | Text) -> Text:
    if isinstance(value, tuple):
        return value
    return (value,)


@dataclass(frozen=True)
class Heading:
    level: int
    text: Text

    def __post_init__(self):
        if not 1 <= self.level <= 6:
            raise ValueError(f"heading level must be 1..6, got {self.level}")
        object.__setattr__(self, "text", as_text(self.text))


@dataclass(frozen=True)
class Paragraph:
    text: Text

    def __post_init__(self):
        object.__setattr__(self, "text", as_text(self.text))


@dataclass(frozen=True)
class BulletList:
    items: tuple[Text, ...]

    def __post_init__(self):
        object.__setattr__(self, "items", tuple(as_text(i) for i in self.items))


@dataclass(frozen=True)
class Note:
    """A remark set apart from the running text (Markdown blockquote, HTML ``p.note``)."""

    text: Text

    def __post_init__(self):
        object.__setattr__(self, "text", as_text(self.text))


@dataclass(frozen=True)
class Column:
    name: str
    align: Literal["left", "right", "center"] = "left"

    def __post_init__(self):
        if self.align not in ("left", "right", "center"):
            raise ValueError(f"column alignment must be left, right or center, got {self.align!r}")


@dataclass(frozen=True)
class Table:
    columns: tuple[Column, ...]
    rows: tuple[tuple[str, ...], ...]

    def __post_init__(self):
        cols = tuple(c if isinstance(c, Column) else Column(c) for c in self.columns)
        rows = tuple(tuple(str(c) for c in r) for r in self.rows)
        for r in rows:
            if len(r) != len(cols):
                raise ValueError(f"table row has {len(r)} cells for {len(cols)} columns: {r!r}")
        object.__setattr__(self, "columns", cols)
        object.__setattr__(self, "rows", rows)


@dataclass(frozen=True)
class Figure:
    """An image file given by a relative POSIX path (relative to the rendered document) and a caption."""

    path: str
    caption: Text
    id: str = ""

    def __post_init__(self):
        p = PurePosixPath(self.path)
        if p.is_absolute() or ".." in p.parts:
            raise ValueError(f"figure path must be relative and inside the document folder, got {self.path!r}")
        object.__setattr__(self, "caption", as_text(self.caption))


Block = Heading | Paragraph | BulletList | Note | Table | Figure


@dataclass(frozen=True)
class Document:
    """``title`` is the page title and the level-1 heading; ``blocks`` follow it."""

    title: str
    blocks: tuple[Block, ...] = field(default_factory=tuple)

    def __post_init__(self):
        object.__setattr__(self, "blocks", tuple(self.blocks))


def code_spans(s: str) -> Text:
    """Inline text from a string whose only markup is Markdown code spans (```...```)."""
    parts: list[Inline] = []
    for i, piece in enumerate(re.split(r"`([^`]*)`", s)):
        if i % 2:
            parts.append(Code(piece))
        elif piece:
            parts.append(piece)
    return tuple(parts)


def plain(text: Text) -> str:
    """The text without markup."""
    return "".join(p if isinstance(p, str) else p.text for p in as_text(text))


# ------------------------------------------------------------------------------------------------ Markdown
_MD_SPECIAL = re.compile(r"[\\`*~<]|&(?=#?\w+;)|\](?=[(\[])|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def md_escape(s: str) -> str:
    """Backslash-escape what would otherwise turn literal text into Markdown markup; line breaks become
    spaces (every inline here lives on one line)."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), " ".join(s.splitlines()))


def _md_code(s: str) -> str:
    s = " ".join(s.splitlines())
    fence = "`" * (max((len(r) for r in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s.startswith(("`", " ")) or s.endswith(("`", " ")) else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def _md_inline(text: Text) -> str:
    out = []
    for p in text:
        if isinstance(p, str):
            out.append(md_escape(p))
        elif isinstance(p, Code):
            out.append(_md_code(p.text))
        elif isinstance(p, Emph):
            out.append(f"*{md_escape(p.text)}*")
        else:
            out.append(f"**{md_escape(p.text)}**")
    return "".join(out)


def _md_paragraph(line: str) -> str:
    """Escape a first character that would make the line a heading, quote, list item or rule."""
    m = re.match(r"\d+(?=[.)])", line)
    if m:
        return f"{m.group(0)}\\{line[m.end() :]}"
    return "\\" + line if line[:1] in ("#", ">", "+", "-") else line


_MD_RULE = {"left": "---", "right": "---:", "center": ":---:"}


def _md_table(t: Table) -> list[str]:
    def row(cells) -> str:
        return "| " + " | ".join(md_escape(c).replace("|", "\\|") for c in cells) + " |"

    return [row(c.name for c in t.columns), "|" + "".join(_MD_RULE[c.align] + "|" for c in t.columns)] + [
        row(r) for r in t.rows
    ]


def _md_block(b: Block) -> list[str]:
    if isinstance(b, Heading):
        return ["#" * b.level + " " + _md_inline(b.text)]
    if isinstance(b, Paragraph):
        return [_md_paragraph(_md_inline(b.text))]
    if isinstance(b, BulletList):
        return [f"- {_md_inline(i)}" for i in b.items]
    if isinstance(b, Note):
        return [f"> **Note:** {_md_inline(b.text)}"]
    if isinstance(b, Table):
        return _md_table(b)
    if isinstance(b, Figure):
        alt = md_escape(plain(b.caption)).replace("[", "\\[").replace("]", "\\]")
        return [f"![{alt}]({quote(b.path)})", "", f"*{_md_inline(b.caption)}*"]
    raise TypeError(f"not a document block: {b!r}")


def render_markdown(doc: Document) -> str:
    lines = [f"# {md_escape(doc.title)}", ""]
    for b in doc.blocks:
        lines += _md_block(b) + [""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ HTML
STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;"
    "line-height:1.45}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f3f3f3}"
    ".right{text-align:right}.center{text-align:center}"
    "img{max-width:100%;border:1px solid #eee}figure{margin:1em 0 2em}"
    "figcaption{font-style:italic;color:#555}"
    "code{background:#f5f5f5;padding:0 3px;border-radius:3px}"
    ".note{border-left:4px solid #bbb;padding:.2em .8em;color:#444;background:#fafafa}"
)

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
_MIME |= {".svg": "image/svg+xml", ".webp": "image/webp"}


def _esc(s: str) -> str:
    return html.escape(s, quote=True)


def _html_inline(text: Text) -> str:
    out = []
    for p in text:
        if isinstance(p, str):
            out.append(_esc(p))
        else:
            tag = {Code: "code", Emph: "em", Strong: "strong"}[type(p)]
            out.append(f"<{tag}>{_esc(p.text)}</{tag}>")
    return "".join(out)


def _html_table(t: Table) -> str:
    def cell(tag: str, text: str, col: Column) -> str:
        cls = "" if col.align == "left" else f' class="{col.align}"'
        return f"<{tag}{cls}>{_esc(text)}</{tag}>"

    head = "<tr>" + "".join(cell("th", c.name, c) for c in t.columns) + "</tr>"
    body = "\n".join("<tr>" + "".join(cell("td", v, c) for v, c in zip(r, t.columns)) + "</tr>" for r in t.rows)
    return f"<table>\n<thead>{head}</thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _img_src(fig: Figure, embed_from: Path | None) -> str:
    if embed_from is None:
        return quote(fig.path)
    data = (Path(embed_from) / fig.path).read_bytes()
    mime = _MIME.get(PurePosixPath(fig.path).suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _html_block(b: Block, embed_from: Path | None) -> str:
    if isinstance(b, Heading):
        return f"<h{b.level}>{_html_inline(b.text)}</h{b.level}>"
    if isinstance(b, Paragraph):
        return f"<p>{_html_inline(b.text)}</p>"
    if isinstance(b, BulletList):
        return "<ul>\n" + "\n".join(f"<li>{_html_inline(i)}</li>" for i in b.items) + "\n</ul>"
    if isinstance(b, Note):
        return f'<p class="note"><strong>Note:</strong> {_html_inline(b.text)}</p>'
    if isinstance(b, Table):
        return _html_table(b)
    if isinstance(b, Figure):
        ident = f' id="{_esc(b.id)}"' if b.id else ""
        return (
            f'<figure><img{ident} src="{_esc(_img_src(b, embed_from))}" alt="{_esc(plain(b.caption))}">'
            f"<figcaption>{_html_inline(b.caption)}</figcaption></figure>"
        )
    raise TypeError(f"not a document block: {b!r}")


def render_html(doc: Document, embed_from: str | Path | None = None) -> str:
    """A standalone HTML5 page (inline stylesheet, no script). Figures link to their relative paths, or, with
    ``embed_from`` (the folder those paths are relative to), are embedded as ``data:`` URIs so the page is a
    single self-contained file."""
    embed = Path(embed_from) if embed_from is not None else None
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(doc.title)}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{_esc(doc.title)}</h1>",
    ]
    parts += [_html_block(b, embed) for b in doc.blocks]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
