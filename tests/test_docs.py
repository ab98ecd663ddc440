"""The documentation the code cites exists in the repository: every ``docs/...md`` a docstring, comment or
the README names is there, with the section it names, and the Markdown links between the pages resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SOURCES = sorted({*ROOT.glob("textsr/**/*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("tests/*.py"),
                  ROOT / "README.md", ROOT / "CHANGELOG.md", *DOCS.glob("*.md")} - {Path(__file__).resolve()})
# `docs/method.md, "Section"` or `docs/method.md ("Section")`, as the docstrings cite sections
CITATION = re.compile(r'docs/([\w-]+\.md)(?:,\s*|\s*\(\s*)"([^"]+)"')
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
            if (DOCS / name).is_file() and section not in headings(DOCS / name):
                missing.append(f"{p.relative_to(ROOT)} cites docs/{name}, section {section!r}")
    assert cited >= 10  # the docstrings do cite sections: the pattern still matches them
    assert not missing, missing


def test_file_paths_in_the_docs_exist():
    pages = [*DOCS.glob("*.md"), ROOT / "README.md", ROOT / "CHANGELOG.md"]
    missing = [f"{p.name}: {m}" for p in pages
               for m in re.findall(r"\b((?:textsr|tests|bench)/[\w/]+\.py)\b", p.read_text())
               if not (ROOT / m).is_file()]
    assert not missing, missing


@pytest.mark.parametrize("page", sorted([*DOCS.glob("*.md"), ROOT / "README.md"]), ids=lambda p: p.name)
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
