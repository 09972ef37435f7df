"""The chapters as Jupyter notebooks, with a first cell that says what stays in the
HTML book.

    python tools/notebooks.py book/*.md --out notebooks       # convert (make notebooks)
    python tools/notebooks.py book/04_deja_vu.md --out _build/nb --execute
                                                  # convert, then run it on this CPU

A MyST chapter converts (jupytext) to a notebook whose code cells are the chapter's;
the MyST roles and directives ({cite:p}, {ref}, {eq}, admonitions) stay as source
text there, so the first cell, ``NOTE``, says so and where to read them rendered.
``--execute`` runs the notebook with nbclient in the chapter's own folder
(``book/``), as the book build does, and fails on the first cell that raises.
The HTML book's download menu offers the same notebook, executed, with the same
first cell (``tools/book_ipynb.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NOTE = (
    "**This notebook is a chapter of the book *Transformer Tricks*.** Its code "
    "cells run here as they do in the book. Citations (`{cite:p}`), cross-references "
    "(`{ref}`, `{eq}`), glued figures (`{glue:text}`) and admonitions are MyST "
    "markup, which only the HTML book renders: here they show as source text. Read "
    "them rendered in the HTML book (`make book`, then `_build/html/index.html`). "
    "Run the notebook from the repository's `notebooks/` or `book/` folder, so that "
    "the relative paths hold."
)
NOTE_TAG = "tt-notebook-note"


def with_note(nb):
    """nb with NOTE as its first cell (once: a notebook that has it keeps one)."""
    import nbformat

    if nb.cells and NOTE_TAG in nb.cells[0].get("metadata", {}).get("tags", []):
        return nb
    cell = nbformat.v4.new_markdown_cell(NOTE, metadata={"tags": [NOTE_TAG]})
    nb.cells.insert(0, cell)
    return nb


def convert(md: Path):
    """The MyST chapter ``md`` as a notebook (nbformat 4), NOTE first."""
    import jupytext

    return with_note(jupytext.read(md))


def execute(nb, cwd: Path, timeout: int = 300):
    """Run every cell of nb in cwd with nbclient (python3 kernel); raises
    nbclient's CellExecutionError on the first failing cell."""
    import nbclient

    client = nbclient.NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()
    return nb


def main(argv=None) -> int:
    import nbformat

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("chapters", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("notebooks"))
    ap.add_argument("--execute", action="store_true")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for md in args.chapters:
        nb = convert(md)
        if args.execute:
            execute(nb, md.resolve().parent)
            n = sum(c.cell_type == "code" for c in nb.cells)
            print(f"{md}: {n} code cells executed")
        dest = args.out / md.with_suffix(".ipynb").name
        nbformat.write(nb, dest)
        print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
