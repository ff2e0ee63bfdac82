"""README.md and docs/: every relative link and heading anchor resolves; the README stays short."""

import re
from pathlib import Path

import pytest
from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            out.append((n, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text lowercased, punctuation but '-' and '_' removed,
    spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a page; the n-th repeat of a slug gets the suffix -n."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(text):
        m = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        name = base if base not in seen else f"{base}-{seen[base]}"
        seen[base] = seen.get(base, 0) + 1
        out.add(name)
    return out


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of the page's inline links, outside code blocks and code spans."""
    found = []
    for n, line in prose_lines(text):
        for m in LINK.finditer(CODE_SPAN.sub("", line)):
            found.append((n, m.group(1)))
    return found


def broken_links(pages: list[Path]) -> list[str]:
    """'page:line: target (why)' for every relative link or anchor that does not resolve."""
    problems = []
    for page in pages:
        for n, target in links(page.read_text()):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(page.parents[1]) if path else page.name}:{n}: {target}"
            if not dest.exists():
                problems.append(f"{where} (no file {dest})")
            elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest.read_text())):
                problems.append(f"{where} (no heading with anchor #{anchor} in {dest.name})")
    return problems


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Demo (CPU, no data to fetch)", "demo-cpu-no-data-to-fetch"),
        ("Initialisation (`model.init`, `model.pretrained`)",
         "initialisation-modelinit-modelpretrained"),
        ("Fault injection (`make test-faults`)", "fault-injection-make-test-faults"),
        ("DCLS kernel construction against `dcls` 0.1.1 (CPU, C = 768, 26 elements, 23x23)",
         "dcls-kernel-construction-against-dcls-011-cpu-c--768-26-elements-23x23"),
        ("How this differs from the authors' code", "how-this-differs-from-the-authors-code"),
        ("train/: the trainer_loop, d′ × 2 – [see](x.md)", "train-the-trainer_loop-d--2--see"),
    ],
)  # fmt: skip
def test_slug_follows_githubs_rules(heading, anchor):
    assert slug(heading) == anchor


def test_repeated_headings_get_numbered_anchors_and_code_blocks_have_none():
    text = "# Notes\n\n## Notes\n\n```bash\n# not a heading\n```\n\n## Notes\n"
    assert anchors(text) == {"notes", "notes-1", "notes-2"}


def test_broken_links_and_anchors_are_found(tmp_path):
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "a.md"
    (tmp_path / "docs" / "b.md").write_text("# B page\n\n## Part one\n")
    page.write_text(
        "# A\n\n[ok](b.md#part-one) [self](#a) [web](https://example.org/x#y) `[code](nope.md)`\n"
        "[gone](missing.md) [bad anchor](b.md#part-two) [bad self](#b)\n"
        "```\n[in a block](nowhere.md)\n```\n"
    )
    problems = broken_links([page])
    assert len(problems) == 3, problems
    assert "missing.md" in problems[0] and "#part-two" in problems[1] and "#b" in problems[2]


def test_every_relative_link_and_anchor_in_readme_and_docs_resolves():
    assert len(PAGES) > 5
    assert sum(len(links(p.read_text())) for p in PAGES) > 30  # the pages do link each other
    assert broken_links(PAGES) == []


def test_the_readme_stays_the_front_door():
    """Subjects get their own page under docs/, linked from the README, which stays short."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 260
    linked = {Path(t.partition("#")[0]).name for _, t in links(text) if t.startswith("docs/")}
    on_disk = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert on_disk - linked == set(), "link these docs/ pages from the README"
