"""Every error class smolbox constructs is raised by at least one test.

An AST scan of ``smolbox/`` finds each catalogue class the code constructs (``raise
errors.X(...)``, ``return errors.X(...)`` for errors raised by the caller); a scan of
``tests/`` finds the classes tests expect (``pytest.raises(X)``, ``isinstance(e, X)``,
``type(e) is X``) or whose wire code they assert. The coverage itself lives in those
tests; this only shows it is complete, and the gaps still open are named here so a
new untested raise site, or a gap closed without updating the list, fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

from smolbox import errors

ROOT = Path(__file__).resolve().parents[2]

#: classes constructed in smolbox/ that no test raises yet (why, in a word each)
KNOWN_GAPS: dict[str, str] = {}


def _catalogue() -> dict[str, type[errors.SmolboxError]]:
    return {name: obj for name, obj in vars(errors).items()
            if isinstance(obj, type) and issubclass(obj, errors.SmolboxError)}


def _name_of(node: ast.expr) -> str | None:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def constructed_in_code() -> dict[str, list[str]]:
    """Catalogue class -> places in smolbox/ that construct it (``file:line``)."""
    catalogue = _catalogue()
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "smolbox").rglob("*.py")):
        if path.name == "errors.py" and path.parent.name == "smolbox":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                name = _name_of(node.func)
                if name in catalogue:
                    cls = catalogue[name].__name__  # aliases count as their class
                    found.setdefault(cls, []).append(
                        f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def expected_by_tests() -> set[str]:
    """Catalogue classes tests expect, by class or by wire code."""
    catalogue = _catalogue()
    by_code = {cls.code: cls.__name__ for cls in catalogue.values()}
    seen: set[str] = set()
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[ast.expr] = []
            if isinstance(node, ast.Call):
                func = _name_of(node.func)
                if func == "raises" and node.args:
                    names.append(node.args[0])
                elif func == "isinstance" and len(node.args) == 2:
                    names.append(node.args[1])
            elif isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.Is):
                names.extend(node.comparators)
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and node.value in by_code):
                seen.add(by_code[node.value])
            for expr in names:
                items = expr.elts if isinstance(expr, ast.Tuple) else [expr]
                for item in items:
                    name = _name_of(item)
                    if name in catalogue:
                        seen.add(catalogue[name].__name__)
    return seen


def test_every_error_the_code_raises_is_raised_by_a_test() -> None:
    constructed = constructed_in_code()
    expected = expected_by_tests()
    untested = {cls: sites for cls, sites in constructed.items()
                if cls not in expected and cls not in KNOWN_GAPS}
    assert not untested, f"error classes no test raises: {untested}"


def test_the_list_of_known_gaps_is_current() -> None:
    closed = {cls for cls in KNOWN_GAPS if cls in expected_by_tests()}
    assert not closed, f"these gaps are covered now; drop them from KNOWN_GAPS: {closed}"
    gone = {cls for cls in KNOWN_GAPS if cls not in constructed_in_code()}
    assert not gone, f"nothing raises these any more: {gone}"


def test_the_scan_sees_raise_sites_and_expectations() -> None:
    """The scanners themselves work (so an empty result cannot pass silently)."""
    constructed = constructed_in_code()
    assert "VMNotFoundError" in constructed and len(constructed) > 30
    assert "SpawnError" in expected_by_tests()
