"""The HTTP edge talks only to the engine: no module under lmeval_trio/http imports the store
or reaches through the supervisor into it, and one helper finds the request's supervisor."""

from __future__ import annotations

import ast
from pathlib import Path

import lmeval_trio.http

HTTP_DIR = Path(lmeval_trio.http.__file__).parent
HTTP_MODULES = sorted(HTTP_DIR.rglob("*.py"))


def _imported(tree: ast.AST) -> set[str]:
    """Every module name an import statement in ``tree`` names (``from a import b``: a, a.b)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _is_store(name: str) -> bool:
    """The store package or anything in it (``lmeval_trio.store.sqlite``, ``.unrecorded``)."""
    return name == "lmeval_trio.store" or name.startswith("lmeval_trio.store.")


def test_the_edge_modules_were_found() -> None:
    assert {"app.py", "jobs.py", "ops.py", "events.py", "params.py"} <= {
        p.name for p in HTTP_MODULES
    }


def test_no_http_module_imports_the_store() -> None:
    offenders = {}
    for path in HTTP_MODULES:
        found = sorted(filter(_is_store, _imported(ast.parse(path.read_text()))))
        if found:
            offenders[str(path.relative_to(HTTP_DIR))] = found
    assert offenders == {}


def test_no_http_module_reaches_into_the_supervisors_store() -> None:
    """``supervisor.store.counts()`` and the like: the read model (supervisor.listing) is
    where the edge reads stored jobs."""
    offenders = [
        f"{path.relative_to(HTTP_DIR)}:{node.lineno}"
        for path in HTTP_MODULES
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "store"
    ]
    assert offenders == []


def test_one_helper_reaches_the_supervisor() -> None:
    """Only params.py looks the supervisor up (app.py, which installs it, sets it)."""
    readers = [
        f"{path.relative_to(HTTP_DIR)}:{node.lineno}"
        for path in HTTP_MODULES
        if path.name not in {"params.py", "app.py"}
        for node in ast.walk(ast.parse(path.read_text()))
        if (isinstance(node, ast.Name) and node.id == "SUPERVISOR_KEY")
        or (isinstance(node, ast.Constant) and node.value == "lmeval_trio.supervisor")
    ]
    assert readers == []


def test_the_checks_see_what_they_look_for() -> None:
    for source, found in (
        ("from lmeval_trio import store", ["lmeval_trio.store"]),
        ("import lmeval_trio.store.sqlite as s", ["lmeval_trio.store.sqlite"]),
        (
            "from lmeval_trio.store.sqlite import JobStore",
            ["lmeval_trio.store.sqlite", "lmeval_trio.store.sqlite.JobStore"],
        ),
    ):
        assert sorted(filter(_is_store, _imported(ast.parse(source)))) == found
    tree = ast.parse("x = sup.store.counts()")
    assert any(isinstance(n, ast.Attribute) and n.attr == "store" for n in ast.walk(tree))


def test_nothing_below_the_edge_imports_it() -> None:
    """The engine, the job model, the store, the runners, the policy, the harness and the
    outputs never import ``lmeval_trio.http`` (strict JSON's ``finite`` lives below both,
    in ``json_values.py``)."""
    package = HTTP_DIR.parent
    below = ("engine", "jobs", "store", "runners", "policy", "harness", "outputs")
    offenders = {}
    for folder in below:
        for path in sorted((package / folder).rglob("*.py")):
            found = sorted(
                name
                for name in _imported(ast.parse(path.read_text()))
                if name == "lmeval_trio.http" or name.startswith("lmeval_trio.http.")
            )
            if found:
                offenders[str(path.relative_to(package))] = found
    assert offenders == {}
