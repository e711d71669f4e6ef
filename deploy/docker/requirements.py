"""The requirements of an image build, for ``--build-arg EXTRAS=...``: checked, then printed.

    requirements.py pyproject.toml aws,gcp > requirements.txt   # exit 0; 1 naming unknown extras

The Dockerfile installs these in a layer of their own, before copying the service's code, so a
change to the code reuses the installed dependencies (the layer cache) and only the package
itself is installed again (``pip install --no-deps .``). pyproject.toml stays the one home of the
dependencies: this prints its ``dependencies`` and those of each named extra, a reference to the
project itself (``octo-sts[aws,gcp]`` in ``dev``) expanded in place.

pip only warns about an unknown extra ("does not provide the extra"), so a typo in EXTRAS would
build an image without the KMS client its deployment expects, found out at the first exchange:
an unknown name stops the build before the (slow) install. Standard library only.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Any

# The distribution name and extras at the start of a requirement (PEP 508).
_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(extras: str) -> list[str]:
    return [name.strip() for name in extras.split(",") if name.strip()]


def unknown_extras(pyproject: Path, extras: str) -> tuple[list[str], list[str]]:
    """(the names in comma-separated ``extras`` the project lacks, the ones it has)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    known = sorted(project.get("optional-dependencies", {}))
    return [name for name in _names(extras) if name not in known], known


def requirements(pyproject: Path, extras: str) -> list[str]:
    """The project's dependencies and those of ``extras``, in order, each once."""
    project: dict[str, Any] = tomllib.loads(pyproject.read_text())["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    itself = _canonical(project["name"])
    result: list[str] = []
    seen_extras: set[str] = set()

    def add(lines: list[str]) -> None:
        for line in lines:
            match = _NAME.match(line)
            if match is not None and _canonical(match.group(1)) == itself:
                add_extras(_names(match.group(2) or ""))
            elif line not in result:
                result.append(line)

    def add_extras(names: list[str]) -> None:
        for name in names:
            if name not in seen_extras:
                seen_extras.add(name)
                add(optional[name])

    add(project.get("dependencies", []))
    add_extras(_names(extras))
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: requirements.py PYPROJECT EXTRAS\n")
        return 2
    pyproject = Path(argv[0])
    unknown, known = unknown_extras(pyproject, argv[1])
    if unknown:
        sys.stderr.write(
            f"EXTRAS: unknown {', '.join(unknown)}; this project has: {', '.join(known)}\n"
        )
        return 1
    sys.stdout.write("".join(f"{line}\n" for line in requirements(pyproject, argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
