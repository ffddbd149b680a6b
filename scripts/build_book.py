#!/usr/bin/env python3
"""Build the offline book: every notebook executed, with its figures, plus README and guide.

::

    make book                                  # full mode: every experiment's full trial count
    BGWLAB_QUICK=1 make book                   # quick mode: small trial counts, a minute or two
    .venv/bin/python scripts/build_book.py --quick --out /tmp/book

writes ``build/book/``:

* ``index.html`` -- the contents: the README, the teaching guide, one page per notebook
  (with its question and how long it ran), and how the book was built (mode, commit,
  machine, date);
* ``NN_name.html`` -- each ``notebooks/NN_*.ipynb`` (whatever exist), executed top to
  bottom with nbclient in a kernel of this Python, working directory ``notebooks/``, and
  exported with nbconvert's bundled JupyterLab template; figures are embedded as data;
* ``readme.html`` and ``guide.html`` -- ``README.md`` and ``notebooks/README.md``;
* ``build-info.json`` -- the same facts as data (the tests read it).

Offline: nothing is downloaded, at build time or when reading. nbconvert's own CSS is
inlined; the script tags it would point at a CDN (require.js, MathJax, mermaid, the
widget manager) are left out. An interactive widget (notebooks 05, 06, 09) shows a
note instead: widgets need a live kernel (``make lab``).

Cells tagged ``check`` (the hidden key-claim checks) run, so a broken claim fails the
build, but are left out of the pages. Cells tagged ``solution`` stay, folded under
"Solution": the book is the reading copy, for students who only read and for the
teacher; ``make student-copy`` writes the notebooks without them.

Exits 1 if any notebook failed (its page is still written, with the error), 0 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime
import html
import json
import mimetypes
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
REMOVE_TAGS = ("check",)
FOLD_TAGS = ("solution",)

# Extends nbconvert's bundled "lab" template: no CDN scripts, a navigation bar, folded
# solutions, a marker on error outputs, and a note in place of a widget.
BOOK_TEMPLATE = r"""
{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}<style type="text/css">{{ resources.book_css }}</style>{%- endblock extra_css -%}
{%- block body_header -%}
{{ super() }}
{{ resources.book_nav }}
{%- endblock body_header -%}
{% block body_footer %}
{{ resources.book_nav }}
{{ super() }}
{% endblock body_footer %}
{% block any_cell %}
{%- if cell.metadata.get('tags', []) | select('in', resources.book_fold_tags) | list -%}
<details class="book-solution"><summary>Solution (try the exercise first)</summary>
{{ super() }}
</details>
{%- else -%}
{{ super() }}
{%- endif -%}
{% endblock any_cell %}
{% block error -%}
<div class="book-error">
{{ super() }}
</div>
{%- endblock error %}
"""
WIDGET = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ('<div class="book-widget">An interactive widget: it needs a live kernel. '
               'Run this notebook in JupyterLab (<code>make lab</code>) to use it.</div>')

CSS = """
.book-nav { font: 14px/1.4 system-ui, sans-serif; padding: 8px 16px; margin: 0 0 8px 0;
  background: #f3f4f6; border-bottom: 1px solid #d0d4da; display: flex; gap: 1.5em; }
.book-nav a { text-decoration: none; color: #1a5fb4; }
.book-nav .book-here { color: #555; margin-left: auto; }
.book-widget { font-style: italic; color: #555; border: 1px dashed #aaa; padding: 6px 10px;
  margin: 4px 0; }
details.book-solution { border-left: 3px solid #9bbf7c; padding-left: 8px; margin: 6px 0; }
details.book-solution > summary { cursor: pointer; color: #3a6a1d; font: 13px system-ui, sans-serif; }
"""

PAGE_CSS = """
body { font: 16px/1.55 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1f23;
  max-width: 60rem; margin: 0 auto; padding: 0 1.2rem 3rem; }
main { padding-top: 0.5rem; }
h1, h2, h3 { line-height: 1.25; }
a { color: #1a5fb4; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 0.9em; }
pre { background: #f6f8fa; padding: 0.8em 1em; overflow-x: auto; border-radius: 4px; }
p code, li code, td code { background: #f0f2f4; padding: 0.1em 0.3em; border-radius: 3px; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #d0d4da; padding: 0.35em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f4f6; }
img { max-width: 100%; }
blockquote { border-left: 4px solid #d0d4da; margin-left: 0; padding-left: 1em; color: #444; }
.repo-path { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.9em; }
.book-nav { font: 14px/1.4 system-ui, sans-serif; padding: 8px 0; margin-bottom: 8px;
  border-bottom: 1px solid #d0d4da; display: flex; gap: 1.5em; }
.book-nav a { text-decoration: none; }
.book-nav .book-here { color: #555; margin-left: auto; }
.failed { color: #b00020; font-weight: bold; }
.meta { color: #555; font-size: 0.9em; }
"""


def quick_mode() -> bool:
    """The same rule as bgwlab.lab.teaching.quick_mode (BGWLAB_QUICK set, not 0)."""
    return os.environ.get("BGWLAB_QUICK", "") not in ("", "0")


def git(*args) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


# -- notebooks ------------------------------------------------------------------------------

def notebook_title(nb) -> tuple[str, str]:
    """(the first markdown heading, the notebook's question) -- for the contents."""
    title, question = "", ""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            if not title and line.startswith("# "):
                title = line[2:].strip()
        m = re.search(r"\*\*The question\.\*\*(.*?)(?:\n\s*\n|\Z)", cell.source, re.S)
        if m and not question:
            question = re.sub(r"\s*\n>?\s*", " ", m.group(1)).strip()
        if title and question:
            break
    return title, question


def kernel_home(tmp: Path) -> Path:
    """A python3 kernelspec for *this* interpreter (as tests/test_notebooks.py does)."""
    spec = tmp / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (bgwlab)", "language": "python"}))
    return tmp


def execute(nb, timeout: int, on_cell=None) -> str | None:
    """Run `nb` in place, in notebooks/; the error's text if a cell failed, else None."""
    import nbclient

    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=timeout, store_widget_state=False,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
        on_cell_executed=(lambda cell, **kw: on_cell(cell)) if on_cell else None)
    # Progress bars (tqdm) are widgets, which a static page cannot show: off in the kernel
    # where tqdm's defaults rule (an explicit disable=False still draws one: export drops it).
    env = {**os.environ, "TQDM_DISABLE": "1"}
    try:
        client.execute(env=env)
    except nbclient.exceptions.CellExecutionError as e:
        return str(e)
    return None


def is_progress_bar(output) -> bool:
    """A tqdm bar drawn as a widget (its text repr is the bar: ``trials: 40%|####  | 8/20``)."""
    data = output.get("data", {})
    return WIDGET in data and bool(re.search(r"\d+%\|.*\|\s*\d+/\d+", data.get("text/plain", "")))


def count_outputs(nb) -> dict:
    """Error outputs in any cell; figures and widgets in the cells the page shows."""
    figures = errors = widgets = 0
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        hidden = bool(set(c.metadata.get("tags", [])) & set(REMOVE_TAGS))
        for o in c.get("outputs", []):
            data = o.get("data", {})
            if o.output_type == "error":
                errors += 1
            elif hidden:
                continue
            elif WIDGET in data and not is_progress_bar(o):
                widgets += 1
            elif "image/png" in data or "image/jpeg" in data:
                figures += 1
    return {"figures": figures, "errors": errors, "widgets": widgets}


def nav(prev: tuple[str, str] | None, nxt: tuple[str, str] | None, here: str) -> str:
    parts = ['<nav class="book-nav"><a href="index.html">Contents</a>']
    if prev:
        parts.append(f'<a href="{prev[0]}">&larr; {html.escape(prev[1])}</a>')
    if nxt:
        parts.append(f'<a href="{nxt[0]}">{html.escape(nxt[1])} &rarr;</a>')
    parts.append(f'<span class="book-here">{html.escape(here)}</span></nav>')
    return "".join(parts)


def exporter():
    import jinja2
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    ex = HTMLExporter(template_name="lab", extra_loaders=[jinja2.DictLoader({"book.html.j2": BOOK_TEMPLATE})],
                      template_file="book.html.j2", theme="light")
    ex.register_preprocessor(TagRemovePreprocessor(remove_cell_tags=set(REMOVE_TAGS), enabled=True),
                             enabled=True)
    return ex


def export_notebook(nb, name: str, nav_html: str, ex=None) -> str:
    """The page of an (executed) notebook: HTML with its outputs, check cells removed.

    A check cell that failed stays in the page, with its error (the build fails anyway).
    A widget's output becomes a note (a widget needs a live kernel, and nbconvert would
    fall back to its text repr, e.g. ``VBox(...)``).  `nb` itself is not changed.
    """
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if "outputs" not in cell:
            continue
        if any(o.output_type == "error" for o in cell.outputs):  # a failed check is shown
            cell.metadata["tags"] = [t for t in cell.metadata.get("tags", []) if t not in REMOVE_TAGS]
        cell.outputs = [o for o in cell.outputs if not is_progress_bar(o)]
        for o in cell.outputs:
            if WIDGET in o.get("data", {}):
                o["data"] = {"text/html": WIDGET_NOTE}
    ex = ex or exporter()
    body, _ = ex.from_notebook_node(nb, resources={
        "metadata": {"name": name}, "book_nav": nav_html, "book_css": CSS,
        "book_fold_tags": list(FOLD_TAGS)})
    return body


# -- markdown pages -------------------------------------------------------------------------

def markdown_page(src: Path, title: str, nav_html: str, pages: dict[Path, str]) -> str:
    """README-like markdown as an HTML page: local images embedded, links into the book."""
    import mistune
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import TextLexer, get_lexer_by_name
    from pygments.util import ClassNotFound

    def local(url: str) -> tuple[Path | None, str]:
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^//", url, re.I):
            return None, ""
        path, _, frag = url.partition("#")
        return (src.parent / path).resolve(), frag

    class Renderer(mistune.HTMLRenderer):
        def image(self, text, url, title=None):
            path, _ = local(url)
            if path is not None and path.is_file():
                mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                url = f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()
            return super().image(text, url, title)

        def link(self, text, url, title=None):
            path, frag = local(url)
            if path is None:
                return super().link(text, url, title)
            key = path.with_suffix(".ipynb") if path.suffix == ".py" and path.parent == NOTEBOOKS else path
            if key in pages:
                return super().link(text, pages[key] + (f"#{frag}" if frag else ""), title)
            # A file of the repository, not a page of the book: name it, do not link it.
            rel = os.path.relpath(path, ROOT)
            return f'<span class="repo-path" title="in the repository: {html.escape(rel)}">{text}</span>'

        def heading(self, text, level, **attrs):
            slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"<[^>]+>", "", text).lower()).strip("-")
            return f'<h{level} id="{slug}">{text}</h{level}>\n'

        def block_code(self, code, info=None):
            try:
                lexer = get_lexer_by_name(info.split()[0]) if info else TextLexer()
            except ClassNotFound:
                lexer = TextLexer()
            return highlight(code, lexer, HtmlFormatter(nowrap=False))

    md = mistune.create_markdown(renderer=Renderer(escape=False),
                                 plugins=["table", "strikethrough", "url"])
    body = md(src.read_text())
    return page(title, body, nav_html, extra_css=HtmlFormatter().get_style_defs(".highlight"))


def page(title: str, body: str, nav_html: str = "", extra_css: str = "") -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1.0">\n'
            f"<title>{html.escape(title)}</title>\n<style>{PAGE_CSS}\n{extra_css}</style>\n"
            f"</head>\n<body>\n{nav_html}\n<main>\n{body}\n</main>\n{nav_html}\n</body>\n</html>\n")


def index_page(info: dict) -> str:
    import mistune

    rows = []
    for nb in info["notebooks"]:
        status = (' <span class="failed">(failed: see the page)</span>' if nb["failed"] else "")
        question = re.sub(r"</?p>", "", mistune.html(nb["question"])).strip()
        rows.append(f'<li><a href="{nb["page"]}">{html.escape(nb["title"] or nb["name"])}</a>{status}'
                    f'<br><span class="meta">{question} '
                    f'&middot; ran {nb["seconds"]:.1f} s</span></li>')
    m = info["build"]
    body = f"""
<h1>bgwlab: the book</h1>
<p>PostgreSQL's dynamic background workers, rebuilt for real in Python: every notebook of
the kit, executed, with its figures and outputs. This is the reading copy; to run and break
things yourself, use <code>make lab</code>.</p>
<ul>
<li><a href="readme.html">README</a>: what bgwlab is, its API on one page, the headline
experiment, what was measured</li>
<li><a href="guide.html">Teaching guide</a>: objectives and prerequisites per notebook, a
90-minute lab plan, a glossary, the PostgreSQL source each notebook mirrors</li>
</ul>
<h2>Notebooks</h2>
<ol start="0">
{chr(10).join(rows)}
</ol>
<h2>How this copy was made</h2>
<p class="meta">Executed in <b>{m["mode"]}</b> mode
({"BGWLAB_QUICK=1: small trial counts" if m["mode"] == "quick" else "full trial counts"})
on {html.escape(m["machine"])} ({m["usable_cpus"]} usable CPUs of {m["cpu_count"]}, load
average {m["loadavg_start"]:.2f} at the start), Python {m["python"]}, commit
<code>{html.escape(m["commit"][:12])}</code>{" (with uncommitted changes)" if m["dirty"] else ""},
{html.escape(m["date"])}; {m["seconds"]:.0f} s in all. Numbers in the pages are from that
run on that machine: yours will differ, the shapes should not.</p>
"""
    return page("bgwlab: the book", body)


# -- main -----------------------------------------------------------------------------------

def build(out: Path, timeout: int = 900, only: str | None = None) -> dict:
    import nbformat
    from tqdm.auto import tqdm

    sys.path.insert(0, str(ROOT))
    from bgwlab.lab.load import cpu_info

    t_start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    sources = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        sources = [s for s in sources if re.search(only, s.name)]
    nbs = {s: nbformat.read(s, as_version=4) for s in sources}
    titles = {s: notebook_title(nb) for s, nb in nbs.items()}
    pages = {s: s.stem + ".html" for s in sources}
    pages[ROOT / "README.md"] = "readme.html"
    pages[NOTEBOOKS / "README.md"] = "guide.html"
    mode = "quick" if quick_mode() else "full"

    env_saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "MPLBACKEND")}
    results = []
    with tempfile.TemporaryDirectory(prefix="bgwlab-book-") as tmp:
        os.environ["JUPYTER_PATH"] = str(kernel_home(Path(tmp))) + os.pathsep + os.environ.get("JUPYTER_PATH", "")
        os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend draws the figures
        ex = exporter()
        total = sum(1 for nb in nbs.values() for c in nb.cells if c.cell_type == "code")
        try:
            with tqdm(total=total, unit="cell", desc=f"book ({mode})", dynamic_ncols=True) as bar:
                for i, (src, nb) in enumerate(nbs.items()):
                    bar.set_postfix_str(src.stem)
                    t0 = time.monotonic()
                    ran = []
                    error = execute(nb, timeout, on_cell=lambda cell: (ran.append(1), bar.update(1)))
                    seconds = time.monotonic() - t0
                    bar.update(sum(1 for c in nb.cells if c.cell_type == "code") - len(ran))  # skipped
                    prev = (pages[sources[i - 1]], titles[sources[i - 1]][0]) if i else None
                    nxt = (pages[sources[i + 1]], titles[sources[i + 1]][0]) if i + 1 < len(sources) else None
                    (out / pages[src]).write_text(export_notebook(
                        nb, titles[src][0] or src.stem, nav(prev, nxt, titles[src][0]), ex))
                    if error:
                        tqdm.write(f"{src.name} FAILED:\n{error[-3000:]}", file=sys.stderr)
                    results.append({"name": src.stem, "page": pages[src], "title": titles[src][0],
                                    "question": titles[src][1], "seconds": round(seconds, 2),
                                    "failed": error is not None, **count_outputs(nb)})
        finally:
            for k, v in env_saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    (out / "readme.html").write_text(markdown_page(
        ROOT / "README.md", "bgwlab: README", nav(None, None, "README"), pages))
    (out / "guide.html").write_text(markdown_page(
        NOTEBOOKS / "README.md", "bgwlab: teaching guide", nav(None, None, "Teaching guide"), pages))
    cpus = cpu_info()
    info = {
        "build": {"mode": mode, "machine": platform.node(), "cpu_count": cpus["cpu_count"],
                  "usable_cpus": cpus["usable_cpus"], "loadavg_start": os.getloadavg()[0],
                  "python": platform.python_version(), "commit": git("rev-parse", "HEAD") or "unknown",
                  "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "seconds": round(time.monotonic() - t_start, 1)},
        "notebooks": results,
    }
    (out / "index.html").write_text(index_page(info))
    info["build"]["bytes"] = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    (out / "build-info.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "book")
    ap.add_argument("--quick", action="store_true", help="set BGWLAB_QUICK=1 (small trial counts)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per cell (default 900)")
    ap.add_argument("--only", help="a regular expression: build only the notebooks it matches")
    args = ap.parse_args(argv)
    if args.quick:
        os.environ["BGWLAB_QUICK"] = "1"
    info = build(args.out.resolve(), args.timeout, args.only)
    b = info["build"]
    failed = [n["name"] for n in info["notebooks"] if n["failed"]]
    print(f"book ({b['mode']} mode): {args.out / 'index.html'} -- {len(info['notebooks'])} notebooks, "
          f"{b['bytes'] / 2**20:.1f} MB, {b['seconds']:.0f} s"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
