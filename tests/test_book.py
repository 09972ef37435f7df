"""The built book, opened in headless Chromium: every page of _toc.yml loads offline.

For each page: no request fails and none leaves the machine (every URL is file://),
math is typeset by the local MathJax with no raw TeX left on screen, every image
decodes, local links point at files that exist, and no script throws.

On every page: no table cell reads "nan" (a missing figure shows a dash), no cell
output is cut off at its box's edge (a line or table wider than the box scrolls),
every figure was saved at 150 dpi or more and is shown at no less than 70 % of its
size (see ``figure_problems``), and every chapter offers its notebook (.ipynb) in
the download menu, with the note on what only the HTML book renders as its first
cell.

The pages this book's readers start from (the intro's table at a glance, "Running it
on your GPU", the glossary) get a closer look: the table has a row per trick, each
row links to its chapter, and no "$" is left on screen.

Needs `make book` first (or ``TT_BOOK_HTML`` naming another build's ``html``
folder, e.g. one made with ``--path-output``), Debian's `chromium` and the
`playwright` package (no `playwright install`: it would download a browser). Skips
with the reason otherwise.
Only the standard library and pytest are imported at collection time, so this module
also collects on the GPU machine, where none of them is installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("TT_BOOK_HTML") or ROOT / "_build" / "html")
TOC = ROOT / "_toc.yml"
SHOTS = HTML.parent / "screenshots"

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")

# TeX that MathJax should have replaced: \( \) \[ \] $$ \begin{...}, or $...\cmd...$.
RAW_TEX = re.compile(
    r"\\\(|\\\)|\\\[|\\\]|\$\$|\\begin\{"  # delimiters
    r"|\$[^$\n]*\\[A-Za-z]+[^$\n]*\$"  # $...\cmd...$ left by a missing dollarmath
)

pytestmark = pytest.mark.browser


def toc_pages(toc: Path = TOC) -> list[str]:
    """Docnames (paths without suffix) of every `root`, `file` and `glob` entry."""
    names: list[str] = []
    for line in toc.read_text().splitlines():
        m = re.match(r"\s*(?:-\s+)?(root|file|glob):\s*(.+?)\s*$", line.split("#")[0])
        if not m:
            continue
        key, value = m[1], m[2].strip("'\"")
        if key == "glob":
            found = sorted(p for p in ROOT.glob(value) if p.suffix in (".md", ".ipynb"))
            names += [p.relative_to(ROOT).with_suffix("").as_posix() for p in found]
        else:
            names.append(re.sub(r"\.(md|ipynb)$", "", value))
    return list(dict.fromkeys(names))


PAGES = toc_pages()


def _html_of(doc: str) -> Path:
    return HTML / f"{doc}.html"


@pytest.fixture(scope="module")
def browser():
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium is not installed: apt-get install chromium")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not importable (requirements.txt)"
    )
    if not (HTML / "index.html").is_file():
        pytest.skip(f"{HTML} has not been built: run make book first")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class Tab:
    """A browser page and what went wrong while it loaded."""

    page: object
    problems: list[str] = field(default_factory=list)

    def on_request(self, request) -> None:
        if not request.url.startswith(LOCAL_SCHEMES):
            self.problems.append(f"non-local request: {request.url}")

    def on_request_failed(self, request) -> None:
        self.problems.append(f"request failed ({request.failure}): {request.url}")

    def on_response(self, response) -> None:
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status}: {response.url}")

    def on_page_error(self, error) -> None:
        self.problems.append(f"script error: {error}")


@pytest.fixture
def tab(browser):
    """A fresh page that records every request, failure, HTTP error and JS exception."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    # The book must work offline: refuse anything that would leave the machine.
    ctx.route(re.compile(r"^(https?|wss?|ftp)://"), lambda route: route.abort())
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    t = Tab(pg)
    pg.on("request", t.on_request)
    pg.on("requestfailed", t.on_request_failed)
    pg.on("response", t.on_response)
    pg.on("pageerror", t.on_page_error)
    yield t
    ctx.close()


