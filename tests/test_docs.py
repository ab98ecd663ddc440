"""The documentation the code cites exists in the repository: every ``docs/...md`` (and bench/README.md) a
docstring, comment or page names is there, with the section it names, and the Markdown links between the
pages resolve.  The README stays the door (issue 19 item 6): at most 300 lines, every page linked from it
or from a page it links."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BENCH = ROOT / "bench" / "README.md"
PAGES = sorted([*DOCS.glob("*.md"), ROOT / "README.md", BENCH])
SOURCES = sorted({*ROOT.glob("textsr/**/*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("tests/*.py"),
                  ROOT / "CHANGELOG.md", *PAGES} - {Path(__file__).resolve()})
# `docs/method.md, "Section"` or `docs/method.md ("Section")` (or bench/README.md), as the docstrings cite sections
CITATION = re.compile(r'((?:docs/[\w-]+|bench/README)\.md)(?:,\s*|\s*\(\s*)"([^"]+)"')
MD_LINK = re.compile(r"\]\(([^)\s]+?\.md)?(#[\w-]+)?\)")


def headings(path: Path) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^#{1,6}\s+(.+)$", path.read_text(), re.M)]


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_no_references_to_files_outside_the_repository():
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in SOURCES
           for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"ALGORITHMS|ENVIRONMENT\b", line)]
    assert not bad, f"references to documents that are not in the repository: {bad}"


def test_cited_docs_and_sections_exist():
    cited, missing = 0, []
    for p in SOURCES:
        text = p.read_text()
        for name in set(re.findall(r"docs/([\w-]+\.md)", text)):
            if not (DOCS / name).is_file():
                missing.append(f"{p.relative_to(ROOT)} cites docs/{name}")
        for name, section in CITATION.findall(text):
            cited += 1
            if (ROOT / name).is_file() and section not in headings(ROOT / name):
                missing.append(f"{p.relative_to(ROOT)} cites {name}, section {section!r}")
    assert cited >= 10  # the docstrings do cite sections: the pattern still matches them
    assert not missing, missing


def test_file_paths_in_the_docs_exist():
    missing = [f"{p.name}: {m}" for p in [*PAGES, ROOT / "CHANGELOG.md"]
               for m in re.findall(r"\b((?:textsr|tests|bench)/[\w/]+\.py)\b", p.read_text())
               if not (ROOT / m).is_file()]
    assert not missing, missing


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_links_resolve(page):
    bad = []
    for target, frag in MD_LINK.findall(page.read_text()):
        if target.startswith(("http:", "https:")):
            continue
        dest = (page.parent / target) if target else page
        if not dest.is_file():
            bad.append(target)
        elif frag and frag[1:] not in {anchor(h) for h in headings(dest)}:
            bad.append(f"{target}{frag}")
    assert not bad, f"{page.name}: broken links {bad}"


def test_anchor_follows_github_rules():
    assert anchor("Starting from N(0, I) when the data are far from zero") == \
        "starting-from-n0-i-when-the-data-are-far-from-zero"
    assert anchor("LR-PSNR above the exact posterior's") == "lr-psnr-above-the-exact-posteriors"


def test_the_readme_is_the_door():
    """At most 300 lines: what textsr is, the quick start, a first GPU run, which model for what,
    troubleshooting; everything else one link away."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    for heading in ("Quick start", "A first GPU run", "Which model for what", "Troubleshooting"):
        assert heading in headings(ROOT / "README.md")
    assert "## Benchmarks" not in text and "### results.json" not in text


def test_every_page_is_reachable_from_the_readme():
    reached, todo = set(), [ROOT / "README.md"]
    while todo:
        page = todo.pop()
        for target, _ in MD_LINK.findall(page.read_text()):
            if target and not target.startswith(("http:", "https:")):
                dest = (page.parent / target).resolve()
                if dest.is_file() and dest not in reached:
                    reached.add(dest)
                    todo.append(dest)
    assert not [p.name for p in PAGES if p.resolve() not in reached | {(ROOT / "README.md").resolve()}]
