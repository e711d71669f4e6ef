"""`octo-sts dev stack --env-file`: the file `octo-sts setup convert` writes, read as compose and
a shell read it; `--port-offset` moves every documented port."""

from __future__ import annotations

from pathlib import Path

import pytest

from octosts.cli import main
from octosts.cli.dev_stack import read_env_file
from octosts.dev.stack import MAX_PORT_OFFSET, StackPorts

CONVERTED = """\
# GitHub App my-octo-sts (id 2), written by `octo-sts setup convert`.
# It holds the webhook secret: keep it (mode 0600) out of version control.
GITHUB_APP_ID=2
GITHUB_APP_PRIVATE_KEY_FILE=/keys/app.pem
GITHUB_APP_PRIVATE_KEY_PATH=/keys/app.pem
GITHUB_BASE_URL=http://127.0.0.1:8781

OCTOSTS_WEBHOOK_SECRETS=abc=def
"""


def test_reads_what_convert_writes(tmp_path: Path) -> None:
    path = tmp_path / "octo-sts.env"
    path.write_text(CONVERTED)
    assert read_env_file(path) == {
        "GITHUB_APP_ID": "2",
        "GITHUB_APP_PRIVATE_KEY_FILE": "/keys/app.pem",
        "GITHUB_APP_PRIVATE_KEY_PATH": "/keys/app.pem",
        "GITHUB_BASE_URL": "http://127.0.0.1:8781",
        "OCTOSTS_WEBHOOK_SECRETS": "abc=def",  # split at the first '=' only
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("GITHUB_APP_ID=2\nexport X=1\n", ":2: expected NAME=VALUE"),
        ("GITHUB_APP_ID=2\n", "needs GITHUB_APP_ID and GITHUB_BASE_URL"),
    ],
)
def test_refuses_other_files(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "octo-sts.env"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_env_file(path)
    # The command says so and exits 2 before starting anything.
    assert main(["dev", "stack", "--workdir", str(tmp_path / "w"), "--env-file", str(path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_env_file_and_several_apps_do_not_mix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "octo-sts.env"
    path.write_text(CONVERTED)
    assert main(["dev", "stack", "--env-file", str(path), "--apps", "2"]) == 2
    assert "--env-file names one App" in capsys.readouterr().err


def test_port_offset_moves_every_port() -> None:
    base, moved = StackPorts.fixed(2), StackPorts.fixed(2, 1000)
    assert moved.issuer == base.issuer + 1000
    assert moved.gateway == base.gateway + 1000
    assert moved.grpc == tuple(p + 1000 for p in base.grpc)
    assert moved.webhook == tuple(p + 1000 for p in base.webhook)
    assert moved.envoy_metrics == 9902 + 1000
    with pytest.raises(ValueError, match="port offset"):
        StackPorts.fixed(2, MAX_PORT_OFFSET + 1)
    assert StackPorts.fixed(8, MAX_PORT_OFFSET).metrics[-1] <= 65535
