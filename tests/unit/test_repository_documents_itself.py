"""The repository explains itself: no pointers to files outside it, and the docs/ index is complete.

Someone who clones the repository has only what is in it. So no tracked file may
cite a design document, a section number or an issue number from elsewhere, and
the README must link every page under docs/ (and only pages that exist), the
pages' own links included.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# Built from pieces so that this file does not match its own patterns.
OUTSIDE_POINTERS = {
    "a path to a sibling checkout": re.compile(re.escape(".." + "/shared")),
    "an outside design document": re.compile(re.escape("DESIGN" + ".md")),
    "a section of an outside design document": re.compile("DESIGN" + r"\s*" + "\u00a7"),
    "a section number of a document that is not here": re.compile("\u00a7" + r"\s*\d"),
    "an issue number": re.compile(r"\b" + "issue" + r"\s+#?\d+", re.IGNORECASE),
}
MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    return [ROOT / name for name in names.decode().split("\0") if name]


def text_of(path: Path) -> str | None:
    """The file as text, or None for binary files (and files deleted in the working tree)."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def outside_pointers(text: str) -> list[str]:
    """"line N: <what> (<excerpt>)" for every pointer outside the repository in ``text``."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for what, pattern in OUTSIDE_POINTERS.items():
            if pattern.search(line):
                found.append(f"line {number}: {what} ({line.strip()[:100]})")
                break  # one finding per line is enough to find it
    return found


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(page: Path) -> set[str]:
    return {github_anchor(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


def local_links(page: Path) -> list[tuple[str, Path, str]]:
    """(link as written, target file, anchor) for every relative Markdown link of ``page``."""
    links = []
    for target in MARKDOWN_LINK.findall(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        links.append((target, (page.parent / path).resolve() if path else page, anchor))
    return links


def test_outside_pointers_are_found() -> None:
    """The scanner itself: each kind of pointer is caught, ordinary text is not."""
    samples = ["see " + ".." + "/shared/notes", "DESIGN" + ".md", "DESIGN " + "\u00a7" + "4",
               "columns of " + "\u00a7" + "6", "targets in " + "Issue" + " 4"]
    assert all(outside_pointers(sample) for sample in samples)
    assert outside_pointers("see docs/policy.md; issues/12 on GitHub; design notes") == []


def test_no_tracked_file_points_outside_the_repository() -> None:
    problems = []
    for path in tracked_files():
        text = text_of(path)
        if text is None:
            continue
        problems += [f"{path.relative_to(ROOT)} {hit}" for hit in outside_pointers(text)]
    assert not problems, ("say the fact itself or point at docs/ instead of:\n" + "\n".join(problems))


def test_the_readme_links_every_doc_and_only_docs_that_exist() -> None:
    readme = ROOT / "README.md"
    targets = {path for _, path, _ in local_links(readme)}
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ has no pages"
    unlinked = [page.name for page in pages if page.resolve() not in targets]
    assert not unlinked, f"README.md does not link docs/{', docs/'.join(unlinked)}"


@pytest.mark.parametrize("page", [ROOT / "README.md", *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_every_local_link_resolves(page: Path) -> None:
    broken = []
    for written, target, anchor in local_links(page):
        if not target.exists():
            broken.append(f"{written}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors_of(target):
            broken.append(f"{written}: no heading with anchor #{anchor}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_readme_tour_names_every_tutorial() -> None:
    """Each notebook under notebooks/ (the ones tests/privileged/test_notebooks.py runs) is in the README's tour."""
    tutorials = sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))
    assert tutorials, "notebooks/ has no tutorials"
    readme = (ROOT / "README.md").read_text()
    missing = [path.stem for path in tutorials if f"**{path.stem}**" not in readme]
    assert not missing, f"README.md's tour does not name {', '.join(missing)}"
