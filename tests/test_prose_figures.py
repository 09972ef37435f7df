"""No measured figure is typed into a chapter's prose (STYLE.md R20).

A figure in prose comes from ``results/<card>/`` at build time: a myst-nb glue role
(`{glue:text}` followed by a key in backticks) or a table built in a code cell.
This test fails when a chapter (``book/**/*.md``) holds a typed number next to a
measurement unit outside computed output, and reports ``file:line: match``.

What is exempt (removed before the search, line numbers kept):

- the YAML front matter;
- fenced blocks of code or math: a fence of backticks or colons whose info string
  is a language or one of ``CODE_DIRECTIVES`` ({code-cell}, {math},
  {literalinclude}, ...). The body of any other directive ({note}, {figure},
  {admonition}, ...) is prose and is checked, less its ``:option:`` lines;
- inline code (any run of backticks), so every role's argument;
  a glue role ``{glue:...}`` is removed whole;
- math: ``$$...$$`` (across lines) and ``$...$``;
- HTML comments;
- blockquote lines (first non-blank character ``>``): quotations of the papers.
  A number a paper reports goes either in such a quotation or through glue from a
  ``reference/`` computation.

In what remains a match is a number followed, optionally after one space or
no-break space, by a unit: µs, us, ms, ns, TB/s, GB/s, TFLOP/s, GFLOP/s, ×, x (with a
word boundary after, as in "2.3x"; "64x64" is a shape), or a floor fraction: "of
floor", "% of floor", "of its floor", "% of the floor" (and the other combinations of
"%", "its" and "the"). The time units need nothing after them: "10 users" is flagged
too, so write "ten users".
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"

CODE_DIRECTIVES = {
    "code-cell",
    "code",
    "code-block",
    "sourcecode",
    "math",
    "literalinclude",
    "raw",
    "eval-rst",
    "glue",
    "glue:any",
    "glue:figure",
    "glue:math",
    "glue:md",
    "mermaid",
    "graphviz",
}

_SP = "[ \u00a0\u202f\u2009]?"  # one optional space, no-break or thin space
_NUM = r"(?<![\d.,])(?:\d+(?:[.,]\d+)*|\.\d+)"
_UNIT = (
    r"[µμ]s|us|ms|ns"
    r"|[TG]B/s|[TG]FLOP/s"
    r"|×"
    r"|x\b"
    r"|%?" + _SP + r"of (?:its |the )?floor"
)
TYPED = re.compile(_NUM + _SP + "(?:" + _UNIT + ")")

_FENCE = re.compile(r"^\s{0,3}(`{3,}|:{3,})\s*(.*)$")
_OPTION = re.compile(r"^\s*:[\w-]+:")


def _blank(text: str) -> str:
    """The same text with every character but newlines turned to a space."""
    return re.sub(r"[^\n]", " ", text)


def _strip_fences(lines: list[str]) -> list[str]:
    """Blank front matter, code/math fences, directive options and blockquotes."""
    out = list(lines)
    i = 0
    if out and out[0].strip() == "---":
        j = next((k for k in range(1, len(out)) if out[k].strip() == "---"), None)
        if j is not None:
            for k in range(j + 1):
                out[k] = ""
            i = j + 1
    # stack of open prose directives: (fence char, fence length)
    stack: list[tuple[str, int]] = []
    while i < len(out):
        line = out[i]
        m = _FENCE.match(line)
        if m:
            fence, info = m[1], m[2].strip()
            char, n = fence[0], len(fence)
            if stack and char == stack[-1][0] and n >= stack[-1][1] and not info:
                stack.pop()  # closes the innermost prose directive
                out[i] = ""
                i += 1
                continue
            d = re.match(r"\{([^}]*)\}", info)
            name = d[1].strip() if d else None
            if name is None or name in CODE_DIRECTIVES:
                # code or math: blank up to the matching closing fence
                j = i + 1
                while j < len(out):
                    c = _FENCE.match(out[j])
                    if c and c[1][0] == char and len(c[1]) >= n and not c[2].strip():
                        break
                    j += 1
                for k in range(i, min(j + 1, len(out))):
                    out[k] = ""
                i = j + 1
                continue
            # a prose directive: drop the fence line (its argument is a title,
            # which stays checked) and its option block
            out[i] = info[d.end() :] if d else ""
            stack.append((char, n))
            i += 1
            if i < len(out) and out[i].strip() == "---":
                j = i + 1
                while j < len(out) and out[j].strip() != "---":
                    j += 1
                for k in range(i, min(j + 1, len(out))):
                    out[k] = ""
                i = j + 1
            while i < len(out) and _OPTION.match(out[i]):
                out[i] = ""
                i += 1
            continue
        if line.lstrip().startswith(">"):
            out[i] = ""
        i += 1
    return out


# Removed after the fences, in this order; each match is blanked, newlines kept.
_PARA = r"(?:[^\n]|\n(?![ \t]*\n))*?"  # within one paragraph
_EXEMPT = [
    re.compile(r"<!--.*?-->", re.S),  # HTML comments
    re.compile(r"\{glue(?::[\w-]+)?\}(`+)" + _PARA + r"\1"),  # glue roles, whole
    re.compile(r"(`+)(?!`)" + _PARA + r"(?<!`)\1(?!`)"),  # inline code, roles' args
    re.compile(r"\$\$.*?\$\$", re.S),  # display math
    re.compile(r"(?<!\\)\$[^$\n]+?(?<!\\)\$"),  # inline math
]


def prose(text: str) -> str:
    """What of a chapter's source is typed prose, with its line structure kept."""
    text = "\n".join(_strip_fences(text.split("\n")))
    for pattern in _EXEMPT:
        text = pattern.sub(lambda m: _blank(m[0]), text)
    return text


