"""`make book`: the offline HTML book (scripts/build_book.py), built here in quick mode.

The build runs in a subprocess (it starts a kernel per notebook) into a temp dir, then:
the contents page links every notebook's page, the README and the teaching guide; each
notebook page has its figures embedded as data and no error output; nothing is loaded
from the network (no http(s) URL in a <script src>, <link href>, <img src> or CSS url());
every link inside the book leads to a page of the book.  A fast test checks the export
itself: "check" cells are left out, "solution" cells are folded, widgets become a note.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SCRIPT = ROOT / "scripts" / "build_book.py"

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbconvert")


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_book", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Tags(HTMLParser):
    """Every (tag, attrs) of a page, and the text of its <style> elements."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


def parse(path: Path) -> Tags:
    p = Tags()
    p.feed(path.read_text())
    return p


REMOTE = re.compile(r"^\s*(https?:)?//", re.I)


def offline_violations(path: Path) -> list[str]:
    p = parse(path)
    bad = []
    for tag, attrs in p.tags:
        for attr in {"script": ["src"], "link": ["href"], "img": ["src"], "iframe": ["src"],
                     "source": ["src"], "video": ["src"], "audio": ["src"]}.get(tag, []):
            if REMOTE.match(attrs.get(attr) or ""):
                bad.append(f"<{tag} {attr}={attrs[attr]!r}>")
    for css in p.styles:
        bad += [f"CSS {m}" for m in re.findall(r"url\(\s*['\"]?(?:https?:)?//[^)]*\)|@import[^;]*", css)
                if "//" in m]
    return bad


def embedded_images(path: Path) -> int:
    return sum(1 for tag, attrs in parse(path).tags
               if tag == "img" and (attrs.get("src") or "").startswith("data:image/"))


# -- the export, without a kernel -------------------------------------------------------------

def test_check_cells_hidden_solutions_folded_widgets_noted():
    builder = _load_builder()
    v4 = nbformat.v4
    nb = v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                  "language": "python"}})
    nb.cells = [
        v4.new_markdown_cell("# 99 · A test\n\n> **The question.** Does the export\n> behave?"),
        v4.new_code_cell("answer = 42  # EXERCISE", execution_count=1),
        v4.new_code_cell("answer = 6 * 7  # THE-SOLUTION", execution_count=2,
                         metadata={"tags": ["solution"]}),
        v4.new_code_cell("assert answer == 42  # HIDDEN-CHECK", execution_count=3,
                         metadata={"tags": ["check"]},
                         outputs=[v4.new_output("stream", name="stdout", text="CHECK-OUTPUT\n")]),
        v4.new_code_cell("panel", execution_count=4, outputs=[v4.new_output(
            "display_data", data={"application/vnd.jupyter.widget-view+json":
                                  {"model_id": "abc", "version_major": 2, "version_minor": 0},
                                  "text/plain": "VBox()"})]),
    ]
    assert builder.notebook_title(nb) == ("99 · A test", "Does the export behave?")
    out = builder.export_notebook(nb, "99_test", builder.nav(None, ("next.html", "Next"), "99"))
    assert "EXERCISE" in out
    assert "HIDDEN-CHECK" not in out and "CHECK-OUTPUT" not in out
    solution = re.search(r'<details class="book-solution">.*?</details>', out, re.S)
    assert solution and "THE-SOLUTION" in solution.group(0)
    assert "EXERCISE" not in solution.group(0)
    assert "needs a live kernel" in out and 'href="next.html"' in out
    assert builder.count_outputs(nb) == {"figures": 0, "errors": 0, "widgets": 1}
    # A check that failed is not hidden: its cell and error stay in the page.
    nb.cells[3].outputs = [v4.new_output("error", ename="ClaimFailed", evalue="BROKEN-CLAIM",
                                         traceback=["ClaimFailed: BROKEN-CLAIM"])]
    out = builder.export_notebook(nb, "99_test", "")
    assert "HIDDEN-CHECK" in out and "BROKEN-CLAIM" in out and 'class="book-error"' in out
    assert nb.cells[3].metadata["tags"] == ["check"]  # the notebook itself is not changed


# -- the whole book, quick mode ---------------------------------------------------------------

@pytest.fixture(scope="module")
def book(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    env = {**os.environ, "BGWLAB_QUICK": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1500)
    if proc.returncode != 0:  # the failing notebooks' errors first: the progress bars are long
        errors = re.findall(r"^\S+ FAILED:\n.*?(?=^\S+ FAILED:|^book \(|\Z)", proc.stderr, re.S | re.M)
        pytest.fail(f"build_book failed:\n{proc.stdout[-2000:]}\n" + "\n".join(e[-3000:] for e in errors)
                    + f"\n--- end of stderr:\n{proc.stderr[-2000:]}")
    return out, json.loads((out / "build-info.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(1600)
def test_index_links_every_notebook_readme_and_guide(book):
    out, info = book
    assert info["build"]["mode"] == "quick"
    links = {attrs.get("href") for tag, attrs in parse(out / "index.html").tags if tag == "a"}
    expected = {p.stem + ".html" for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")}
    assert len(expected) >= 11
    assert expected | {"readme.html", "guide.html"} <= links
    assert {n["page"] for n in info["notebooks"]} == expected
    for name in expected | {"readme.html", "guide.html"}:
        assert (out / name).stat().st_size > 1000, name
    guide = (out / "guide.html").read_text()
    assert "Glossary" in guide and "90-minute" in guide


@pytest.mark.slow
@pytest.mark.timeout(1600)
def test_each_notebook_page_has_its_figures_and_no_errors(book):
    out, info = book
    for nb in info["notebooks"]:
        page = out / nb["page"]
        text = page.read_text()
        assert not nb["failed"] and nb["errors"] == 0, nb
        assert 'class="book-error"' not in text, f"{page.name} shows an error output"
        # (no text search for "Traceback": notebook 11 prints a worker's traceback on
        # purpose -- PostgreSQL's error queue; error outputs are what the two checks above count)
        # Every figure the executed notebook drew is in the page, as data.
        assert embedded_images(page) == nb["figures"], (page.name, nb)
        assert nb["figures"] >= 1 or nb["widgets"] >= 1, f"{page.name}: no figure, no widget"
        if nb["widgets"]:
            assert "needs a live kernel" in text


@pytest.mark.slow
@pytest.mark.timeout(1600)
def test_offline_and_links_stay_inside_the_book(book):
    out, _ = book
    pages = sorted(out.glob("*.html"))
    for page in pages:
        assert not offline_violations(page), (page.name, offline_violations(page))
        for tag, attrs in parse(page).tags:
            href = attrs.get("href") or ""
            if tag == "a" and href and not re.match(r"^(https?:|mailto:|#)", href):
                assert (out / href.split("#")[0]).is_file(), (page.name, href)
    # The README's figure is embedded, not linked.
    assert embedded_images(out / "readme.html") >= 1


def test_the_offline_check_catches_a_cdn(tmp_path):
    page = tmp_path / "p.html"
    page.write_text('<html><head><script src="https://cdn.example/require.js"></script>'
                    '<link rel="stylesheet" href="//fonts.example/css">'
                    '<style>@import url("https://x.example/a.css"); body{}</style></head>'
                    '<body><img src="data:image/png;base64,AAAA"></body></html>')
    assert len(offline_violations(page)) == 3
    assert embedded_images(page) == 1
