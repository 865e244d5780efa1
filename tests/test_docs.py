"""The docs hold together: every relative link in README.md and docs/ resolves (file and heading), and every shell
block is either run by a test (`bash rehearsed <name>`, tests/test_rehearsal.py) or marked as needing what this
machine does not have (`bash gpu`, `bash paid-api`); README.md's set-up block is what CI itself runs."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELLS = ("bash", "sh", "shell", "console")
MARKS = {"gpu": "needs a GPU node", "paid-api": "needs a paid API key"}
FENCE = re.compile(r"^```(.*?)\n(.*?)^```", flags=re.DOTALL | re.MULTILINE)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text outside fenced blocks and inline code, where a link is a link."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file: lowercase, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#{1,6} (.+)$", FENCE.sub("", path.read_text()), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def rehearsed_names() -> set[str]:
    """The names tests/test_rehearsal.py runs: each `documented_commands("name")` or `rehearse("name", ...)`."""
    source = (REPO / "tests" / "test_rehearsal.py").read_text()
    return set(re.findall(r'(?:documented_commands|rehearse)\("(\w+)"', source))


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(document):
    broken = []
    for target in LINK.findall(prose(document.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor} in {resolved.name}")
    assert broken == [], f"{document.name}: {broken}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / target.partition("#")[0]).resolve() for target in LINK.findall(prose(DOCUMENTS[0].read_text()))}
    assert [page.name for page in DOCUMENTS[1:] if page.resolve() not in linked] == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shell_block_is_rehearsed_or_marked(document):
    known = rehearsed_names()
    problems = []
    for info, body in FENCE.findall(document.read_text()):
        words = info.split()
        if not words:
            if re.search(r"^\s*(cc-train|python|make|sbatch|vllm|accelerate) ", body, flags=re.MULTILINE):
                problems.append(f"an unmarked block of commands: {body.splitlines()[0]}")
            continue
        if words[0] not in SHELLS:
            continue
        mark = words[1:]
        if mark[:1] == ["rehearsed"] and len(mark) == 2 and mark[1] in known:
            continue
        if len(mark) == 1 and mark[0] in MARKS:
            continue
        if document.name == "README.md" and mark == ["setup"]:  # the two set-up commands; CI runs `make test`
            commands = [line.split("#")[0].split() for line in body.splitlines()]
            assert commands == [["make", "demo"], ["make", "test"]], commands
            assert "make test" in (REPO / ".ci" / "run").read_text()
            continue
        problems.append(
            f"```{info}: mark it `bash rehearsed <{'|'.join(sorted(known))}>` (and run it), or one of "
            + ", ".join(f"`bash {m}` ({why})" for m, why in MARKS.items())
        )
    assert problems == [], f"{document.name}: {problems}"


def test_the_readme_stays_short():
    assert len(DOCUMENTS[0].read_text().splitlines()) <= 250
