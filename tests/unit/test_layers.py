"""The import layering of docs/architecture.md's package table, held against the code.

The table is the rule: one row per package under ``service/octosts``, its layer, and the
packages of ours it may import (in backticks), all from lower layers. Every import counts, also
one inside a function or under ``TYPE_CHECKING``: a lazy import from a higher layer is still the
lower one depending on it.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "service" / "octosts"
ARCHITECTURE = REPO / "docs" / "architecture.md"
TABLE_HEADER = "| Layer | Package | Role | May import |"
OURS = re.compile(r"`(octosts\.\w+)`")


@dataclass(frozen=True, slots=True)
class Row:
    layer: int
    package: str
    may_import: frozenset[str]


def _table() -> dict[str, Row]:
    lines = ARCHITECTURE.read_text(encoding="utf-8").splitlines()
    start = lines.index(TABLE_HEADER) + 2  # past the header and its |---| line
    rows: dict[str, Row] = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        layer, package, _role, may_import = (cell.strip() for cell in line.strip("|").split("|"))
        name = package.strip("`")
        rows[name] = Row(int(layer), name, frozenset(OURS.findall(may_import)))
    return rows


def _packages() -> set[str]:
    """``octosts.x`` for every package and top-level module (the root ``__init__`` aside)."""
    found = {f"octosts.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    found |= {f"octosts.{p.stem}" for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(source: str, module: str, *, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute name) of every import in ``source``, relative ones resolved.

    ``from a import b`` yields ``a.b``: ``from octosts import app`` imports the module.
    """
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = [node.module] if node.module else []
            if node.level:
                base = here[: len(here) - node.level + 1] + base
            for alias in node.names:
                yield node.lineno, ".".join([*base, alias.name])


def _imports_of(path: Path) -> Iterator[tuple[int, str]]:
    source = path.read_text(encoding="utf-8")
    return _imports(source, _module_name(path), is_package=path.name == "__init__.py")


def _owner(module: str) -> str | None:
    """The table's package for a module of ours: ``octosts.adapters`` for ``….adapters.oidc``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "octosts" and len(parts) > 1 else None


def _sources() -> list[Path]:
    """Every hand-written module but the root ``__init__`` (a docstring and the version)."""
    return sorted(
        p
        for p in PACKAGE.rglob("*.py")
        if "_gen" not in p.relative_to(PACKAGE).parts and p != PACKAGE / "__init__.py"
    )


def test_every_package_has_a_row_and_every_row_a_package() -> None:
    assert set(_table()) == _packages()


def test_a_package_may_import_only_from_lower_layers() -> None:
    table = _table()
    upward = [
        f"{row.package} (layer {row.layer}) lists {name}"
        for row in table.values()
        for name in sorted(row.may_import)
        if name not in table or table[name].layer >= row.layer
    ]
    assert not upward


def test_imports_of_our_packages_are_the_ones_the_table_allows() -> None:
    table = _table()
    unlisted = []
    for path in _sources():
        owner = _owner(_module_name(path))
        assert owner is not None
        for line, imported in _imports_of(path):
            target = _owner(imported)
            if target is not None and target != owner and target not in table[owner].may_import:
                unlisted.append(f"{path.relative_to(REPO)}:{line} imports {imported}")
    assert not unlisted


def test_the_import_reader_resolves_lazy_relative_imports() -> None:
    # The check above is only as good as this reader: an import two levels up, inside a
    # function, must name the package it reaches.
    source = "def late():\n    from ..transport import errors\n    from . import cache\n"
    found = list(_imports(source, "octosts.adapters.oidc", is_package=False))
    assert found == [(2, "octosts.transport.errors"), (3, "octosts.adapters.cache")]
    assert {_owner(name) for _, name in found} == {"octosts.transport", "octosts.adapters"}


def _foreign(path: Path) -> set[str]:
    """What ``path`` imports from outside the standard library and this package."""
    return {
        name
        for _, name in _imports_of(path)
        if name.split(".")[0] not in {*sys.stdlib_module_names, "octosts", "__future__"}
    }


def test_the_domain_imports_nothing_but_the_standard_library_and_re2() -> None:
    found = {
        f"{path.relative_to(REPO)}: {name}"
        for path in sorted((PACKAGE / "domain").rglob("*.py"))
        for name in _foreign(path)
        if name.split(".")[0] != "re2"
    }
    assert not found


@pytest.mark.parametrize("library", ["grpc", "google.protobuf"])
def test_grpc_stays_in_transport_the_client_and_the_dev_stack(library: str) -> None:
    allowed = {"octosts.transport", "octosts.client", "octosts.dev"}
    found = {
        str(path.relative_to(REPO))
        for path in _sources()
        if _owner(_module_name(path)) not in allowed
        and any(name == library or name.startswith(f"{library}.") for name in _foreign(path))
    }
    assert not found
