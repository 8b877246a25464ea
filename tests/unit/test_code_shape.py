"""The code stays in rooms a newcomer can live in: no class over 300 lines and no
function over 60 in ``mistral_sandbox/`` (the C helper aside)."""

import ast
import pathlib

import mistral_sandbox

PACKAGE = pathlib.Path(mistral_sandbox.__file__).parent
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60


def _oversized():
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                limit = MAX_CLASS_LINES
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                limit = MAX_FUNCTION_LINES
            else:
                continue
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                out.append("%s:%d %s is %d lines (at most %d)"
                           % (path.relative_to(PACKAGE.parent), node.lineno, node.name, lines,
                              limit))
    return out


def test_no_class_or_function_is_too_long():
    assert _oversized() == []


def test_the_check_sees_every_module():
    # (an empty walk would pass the test above for nothing)
    modules = {p.name for p in PACKAGE.rglob("*.py")}
    assert {"sandbox.py", "engine.py", "zygote.py", "child.py", "isolation.py"} <= modules
