"""Source listings and version diffs for the book, read from the files at build time.

A listing written into a chapter drifts from the code; ``literalinclude`` does not,
but a notebook made from the chapter loses it. ``listing`` shows a Python object
(``pyobject``, as literalinclude's option) or a span of lines (``start_after``,
``start_at``, ``end_before``) of any file, and ``diff`` shows two kernel versions of
``gpu/<slug>.cu`` as a unified diff (difflib), both as one output: highlighted HTML
in the book and in a notebook, plain text in a terminal. A kernel file's versions
are its sections, each opened by a ``// --- <title> ---`` line (``sections``).
Nothing here needs a GPU.

    from gpu import booksource as bs
    bs.listing("reference/common.py", pyobject="decode_attention")
    bs.diff("attention", "v4", "v6")
"""

from __future__ import annotations

import ast
import difflib
import html
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPU = ROOT / "gpu"
_SECTION = re.compile(r"^// --- (.+?)(?: ---\s*$|$)")

_STYLE = """<style>
div.tt-listing { margin: 0.3em 0 0.8em 0; }
div.tt-listing p.tt-listing-title { font-size: 0.8em; margin: 0 0 0.2em 0;
  opacity: 0.85; }
div.tt-listing pre { font-size: 0.78em; line-height: 1.35; overflow-x: auto;
  padding: 0.5em 0.7em; margin: 0; }
div.tt-listing .tt-add { background: rgba(40, 167, 69, 0.16); }
div.tt-listing .tt-del { background: rgba(220, 53, 69, 0.14); }
div.tt-listing .tt-hunk { color: #6f42c1; }
</style>"""


class Listing:
    """Source text with a title: highlighted HTML (Pygments, inline styles) for the
    book and notebooks, the text itself in a terminal. ``language`` 'diff' marks
    added and removed lines."""

    def __init__(self, text: str, language: str = "python", title: str = ""):
        self.text = text.rstrip("\n") + "\n"
        self.language = language
        self.title = title

    def _body(self) -> str:
        if self.language == "diff":
            out = []
            for line in self.text.splitlines():
                cls = (
                    "tt-hunk"
                    if line.startswith("@@")
                    else "tt-add"
                    if line.startswith("+")
                    else "tt-del"
                    if line.startswith("-")
                    else ""
                )
                esc = html.escape(line) or " "
                out.append(f'<span class="{cls}">{esc}</span>' if cls else esc)
            return "<pre>" + "\n".join(out) + "</pre>"
        try:
            from pygments import highlight
            from pygments.formatters import HtmlFormatter
            from pygments.lexers import get_lexer_by_name

            fmt = HtmlFormatter(noclasses=True, nowrap=True, style="default")
            body = highlight(self.text, get_lexer_by_name(self.language), fmt)
        except Exception:  # noqa: BLE001 - no Pygments or no lexer: plain text
            body = html.escape(self.text)
        return f"<pre>{body}</pre>"

    def _repr_html_(self) -> str:
        title = (
            f'<p class="tt-listing-title">{html.escape(self.title)}</p>'
            if self.title
            else ""
        )
        return f'{_STYLE}<div class="tt-listing">{title}{self._body()}</div>'

    def __repr__(self) -> str:
        return (f"{self.title}\n" if self.title else "") + self.text