def _typeset(tab: Tab) -> str:
    """Wait for MathJax's first typesetting pass; return why not, or ''."""
    try:
        tab.page.wait_for_function(
            "() => window.MathJax && MathJax.startup && MathJax.startup.promise"
        )
        tab.page.evaluate("() => MathJax.startup.promise.then(() => true)")
    except Exception as e:  # playwright's TimeoutError or a script error
        return f"MathJax did not typeset: {type(e).__name__}: {str(e).splitlines()[0]}"
    return ""


_VISIBLE_TEXT_JS = """() => {
  const skip = 'PRE, CODE, SCRIPT, STYLE, TEXTAREA, MJX-CONTAINER';
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const out = [];
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    const el = n.parentElement;
    if (!el || el.closest(skip) || !el.checkVisibility()) continue;
    out.push(n.textContent);
  }
  return out.join(' ');
}"""

_BROKEN_IMAGES_JS = """async () => {
  const imgs = [...document.images];
  for (const i of imgs) i.loading = 'eager';
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  return imgs.filter(i => !(i.naturalWidth > 0)).map(i => i.currentSrc || i.src);
}"""


# --- figures, tables and outputs, on every page ------------------------------------

MIN_DPI = 150  # a figure saved below this is blurred or tiny on the page
MIN_SCALE = 0.7  # shown at less than 70 % of its size, 9 pt tick labels become 6 pt

_IMAGES_JS = """() => [...document.querySelectorAll('main img')].map(i => ({
  src: i.currentSrc || i.src, natural: i.naturalWidth, shown: i.clientWidth,
}))"""

# Outputs whose content is wider than their box: the reader sees it cut off (or a
# scroll bar) at the box's edge. 1 px of slack for rounding.
_CUT_OFF_JS = """() => [...document.querySelectorAll(
    '.cell_output pre:not(.tt-listing pre), .cell_output .output.text_html')]
  .filter(e => e.scrollWidth > e.clientWidth + 1 && e.clientWidth > 0)
  .map(e => ({text: e.innerText.slice(0, 80), over: e.scrollWidth - e.clientWidth}))"""


def png_dpi(data: bytes) -> float | None:
    """The resolution a PNG's pHYs chunk records, in dots per inch (None when the
    file has no pHYs chunk or gives no unit)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    i = 8
    while i + 8 <= len(data):
        (n,) = struct.unpack(">I", data[i : i + 4])
        kind = data[i + 4 : i + 8]
        if kind == b"pHYs":
            x, _, unit = struct.unpack(">IIB", data[i + 8 : i + 17])
            return x * 0.0254 if unit == 1 else None  # unit 1: per metre
        if kind == b"IDAT":  # pHYs must come before the image data
            return None
        i += 12 + n
    return None


def figure_problems(images: list[dict]) -> list[str]:
    """What is wrong with a page's PNG figures, read from the built files and the
    browser's layout.

    Two checks, each robust to how a page is laid out:

    - the dpi saved in the file's pHYs chunk (Matplotlib writes the figure's dpi
      there) is at least MIN_DPI; a PNG without pHYs fails, since its resolution is
      unknown;
    - the figure is shown at no less than MIN_SCALE of its physical size: the
      displayed width in CSS pixels (96 to the inch) against natural width / dpi
      inches. A 13-inch figure squeezed into the 7-inch text column passes the first
      check and fails this one; its labels would be unreadably small.

    SVG and other formats are not checked (they have no pixel resolution)."""
    out = []
    for im in images:
        url = urlsplit(im["src"])
        if url.scheme != "file" or not url.path.lower().endswith(".png"):
            continue
        path = Path(unquote(url.path))
        dpi = png_dpi(path.read_bytes()) if path.is_file() else None
        name = path.name
        if dpi is None:
            out.append(f"{name}: no resolution recorded (pHYs)")
            continue
        if dpi < MIN_DPI - 0.5:
            out.append(f"{name}: saved at {dpi:.0f} dpi (< {MIN_DPI})")
        if im["natural"] and im["shown"]:
            scale = im["shown"] / 96 / (im["natural"] / dpi)
            if scale < MIN_SCALE:
                out.append(
                    f"{name}: shown at {scale:.0%} of its size "
                    f"({im['natural'] / dpi:.1f} in wide in a "
                    f"{im['shown'] / 96:.1f} in column)"
                )
    return out


def nan_cells(tables: list[dict]) -> list[str]:
    """The cells (and headers) of a page's tables that read 'nan'."""
    cells = [c["text"] for t in tables for r in t["rows"] for c in r]
    cells += [h for t in tables for h in t["head"]]
    return [c for c in cells if NAN.search(c)]


