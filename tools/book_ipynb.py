"""A Sphinx extension: each executed chapter downloadable as a notebook (.ipynb).

The Book theme lists an .ipynb in its download menu only when a launch button
(Binder, JupyterHub, Colab) is configured, and all of those need the network. This
extension does the theme's copying itself: before the theme builds its header
buttons, it copies the notebook myst-nb executed (``_build/jupyter_execute``) into
``_sources`` with ``tools/notebooks.py``'s first cell prepended, and names it in the
page context, where the theme's download menu picks it up.
"""

from __future__ import annotations

from pathlib import Path


def add_ipynb(app, pagename, templatename, context, doctree) -> None:
    import nbformat
    from notebooks import with_note

    src = context.get("sourcename") or ""
    if not src.endswith((".md", ".md.txt")):
        return
    out = Path(app.outdir)
    executed = out.parent / "jupyter_execute" / f"{pagename}.ipynb"
    if not executed.is_file():
        return  # a page without code cells (the glossary, the bibliography)
    dest = out / "_sources" / f"{pagename}.ipynb"
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(with_note(nbformat.read(executed, as_version=4)), dest)
    context["ipynb_source"] = f"{pagename}.ipynb"


def setup(app):
    app.connect("html-page-context", add_ipynb, priority=500)  # theme's: 501
    return {"parallel_read_safe": True, "parallel_write_safe": True}