def _path(path: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


def _language(p: Path) -> str:
    return {".py": "python", ".cu": "cuda", ".cuh": "cuda"}.get(p.suffix, "text")


def pyobject(path: str | Path, name: str) -> str:
    """The source of a top-level function or class ``name`` (or ``Class.method``)
    of a Python file, with its decorators and comments inside it."""
    p = _path(path)
    src = p.read_text()
    body = ast.parse(src).body
    node = None
    for part in name.split("."):
        node = next(
            (
                n
                for n in body
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                and n.name == part
            ),
            None,
        )
        if node is None:
            raise KeyError(f"{p.name} has no {name!r}")
        body = getattr(node, "body", [])
    lines = src.splitlines()
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return "\n".join(lines[first - 1 : node.end_lineno])


def span(
    path: str | Path,
    start_after: str | None = None,
    start_at: str | None = None,
    end_before: str | None = None,
) -> str:
    """The lines of a file between markers, as literalinclude takes them: from the
    first line containing ``start_at`` (or the line after one containing
    ``start_after``) up to, not including, the next line containing
    ``end_before``."""
    lines = _path(path).read_text().splitlines()
    i = 0
    if start_after is not None or start_at is not None:
        key = start_after if start_after is not None else start_at
        hit = next((k for k, ln in enumerate(lines) if key in ln), None)
        if hit is None:
            raise KeyError(f"{path}: no line contains {key!r}")
        i = hit + (1 if start_after is not None else 0)
    j = len(lines)
    if end_before is not None:
        hit = next((k for k in range(i, len(lines)) if end_before in lines[k]), None)
        if hit is None:
            raise KeyError(f"{path}: no line after {i} contains {end_before!r}")
        j = hit
    return "\n".join(lines[i:j]).strip("\n")


def listing(
    path: str | Path,
    pyobject: str | None = None,
    language: str | None = None,
    title: str | None = None,
    **markers,
) -> Listing:
    """A listing of ``path`` (relative to the repository): a Python object, or the
    span between markers (``start_after``, ``start_at``, ``end_before``), or the
    whole file. The title names the file (and the object)."""
    p = _path(path)
    text = globals()["pyobject"](p, pyobject) if pyobject else span(p, **markers)
    rel = p.relative_to(ROOT).as_posix() if p.is_relative_to(ROOT) else str(p)
    return Listing(
        text,
        language or _language(p),
        title if title is not None else rel + (f": {pyobject}" if pyobject else ""),
    )


def sections(slug_or_path: str | Path) -> dict[str, str]:
    """A kernel file's sections: title -> text, in file order. A section opens at
    a line ``// --- <title> ---`` (the title ends at a colon, if any, so
    ``// --- v1: attend ---`` is section "v1") and runs to the next such line."""
    p = _cu(slug_or_path)
    out: dict[str, list[str]] = {}
    current = None
    for line in p.read_text().splitlines():
        m = _SECTION.match(line)
        if m:
            current = m.group(1).split(":")[0].strip()
            out.setdefault(current, [])
            continue
        if current is not None:
            out[current].append(line)
    return {k: "\n".join(v).strip("\n") for k, v in out.items()}


def _cu(slug_or_path: str | Path) -> Path:
    p = Path(slug_or_path)
    return _path(p) if p.suffix else GPU / f"{p}.cu"


def section(slug_or_path: str | Path, title: str) -> str:
    """The text of one section (``sections``)."""
    found = sections(slug_or_path)
    if title not in found:
        raise KeyError(
            f"{_cu(slug_or_path).name} has no section {title!r}: {list(found)}"
        )
    return found[title]


def unified(old: str, new: str, old_name: str, new_name: str, context: int = 3) -> str:
    """A unified diff of two texts (difflib), without trailing blanks."""
    lines = difflib.unified_diff(
        old.splitlines(),
        new.splitlines(),
        fromfile=old_name,
        tofile=new_name,
        n=context,
        lineterm="",
    )
    return "\n".join(ln.rstrip() for ln in lines)


def diff(slug: str, old: str, new: str, context: int = 3) -> Listing:
    """Version ``new`` of gpu/<slug>.cu against ``old``, the section it builds on,
    as a unified diff read from the file when the book is built."""
    a, b = section(slug, old), section(slug, new)
    text = unified(a, b, f"{slug}.cu {old}", f"{slug}.cu {new}", context)
    if not text:
        text = f"(sections {old} and {new} of gpu/{slug}.cu are identical)"
    added = sum(
        ln.startswith("+") and not ln.startswith("+++") for ln in text.splitlines()
    )
    removed = sum(
        ln.startswith("-") and not ln.startswith("---") for ln in text.splitlines()
    )
    title = f"gpu/{slug}.cu: {new} against {old} (+{added} −{removed} lines)"
    return Listing(text, "diff", title)


def function(slug_or_path: str | Path, name: str) -> str:
    """One device function of a kernel file: the definition whose declarator is
    ``name(`` after ``__device__`` or ``__global__`` (with the ``template`` line
    above it), through the brace that closes its body."""
    lines = _cu(slug_or_path).read_text().splitlines()
    decl = re.compile(r"__(device|global)__.*\b" + re.escape(name) + r"\(")
    start = next((i for i, ln in enumerate(lines) if decl.search(ln)), None)
    if start is None:
        raise KeyError(f"{_cu(slug_or_path).name} defines no function {name!r}")
    first = start
    if first and lines[first - 1].lstrip().startswith("template"):
        first -= 1
    depth, opened = 0, False
    for j in range(start, len(lines)):
        code = lines[j].split("//")[0]
        depth += code.count("{") - code.count("}")
        opened = opened or "{" in code
        if opened and depth == 0:
            return "\n".join(lines[first : j + 1])
    raise ValueError(f"{name}: no closing brace")


def diff_functions(slug: str, old: str, new: str, context: int = 3) -> Listing:
    """Device function ``new`` of gpu/<slug>.cu against ``old``, the one it builds
    on, as a unified diff read from the file when the book is built."""
    a, b = function(slug, old), function(slug, new)
    text = unified(a, b, f"{slug}.cu {old}", f"{slug}.cu {new}", context)
    lines = text.splitlines()
    added = sum(ln.startswith("+") and not ln.startswith("+++") for ln in lines)
    removed = sum(ln.startswith("-") and not ln.startswith("---") for ln in lines)
    return Listing(
        text or f"({old} and {new} are identical)",
        "diff",
        f"gpu/{slug}.cu: {new} against {old} (+{added} −{removed} lines)",
    )