def test_png_dpi_reads_phys():
    """png_dpi on a hand-built PNG header (8-byte signature, IHDR, pHYs)."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + b"\0\0\0\0"

    sig = b"\x89PNG\r\n\x1a\n"
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 10, 8, 6, 0, 0, 0))
    for dpi in (72, 100, 150, 200):
        ppm = round(dpi / 0.0254)
        phys = chunk(b"pHYs", struct.pack(">IIB", ppm, ppm, 1))
        assert abs(png_dpi(sig + ihdr + phys) - dpi) < 0.05  # 1 / m rounding
    assert png_dpi(sig + ihdr + chunk(b"IDAT", b"")) is None


def test_figure_problems_flags_low_dpi_and_shrinking(tmp_path):
    def png(dpi):
        ppm = round(dpi / 0.0254)
        body = struct.pack(">IIB", ppm, ppm, 1)
        return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 9) + b"pHYs" + body
                + b"\0" * 4)  # fmt: skip

    for dpi in (100, 200):
        (tmp_path / f"f{dpi}.png").write_bytes(png(dpi))
    uri = (tmp_path / "f100.png").as_uri()
    low = figure_problems([{"src": uri, "natural": 700, "shown": 688}])
    assert any("100 dpi" in p for p in low), low
    uri = (tmp_path / "f200.png").as_uri()
    wide = figure_problems([{"src": uri, "natural": 2600, "shown": 688}])
    assert any("shown at" in p for p in wide), wide  # 13 in in a 7.2 in column
    assert not figure_problems([{"src": uri, "natural": 1400, "shown": 688}])


@pytest.mark.parametrize("doc", PAGES, ids=[Path(d).name for d in PAGES])
def test_page(tab, doc):
    page = tab.page
    html = _html_of(doc)
    assert html.is_file(), f"{doc} is in _toc.yml but {html} is missing: make book"

    response = page.goto(html.as_uri(), wait_until="load")
    assert response is None or response.ok, f"{doc}: status {response.status}"
    assert page.locator("h1").count() >= 1, f"{doc}: no <h1> heading"

    n_math = page.locator(".math").count()
    not_typeset = _typeset(tab) if n_math else ""
    broken = page.evaluate(_BROKEN_IMAGES_JS)
    problems = tab.problems + ([not_typeset] if not_typeset else [])
    assert not problems, f"{doc}:\n" + "\n".join(problems)

    if n_math:
        raw_math = page.locator(".math:not(:has(mjx-container))").count()
        assert raw_math == 0, f"{doc}: {raw_math} of {n_math} math elements not typeset"
        errors = page.locator("mjx-merror").all_inner_texts()
        assert not errors, f"{doc}: MathJax errors {errors}"
    raw = RAW_TEX.findall(page.evaluate(_VISIBLE_TEXT_JS))
    assert not raw, f"{doc}: raw TeX visible on the page: {raw[:5]}"
    assert not broken, f"{doc}: images that did not load: {broken}"

    hrefs = page.eval_on_selector_all("a[href]", "as => as.map(a => a.href)")
    missing = sorted(
        {
            h.split("#")[0]
            for h in hrefs
            if h.startswith("file:") and not Path(unquote(urlsplit(h).path)).exists()
        }
    )
    assert not missing, f"{doc}: links to files that do not exist: {missing}"

    bad = nan_cells(page.evaluate(_TABLES_JS))
    assert not bad, f"{doc}: a table shows nan (a dash is due): {bad[:5]}"
    figs = figure_problems(page.evaluate(_IMAGES_JS))
    assert not figs, f"{doc}: figures:\n" + "\n".join(figs)
    cut = page.evaluate(_CUT_OFF_JS)
    assert not cut, f"{doc}: {len(cut)} outputs cut off at the box edge: {cut[:3]}"
    if Path(doc).name[:2].isdigit():  # a chapter: its notebook in the menu
        nbs = [h for h in hrefs if urlsplit(h).path.endswith(".ipynb")]
        assert nbs, f"{doc}: no .ipynb in the download menu"
        nb = json.loads(Path(unquote(urlsplit(nbs[0]).path)).read_text())
        first = "".join(nb["cells"][0]["source"])
        assert "only the HTML book renders" in first, first[:200]

    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{Path(doc).name}.png"))
    assert not tab.problems, f"{doc} (after the checks):\n" + "\n".join(tab.problems)


def test_index_redirects_to_root(tab):
    page = tab.page
    index = HTML / "index.html"
    root = PAGES[0]
    assert f"url={root}.html" in index.read_text(), f"{index} does not point at {root}"
    page.goto(index.as_uri())
    page.wait_for_url(f"**/{root}.html")
    assert page.locator("h1").count() >= 1
    assert not tab.problems, "\n".join(tab.problems)


# --- the pages readers start from -------------------------------------------------

READER_PAGES = ["book/intro", "book/running", "book/glossary"]
NAN = re.compile(r"\bnan\b", re.I)

_TABLES_JS = """() => [...document.querySelectorAll('main table')].map(t => ({
  head: [...t.querySelectorAll('thead th')].map(c => c.innerText.trim()),
  rows: [...t.querySelectorAll('tbody tr')].map(tr =>
    [...tr.querySelectorAll('td')].map(td => ({
      text: td.innerText.trim(),
      links: [...td.querySelectorAll('a[href]')].map(a => a.href),
    }))),
}))"""


def _open(tab: Tab, doc: str) -> None:
    html = _html_of(doc)
    assert html.is_file(), f"{doc} is missing from {HTML}: make book"
    tab.page.goto(html.as_uri(), wait_until="load")
    if tab.page.locator(".math").count():
        assert not _typeset(tab)


@pytest.mark.parametrize("doc", READER_PAGES, ids=[Path(d).name for d in READER_PAGES])
def test_reader_page_has_no_nan_and_no_raw_dollar(tab, doc):
    _open(tab, doc)
    bad = nan_cells(tab.page.evaluate(_TABLES_JS))
    assert not bad, f"{doc}: a table shows nan: {bad[:5]}"
    text = tab.page.evaluate(_VISIBLE_TEXT_JS)
    dollars = re.findall(r".{0,30}\$.{0,30}", text)
    assert not dollars, f"{doc}: raw $ math left on screen: {dollars[:5]}"
    assert not tab.problems, "\n".join(tab.problems)


def test_running_page_shows_the_capability_table(tab):
    """The version -> architecture table is an HTML table (a Markdown table in a
    cell's output came out as raw pipes: myst-nb renders outputs as CommonMark)."""
    _open(tab, "book/running")
    tables = [t for t in tab.page.evaluate(_TABLES_JS) if "versions" in t["head"]]
    assert len(tables) == 1, "the running page has no capability table"
    rows = tables[0]["rows"]
    assert any(r[0]["text"] == "gpu/ffn_approx.cu" for r in rows), rows[:3]
    text = tab.page.evaluate(_VISIBLE_TEXT_JS)
    assert "| file |" not in text, "a Markdown table left as raw pipes"
    assert not tab.problems, "\n".join(tab.problems)


def test_intro_table_at_a_glance(tab):
    _open(tab, "book/intro")
    tables = [
        t
        for t in tab.page.evaluate(_TABLES_JS)
        if any("where it pays" in h for h in t["head"])
    ]
    assert len(tables) == 1, "the intro has no table at a glance"
    t = tables[0]
    assert len(t["rows"]) == 7, f"{len(t['rows'])} rows, want one per trick (7)"
    chapters = [p for p in PAGES if Path(p).name[:2].isdigit()]
    for r in t["rows"]:
        assert len(r) == len(t["head"]), r
        assert all(c["text"] for c in r), f"an empty cell (a dash is due): {r}"
        links = r[-1]["links"]
        assert links, f"no link to the chapter in row {r[0]['text']!r}"
        target = Path(unquote(urlsplit(links[0]).path))
        assert target.is_file(), f"{r[0]['text']}: link to {target}, missing"
        assert any(target.stem == Path(c).name for c in chapters), target
