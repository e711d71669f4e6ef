"""Refuse an image build whose EXTRAS names an extra the package does not have.

    check_extras.py pyproject.toml aws,gcp     # exit 0; 1 naming the unknown ones; 2 usage

pip only warns about an unknown extra ("does not provide the extra"), so a typo in
``--build-arg EXTRAS=...`` would build an image without the KMS client its deployment expects,
found out at the first exchange. Run by the Dockerfile before the (slow) install, against the
pyproject.toml it installs: the extras' one home stays pyproject.toml. Standard library only.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def unknown_extras(pyproject: Path, extras: str) -> tuple[list[str], list[str]]:
    """(the names in comma-separated ``extras`` the project lacks, the ones it has)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    known = sorted(project.get("optional-dependencies", {}))
    wanted = [name.strip() for name in extras.split(",") if name.strip()]
    return [name for name in wanted if name not in known], known


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: check_extras.py PYPROJECT EXTRAS\n")
        return 2
    unknown, known = unknown_extras(Path(argv[0]), argv[1])
    if unknown:
        sys.stderr.write(
            f"EXTRAS: unknown {', '.join(unknown)}; this project has: {', '.join(known)}\n"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
