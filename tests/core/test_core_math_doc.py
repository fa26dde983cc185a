"""Every citation of docs/math.md resolves: ``docs/math.md §N`` names a section heading, and the Eq.,
Theorem, Table and Algorithm numbers cited after it on the same line are numbered in one of the cited
sections. Every ``Eq. X.Y`` / ``Theorem X.Y`` anywhere in src/, tests/, docs/ and README.md is numbered
in docs/math.md, every link into docs/math.md lands on a heading, and the retired name of the math
note is cited nowhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MATH = ROOT / "docs" / "math.md"
THIS = Path(__file__).resolve()
RETIRED = "di-star-" + "math.md"  # the name citations used before docs/math.md existed

SECTION_HEADING = re.compile(r"^#{2,}\s+§(\d+)\s")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
DISPLAY_TAG = re.compile(r"\s{2,}\((\d+\.\d+)\)\s*$")  # a display line ending in its equation number
BOLD_LABEL = re.compile(r"\*\*((?:Theorem \d+\.\d+)|(?:Algorithm \d+)|(?:Table \d+))\*\*")
CITATION = re.compile(r"docs/math\.md(?![\])#])")  # not a link to the whole page: a citation, which names §N
SECTION_REF = re.compile(r"§(\d+)(?:\s*[-–]\s*§?(\d+))?")
NUMBER = r"\(?(\d+\.\d+)\)?"
EQ_REF = re.compile(rf"\b(?:Eqs?\.|Equations?)\s*{NUMBER}((?:\s*(?:,|and|[-–])\s*{NUMBER})*)")
THEOREM_REF = re.compile(r"\b(?:Theorem|Thm\.?)\s*(\d+\.\d+)")
OTHER_REF = re.compile(r"\b(Table|Algorithm)\s+(\d+)\b")
MATH_LINK = re.compile(r"\]\(([^)\s#]*math\.md)?(#[^)\s]*)?\)")


@dataclass
class MathDoc:
    """The sections of docs/math.md, the labels numbered in each, and its heading anchors."""

    sections: dict[int, set[str]] = field(default_factory=dict)
    anchors: set[str] = field(default_factory=set)

    def where(self, label: str) -> set[int]:
        return {number for number, labels in self.sections.items() if label in labels}


def slug(heading: str) -> str:
    """The anchor a Markdown renderer (GitHub's rule) gives a heading."""
    text = re.sub(r"[`*_\\]", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def parse_math(text: str) -> MathDoc:
    doc, current, fenced = MathDoc(), None, False
    defined: list[str] = []
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced and (heading := HEADING.match(line)):
            doc.anchors.add(slug(heading.group(1)))
            if section := SECTION_HEADING.match(line):
                current = int(section.group(1))
                assert current not in doc.sections, f"docs/math.md: §{current} heads two sections"
                doc.sections[current] = set()
            continue
        if current is None:
            continue
        labels = BOLD_LABEL.findall(line)
        if fenced and (tag := DISPLAY_TAG.search(line)):
            labels.append(f"Eq. {tag.group(1)}")
        doc.sections[current].update(labels)
        defined += labels
    twice = sorted({label for label in defined if defined.count(label) > 1})
    assert not twice, f"docs/math.md numbers these more than once: {twice}"
    return doc


def cited_labels(text: str) -> list[str]:
    """Eq./Theorem/Table/Algorithm numbers cited in ``text``, e.g. ["Eq. 3.6", "Eq. 3.7", "Theorem 3.2"]."""
    labels = []
    for match in EQ_REF.finditer(text):
        labels += [f"Eq. {match.group(1)}"] + [f"Eq. {n}" for n in re.findall(r"\d+\.\d+", match.group(2))]
    labels += [f"Theorem {n}" for n in THEOREM_REF.findall(text)]
    labels += [f"{kind} {n}" for kind, n in OTHER_REF.findall(text)]
    return labels


def cited_sections(text: str) -> set[int]:
    sections: set[int] = set()
    for first, last in SECTION_REF.findall(text):
        sections.update(range(int(first), int(last or first) + 1))
    return sections


def citation_errors(line: str, doc: MathDoc) -> list[str]:
    """What does not resolve among the docs/math.md citations of one line ([] when all do)."""
    errors = []
    for match in CITATION.finditer(line):
        rest = line[match.end() :]
        sections = cited_sections(rest) if re.match(r"`*\s*§", rest) else set()
        missing = sorted(sections - doc.sections.keys())
        if not sections or missing:
            errors.append(f"no section {missing or rest[:12]!r} in docs/math.md")
            continue
        for label in cited_labels(rest):
            where = doc.where(label)
            if not where & sections:
                errors.append(f"{label} is in §{sorted(where)} of docs/math.md, not in the cited §{sorted(sections)}")
    return errors


def repo_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in ("src", "tests", "docs"):
        files += sorted(p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".md", ".yaml"} and p.is_file())
    return [p for p in files if p.resolve() != THIS]


@pytest.fixture(scope="module")
def doc() -> MathDoc:
    return parse_math(MATH.read_text())


@pytest.fixture(scope="module")
def lines() -> list[tuple[str, int, str]]:
    return [
        (str(path.relative_to(ROOT)), number, line)
        for path in repo_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
    ]


def test_math_doc_has_the_cited_sections_and_labels(doc: MathDoc):
    assert sorted(doc.sections) == list(range(len(doc.sections))), "sections must be §0, §1, … in order"
    for label in ("Eq. 2.1", "Eq. 2.2", "Eq. 3.4", "Eq. 3.8", "Theorem 3.1", "Theorem 3.2", "Algorithm 1", "Table 2"):
        assert doc.where(label), f"docs/math.md does not number {label}"


def test_every_citation_resolves(doc: MathDoc, lines):
    citations = [(path, n, line) for path, n, line in lines if path != "docs/math.md" and CITATION.search(line)]
    assert len({path for path, _, _ in citations}) >= 10, "expected the modules of src/distar to cite docs/math.md"
    errors = [f"{path}:{n}: {e}" for path, n, line in citations for e in citation_errors(line, doc)]
    assert not errors, "\n".join(errors)


def test_every_equation_and_theorem_number_is_in_the_math_doc(doc: MathDoc, lines):
    numbered = {label for labels in doc.sections.values() for label in labels}
    errors = [
        f"{path}:{n}: {label}"
        for path, n, line in lines
        for label in cited_labels(line)
        if label.startswith(("Eq.", "Theorem")) and label not in numbered
    ]
    assert not errors, "not numbered in docs/math.md:\n" + "\n".join(errors)


def test_links_into_the_math_doc_land_on_a_heading(doc: MathDoc, lines):
    errors = []
    for path, n, line in lines:
        if not path.endswith(".md"):
            continue
        for target, anchor in MATH_LINK.findall(line):
            if target and (ROOT / path).parent.joinpath(target).resolve() != MATH:
                continue
            if not target and path != "docs/math.md":
                continue
            if anchor and anchor[1:] not in doc.anchors:
                errors.append(f"{path}:{n}: {target}{anchor}")
    assert not errors, "links to no heading of docs/math.md:\n" + "\n".join(errors)


def test_the_retired_math_note_is_not_cited(lines):
    stale = [f"{path}:{n}" for path, n, line in lines if RETIRED in line]
    assert not stale, f"{RETIRED} is cited in " + ", ".join(stale)


@pytest.mark.parametrize(
    "line, resolves",
    [
        ("x_t = α_t x0 + σ_t ε (docs/math.md §1, Eq. 2.1)", True),
        ("(docs/math.md §3-§6): Theorem 3.1, the implicit CFG reward of Theorem 3.2", True),
        ("(docs/math.md §3 Eq. 3.2, §4 Eq. 3.8, §6)", True),
        ("see [docs/math.md §7](math.md#7-algorithm-1)", True),
        ("(docs/math.md §42)", False),
        ("(docs/math.md §1, Eq. 3.4)", False),
        ("(docs/math.md §5, Eq. 3.6-3.9)", False),
        ("(docs/math.md §4, Theorem 3.2)", False),
        ("(docs/math.md §7, Table 2)", False),
        ("(docs/math.md Eq. 2.1)", False),
    ],
)
def test_the_checker_tells_good_citations_from_bad(doc: MathDoc, line: str, resolves: bool):
    assert (citation_errors(line, doc) == []) is resolves
