"""The documentation: README.md and docs/*.md link only to files and headings that exist, the
README stays a first read (at most 300 lines, the two set-up commands shown), and no page speaks
of who worked when ("this session", "an earlier session", ...)."""
import glob
import os
import re
import unicodedata

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
README_MAX_LINES = 300

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)   # fenced code blocks
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)            # `inline code`, ``with ` inside``
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)=\"([^\"]+)\"", re.I)
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.M)
HTML_ANCHOR = re.compile(r"<a\b[^>]*?\b(?:name|id)=\"([^\"]+)\"", re.I)
SESSION_TALK = re.compile(r"\b(?:this|that|an? earlier|earlier|previous|later|the same|one|each) session\b"
                          r"|\bsession['’]s\b|\bsession time\b", re.I)


def prose(text: str) -> str:
    """The text a reader sees as prose: fenced code blocks and inline code removed."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    """Every link and image target in a Markdown text, outside code."""
    text = prose(text)
    return INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text) + HTML_LINK.findall(text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, inline markup and punctuation dropped, spaces
    as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # a link in a heading: its text
    text = text.replace("`", "").strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors a Markdown page offers: its headings' slugs (repeats get -1, -2, ...) and
    explicit <a name/id> anchors."""
    found, seen = set(), {}
    for heading in HEADING.findall(FENCE.sub("", text)):
        s = slug(heading)
        found.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return found | set(HTML_ANCHOR.findall(text))


def broken_links(page: str) -> list[str]:
    """The relative links of a page whose file (or heading anchor) does not exist."""
    text = open(page, encoding="utf-8").read()
    bad = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):   # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        file = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(file):
            bad.append(f"{target} (no file {os.path.relpath(file, ROOT)})")
        elif anchor and file.endswith(".md") and anchor.lower() not in anchors(open(file, encoding="utf-8").read()):
            bad.append(f"{target} (no heading #{anchor} in {os.path.relpath(file, ROOT)})")
    return bad


def test_there_are_pages_to_check():
    names = [os.path.relpath(p, ROOT) for p in PAGES]
    assert "README.md" in names and os.path.join("docs", "README.md") in names, names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_and_image_resolves(page):
    bad = broken_links(page)
    assert not bad, f"{os.path.relpath(page, ROOT)} links to what does not exist: {bad}"


def test_the_link_check_finds_a_broken_file_and_a_broken_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section: with `code`, commas\n")
    (tmp_path / "pic.png").write_bytes(b"")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n"
                    "[fine](other.md) [fine](other.md#a-section-with-code-commas) [fine](#page)\n"
                    "![fine](pic.png) [web](https://example.org/missing.md)\n"
                    "`[in code](gone.md)`\n\n```\n[in a block](gone.md)\n```\n"
                    "[gone](gone.md) ![gone](gone.png) [bad anchor](other.md#no-such-heading) [bad](#nowhere)\n")
    bad = broken_links(str(page))
    assert [b.split(" ")[0] for b in bad] == ["gone.md", "gone.png", "other.md#no-such-heading", "#nowhere"]


def test_headings_become_githubs_anchors():
    text = "# Results\n\n## The CPU config, linear KL warm-up, 10 epochs\n## DialogWAE's protocol\n" \
           "### Training speed: `make bench`\n## Results\n"
    assert anchors(text) == {"results", "the-cpu-config-linear-kl-warm-up-10-epochs", "dialogwaes-protocol",
                             "training-speed-make-bench", "results-1"}


def test_the_readme_is_a_first_read_with_the_two_setup_commands():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    lines = text.count("\n") + (not text.endswith("\n"))
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"
    assert "make train DATA=dailydialog" in text and re.search(r"^make test\b", text, re.M)
    assert "docs/README.md" in links(text)   # the index of the other pages is linked


def test_docs_index_lists_every_page():
    index = open(os.path.join(ROOT, "docs", "README.md"), encoding="utf-8").read()
    listed = {os.path.normpath(t.partition("#")[0]) for t in links(index)}
    pages = {os.path.basename(p) for p in PAGES if os.path.dirname(p).endswith("docs")} - {"README.md"}
    assert pages - listed == set(), "pages missing from docs/README.md"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_no_page_speaks_of_sessions(page):
    text = open(page, encoding="utf-8").read()
    said = [m.group(0) for m in SESSION_TALK.finditer(text)]
    assert said == [], f"{os.path.relpath(page, ROOT)} says {said}: say what was measured, when and how"


def test_the_session_check_catches_the_phrasings():
    for bad in ["measured by an earlier session", "This session's CPU-config VHRED", "for lack of session time",
                "that session's defaults", "in a later session", "the previous session"]:
        assert SESSION_TALK.search(bad), bad
    assert not SESSION_TALK.search('a pytest fixture with scope="module"; sessions of users')
