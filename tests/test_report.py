"""The report's document model and its Markdown and HTML renderers: same content, escaping, standalone HTML."""

from __future__ import annotations

import base64
import csv
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from policyopt.bench.document import (
    BulletList,
    Code,
    Column,
    Document,
    Emph,
    Figure,
    Heading,
    Note,
    Paragraph,
    Strong,
    Table,
    render_html,
    render_markdown,
)
from policyopt.bench.runner import RESULT_COLUMNS

VOID = {"meta", "img", "br", "hr", "link", "input", "col", "source", "wbr"}
TEXT_TAGS = {"h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "td", "th", "figcaption", "code"}


class Outline(HTMLParser):
    """What a reader sees in an HTML page: headings, text blocks, table cells, images, code; and whether every
    element is closed in order."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.headings, self.blocks, self.tables, self.items, self.codes = [], [], [], [], []
        self.imgs, self.classes, self.stack, self.open, self.errors = [], [], [], [], []
        self.doctype = None
        self.feed(html)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed: {self.stack}")

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append((a.get("src"), a.get("alt")))
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        if tag in ("td", "th"):
            self.classes.append(a.get("class") or "left")
        if tag in TEXT_TAGS:
            self.open.append((tag, []))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
            return
        self.stack.pop()
        if tag in TEXT_TAGS:
            _, buf = self.open.pop()
            text = "".join(buf)
            if tag in ("td", "th"):
                self.tables[-1][-1].append(text)
            elif tag[0] == "h":
                self.headings.append((int(tag[1]), text))
            elif tag == "li":
                self.items.append(text)
            elif tag == "code":
                self.codes.append(text)
            elif text:  # p and figcaption: running text, in document order
                self.blocks.append(text)

    def handle_data(self, data):
        if "style" in self.stack or "title" in self.stack:
            return
        for _, buf in self.open:
            buf.append(data)


def md_unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


def md_tables(md: str) -> list[list[list[str]]]:
    """Cell texts of every pipe table (the delimiter row left out), read directly from the Markdown."""
    tables, prev = [], False
    for line in md.splitlines():
        is_row = line.startswith("|")
        if is_row and not prev:
            tables.append([])
        if is_row and not re.fullmatch(r"\|(:?-+:?\|)+", line):
            cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
            tables[-1].append([md_unescape(c.strip()) for c in cells])
        prev = is_row
    return tables


def md_headings(md: str) -> list[tuple[int, str]]:
    return [(len(m[1]), md_unescape(m[2])) for m in re.finditer(r"^(#{1,6}) (.*)$", md, re.M)]


TRICKY = [
    "a|b",
    "x*y*z",
    "_under_",
    "snake_case",
    "<i>tag</i>",
    "&amp; &#60; literal",
    "back\\slash",
    "`tick`",
    "[link](http://x)",
    "–",
]


def tricky_document() -> Document:
    return Document(
        "Title <script>alert('t')</script> & co",
        (
            Paragraph(("1. not a list, ", Emph("emphasis"), ", ", Code("code with ` tick"), " *literal* stars")),
            Paragraph("# not a heading"),
            Paragraph("- not an item, [x](y) not a link, __dunder__"),
            Heading(2, "P(X > Y) & <b>bold?</b> x_y"),
            BulletList([(Strong("Label"), ": value_with_underscores"), "<li>raw</li>"]),
            Heading(3, "Table"),
            Table(
                (Column("name"), Column("value", "right"), Column("mid", "center")),
                [TRICKY[i : i + 3] for i in (0, 3, 6)],
            ),
            Note(("watch ", Code("this"), " & that")),
            Figure("figures/a plot.png", ("caption with ", Code("metric"), " [1]"), id="fig-a"),
        ),
    )


def test_both_renderers_carry_the_same_headings_and_table_cells():
    doc = tricky_document()
    md, page = render_markdown(doc), Outline(render_html(doc))
    assert page.errors == []
    assert md_headings(md) == page.headings == [(1, doc.title), (2, "P(X > Y) & <b>bold?</b> x_y"), (3, "Table")]
    rows = [["name", "value", "mid"]] + [TRICKY[i : i + 3] for i in (0, 3, 6)]
    assert md_tables(md) == page.tables == [rows]
    assert "|---|---:|:---:|" in md and page.classes[:3] == ["left", "right", "center"]


def test_markdown_reads_back_as_the_html_page():
    """An independent CommonMark reader (markdown-it, with pipe tables) turns report.md into the same headings,
    text blocks, list items, code spans, cells and images as the HTML renderer writes."""
    markdown_it = pytest.importorskip("markdown_it")
    doc = tricky_document()
    ours = Outline(render_html(doc))
    theirs = Outline(markdown_it.MarkdownIt("commonmark").enable("table").render(render_markdown(doc)))
    for field in ("headings", "blocks", "items", "codes", "tables", "imgs"):
        assert getattr(theirs, field) == getattr(ours, field), field
    assert ours.imgs == [("figures/a%20plot.png", "caption with metric [1]")]
    assert (
        "Note: watch this & that" in ours.blocks
        and "1. not a list, emphasis, code with ` tick *literal* stars" in ours.blocks
    )


def test_html_is_a_standalone_page_without_script():
    page_html = render_html(tricky_document())
    page = Outline(page_html)
    assert page.doctype == "DOCTYPE html" and page.errors == []
    assert page_html.count("<html lang=") == 1 and '<meta charset="utf-8">' in page_html and "<style>" in page_html
    assert "<script" not in page_html.lower() and "&lt;script&gt;alert(&#x27;t&#x27;)&lt;/script&gt;" in page_html
    assert not re.search(r"(src|href)=\"(https?:)?//", page_html)  # no external assets


def test_model_rejects_ragged_tables_and_paths_outside_the_report():
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        Table(("a", "b", "c"), [("1", "2")])
    for bad in ("/tmp/x.png", "../x.png"):
        with pytest.raises(ValueError, match="relative"):
            Figure(bad, "c")
    with pytest.raises(ValueError, match="left, right or center"):
        Column("a", "justify")


# ---------------------------------------------------------------------------------- report of a small bench
NAME = "tiny <script>alert('x')</script>"
FINAL = {"good": [10.0, 20.0, 30.0, 40.0], "bad": [1.0, 2.0, 9.0]}  # bad seed 4 failed


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from policyopt.bench.report import write_report

    d = tmp_path_factory.mktemp("bench")
    rows, curves = [], []
    for algo in ("good", "bad"):
        for seed in (1, 2, 3, 4):
            row = dict.fromkeys(RESULT_COLUMNS, "") | {"algo": algo, "target": "T", "seed": seed}
            if seed <= len(FINAL[algo]):
                s = FINAL[algo][seed - 1]
                row |= {"status": "finished", "final_score": s, "auc": s / 2, "normalized_score": s / 100}
                curves += [
                    {"algo": algo, "target": "T", "seed": seed, "step": st, "value": s * st / 100}
                    for st in (0, 50, 100)
                ]
            else:
                row |= {"status": "failed", "error": "bad value <script>x</script> | `pipe`"}
            rows.append(row)
    for name, table in (("results.csv", rows), ("curves.csv", curves)):
        with open(d / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows(table)
    spec = {"name": NAME, "algos": ["good", "bad"], "envs": ["T"], "seeds": [1, 2, 3, 4], "budget": 100}
    spec |= {"reference_scores": {"T": {"low": 0.0, "high": 100.0}}, "protocol": {"metric": "eval/return_mean"}}
    meta = {
        "spec": spec,
        "protocol": "Final score = mean of the last `3` evaluations.",
        "cells": 8,
        "finished": 7,
        "failed": 1,
    }
    (d / "bench.json").write_text(json.dumps(meta))
    paths = write_report(d, reps=200)
    return paths, paths["markdown"].read_text(), paths["html"].read_text()


def _interval(cell: str) -> tuple[float, float, float]:
    point, lo, hi = (float(x) for x in re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", cell).groups())
    assert lo <= point <= hi, cell
    return point, lo, hi


def test_report_of_a_small_bench_has_the_hand_computed_numbers(report):
    _, md, _ = report
    per_target, normalized, poi = md_tables(md)
    rows = {r[0]: r for r in per_target[1:]}
    # good: IQM of 10,20,30,40 = mean of 20,30; std with ddof=1 = sqrt(500/3); AUC IQM of 5,10,15,20 = 12.5
    assert rows["good"][1:3] == ["4", "0"] and rows["good"][5:7] == ["25.0", "12.9"]
    assert _interval(rows["good"][3])[0] == 25.0 and _interval(rows["good"][4])[0] == 25.0
    assert _interval(rows["good"][7])[0] == 12.5
    # bad: three runs (IQM of 3 = their mean 4.0), one failed; std = sqrt(19)
    assert rows["bad"][1:3] == ["3", "1"] and rows["bad"][5:7] == ["2.0", "4.4"]
    assert _interval(rows["bad"][3])[0] == 4.0
    norm = {r[0]: r for r in normalized[1:]}
    assert _interval(norm["good"][2])[0] == 0.25 and norm["bad"][4] == "0.020"
    assert [r for r in poi[1:]] == [["good", "bad", "1.00 [1.00, 1.00]"], ["bad", "good", "0.00 [0.00, 0.00]"]]
    assert "mean of the last `3` evaluations" in md and "(200 replications, fixed seed)" in md


def test_report_files_carry_the_same_content(report):
    paths, md, page_html = report
    page = Outline(page_html)
    assert page.errors == [] and md_headings(md) == page.headings
    assert md_tables(md) == page.tables and len(page.tables) == 3
    assert page.headings[0] == (1, f"Bench report: {NAME}")
    assert [h for _, h in page.headings[1:]] == [
        "Evaluation protocol",
        "Results",
        "T: final score",
        "Normalized score over T",
        "Probability of improvement P(X > Y), averaged over tasks",
        "Figures",
        "Failed cells",
        "Statistics",
    ]
    # The page embeds every figure that report.md links to (same files, same order).
    linked = re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", md)
    assert linked == ["figures/learning_curves.png", "figures/iqm_bars.png", "figures/performance_profile.png"]
    for (src, _), rel in zip(page.imgs, linked, strict=True):
        assert (
            base64.b64decode(src.removeprefix("data:image/png;base64,"))
            == (paths["markdown"].parent / rel).read_bytes()
        )


def test_run_names_and_errors_are_escaped(report):
    _, md, page_html = report
    assert "<script" not in page_html.lower()
    assert "<h1>Bench report: tiny &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;</h1>" in page_html
    assert "<code>bad value &lt;script&gt;x&lt;/script&gt; | `pipe`</code>" in page_html
    assert "# Bench report: tiny \\<script>alert('x')\\</script>" in md  # literal text in Markdown too
    assert "- bad T seed=4: `` bad value <script>x</script> | `pipe` ``" in md  # inside a code span
    summary = json.loads(Path(report[0]["summary"]).read_text())
    assert summary["failed"][0]["seed"] == 4 and math.isclose(summary["per_target"]["T"][0]["iqm"], 25.0)