def typed_figures(text: str, name: str = "<text>") -> list[str]:
    """``name:line: match`` for every typed figure in the prose of ``text``."""
    kept = prose(text)
    return [
        f"{name}:{kept.count(chr(10), 0, m.start()) + 1}: {m[0]!r}"
        for m in TYPED.finditer(kept)
    ]


CHAPTERS = sorted(BOOK.glob("**/*.md"))


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.name for p in CHAPTERS])
def test_no_typed_figures(path):
    found = typed_figures(path.read_text(), path.relative_to(ROOT).as_posix())
    assert not found, (
        "typed figures in prose (compute them from results/ with glue, STYLE.md "
        "R20, or quote the paper in a blockquote):\n" + "\n".join(found)
    )


# --- the checker itself -----------------------------------------------------------

PLANTED = ["v3 takes 13.1 µs", "4.1× faster", "0.34 of floor"]


@pytest.mark.parametrize(
    "sentence",
    PLANTED
    + [
        "it reads 2,980 GB/s",
        "3.1\u00a0TB/s",
        "2.3x faster",
        "6.8-7.5x",
        "at 84 % of floor",
        "84% of the floor",
        "45 % of its floor",
        "5 us",
        "0.4 ms.",
        "700 TFLOP/s",
        "12 ns",
    ],
)
def test_checker_catches_a_typed_figure(sentence):
    assert typed_figures(f"Some prose: {sentence}, and more.\n")


def test_checker_reports_file_and_line():
    text = "---\ntitle: t\n---\n# Title\n\nfirst line\nv3 takes 13.1 µs here\n"
    assert typed_figures(text, "book/x.md") == ["book/x.md:7: '13.1 µs'"]


def test_checker_reads_prose_directives():
    text = ":::{note}\n:class: dropdown\nIt took 13.1 µs.\n:::\n"
    assert typed_figures(text)
    text = "```{admonition} Result\nIt is 4.1× faster.\n```\n"
    assert typed_figures(text)


@pytest.mark.parametrize("figure", PLANTED)
def test_checker_ignores_computed_and_quoted_figures(figure):
    exempt = [
        f"v3 takes {{glue:text}}`{figure}` here.",
        f"The log says `{figure}`.",
        f"The log says ``{figure}``.",
        f"math ${figure}$ inline",
        f"$$\n{figure}\n$$",
        f"> The paper: {figure}.",
        f"  > {figure}",
        f"<!-- {figure} -->",
        f"<!--\n{figure}\n-->",
        f"```{{code-cell}} ipython3\nprint('{figure}')\n```",
        f"```python\n{figure}\n```",
        f"````{{code-cell}}\n```\n{figure}\n```\n````",
        f":::{{math}}\n{figure}\n:::",
        f"```{{literalinclude}} ../gpu/x.cu\n:caption: {figure}\n```",
        f"---\ntitle: {figure}\n---\nprose",
    ]
    for text in exempt:
        assert not typed_figures(text + "\n"), text


def test_checker_keeps_a_stray_backtick_in_its_paragraph():
    assert typed_figures("a stray ` here\n\nv3 takes 13.1 µs, `x`.\n")


def test_checker_ignores_shapes_and_plain_numbers():
    text = "A 64x64 tile, 0x1f, B = 8, S = 16K, 10 % of rows, H100.\n"
    assert not typed_figures(text)
