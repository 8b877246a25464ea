"""The documentation stays true to the code: the generated step table is current, every
relative link in README.md and docs/*.md points at something that exists, and README.md
stays short and keeps the commands a fresh machine runs."""

import glob
import importlib.util
import os
import re

import pytest

from mistral_sandbox.runner.steps import markdown_table

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(ROOT, "README.md")
ISOLATION_MD = os.path.join(ROOT, "docs", "isolation.md")
PAGES = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))

FENCE_RE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN_RE = re.compile(r"`[^`\n]*`")
LINK_RE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
HEADING_RE = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _update_docs():
    path = os.path.join(ROOT, "scripts", "update_docs.py")
    spec = importlib.util.spec_from_file_location("update_docs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prose(text):
    """``text`` without fenced code blocks and code spans (no links in there)."""
    return CODE_SPAN_RE.sub("", FENCE_RE.sub("", text))


def _slug(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path):
    return {_slug(h) for h in HEADING_RE.findall(FENCE_RE.sub("", _read(path)))}


def _links(path):
    return LINK_RE.findall(_prose(_read(path)))


# ------------------------------------------------------------------ the step table

def test_the_step_table_is_the_declared_one():
    text = _read(ISOLATION_MD)
    assert _update_docs().block(text) == markdown_table(), \
        "docs/isolation.md's step table is stale: run python scripts/update_docs.py"


def test_update_docs_is_idempotent_on_the_committed_page():
    update_docs = _update_docs()
    text = _read(ISOLATION_MD)
    once = update_docs.render(text, markdown_table())
    assert once == text
    assert update_docs.render(once, markdown_table()) == once


def test_update_docs_check_fails_on_a_stale_table_and_the_rewrite_fixes_it(tmp_path):
    update_docs = _update_docs()
    stale = _read(ISOLATION_MD).replace("| `seccomp` | required |", "| `seccomp` | off |")
    page = tmp_path / "isolation.md"
    page.write_text(stale, encoding="utf-8")
    assert update_docs.main(["--check", "--file", str(page)]) == 1
    assert page.read_text(encoding="utf-8") == stale  # --check changes nothing
    assert update_docs.main(["--file", str(page)]) == 0
    assert page.read_text(encoding="utf-8") == _read(ISOLATION_MD)
    assert update_docs.main(["--check", "--file", str(page)]) == 0


def test_update_docs_refuses_a_page_without_markers(tmp_path):
    page = tmp_path / "isolation.md"
    page.write_text("# Isolation\n\nno table here\n", encoding="utf-8")
    assert _update_docs().main(["--check", "--file", str(page)]) == 2


# ------------------------------------------------------------------ links

@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_resolves(page):
    broken = []
    for target in _links(page):
        if SCHEME_RE.match(target):
            continue  # http(s), mailto: not checked here
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path \
            else page
        if not os.path.exists(resolved):
            broken.append("%s (no such file)" % target)
        elif anchor and resolved.endswith(".md") and anchor not in _anchors(resolved):
            broken.append("%s (no such heading)" % target)
    where = os.path.relpath(page, ROOT)
    assert not broken, "broken links in %s: %s" % (where, ", ".join(broken))


def test_the_link_checker_sees_links():
    # guard against a regex that silently matches nothing
    assert "limits-and-outcomes.md" in _links(ISOLATION_MD)
    assert _slug("`mistral-sandbox check`") == "mistral-sandbox-check"
    assert _slug("Shared namespaces, and why they are (mostly) safe") == \
        "shared-namespaces-and-why-they-are-mostly-safe"


# ------------------------------------------------------------------ README.md

README_MAX_LINES = 160
# what a fresh machine runs (the second is what .ci/run runs): they must stay as they are
COMMANDS = (
    "python3 -m venv .venv && .venv/bin/pip install . && "
    ".venv/bin/mistral-sandbox run std.echo --param output=hello",
    "bash scripts/test.sh",
)


def test_the_readme_stays_short():
    lines = _read(README).count("\n")
    assert lines < README_MAX_LINES, \
        "README.md has %d lines: move the details to docs/" % lines


def test_the_readme_keeps_the_two_commands():
    lines = [line.strip() for line in _read(README).splitlines()]
    for command in COMMANDS:
        assert command in lines, "README.md lost the command %r" % command
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        assert COMMANDS[1] in f.read()


def test_every_docs_page_is_linked_from_the_readme():
    linked = {os.path.normpath(os.path.join(ROOT, t.partition("#")[0]))
              for t in _links(README)}
    missing = [os.path.relpath(p, ROOT) for p in PAGES[1:] if p not in linked]
    assert not missing, "README.md does not link %s" % ", ".join(missing)
