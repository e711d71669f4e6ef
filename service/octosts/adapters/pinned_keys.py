"""Keys a trust policy pins: its key file (``jwks_file``) read, and key material checked.

The rules every pinned key passes are the domain's (``domain.jwks.compile_pinned_jwks``);
what only the crypto library can judge (an EC point on its curve, an Ed25519 key of the
right size) is ``adapters.oidc.unusable_pinned_keys``. Both readers of pinned keys, a policy's
inline ``jwks`` (``adapters.policy_yaml.parse_trust_policy``) and a key file
(``parse_jwks_file``), end here, so the service, ``octo-sts policy lint`` and the webhook's
check run report the same problems.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from octosts.adapters.oidc import unusable_pinned_keys
from octosts.domain.errors import PolicyInvalid, PolicyProblem
from octosts.domain.jwks import PinnedJwks, compile_pinned_jwks
from octosts.domain.tokens import json_too_deep

MAX_JWKS_FILE_BYTES = 64 * 1024  # the policy cap: 100 RSA-4096 keys take ~75 KiB, 60 fit
MAX_JWKS_DEPTH = 4  # {"keys": [{"key_ops": [...]}]}
UNUSABLE = "key material is not a valid public key of its kty/crv (check n and e, or x and y)"


def material_problems(
    keys: PinnedJwks, *, where: str, lines: Mapping[str, int] | None = None
) -> list[PolicyProblem]:
    """One problem per key whose material no key object can be built from."""
    problems = []
    for index in unusable_pinned_keys(keys):
        path = f"{where}.keys[{index}]" if where else f"keys[{index}]"
        problems.append(PolicyProblem(path, UNUSABLE, (lines or {}).get(path)))
    return problems


def parse_jwks_file(content: bytes, *, path: str) -> PinnedJwks:
    """A key file's keys: UTF-8 JSON (at most 64 KiB, no duplicate members, shallow), a JWKS
    object passing the pinned-key rules.

    Raises PolicyInvalid listing every problem (``keys[0].d: ...``).
    """
    if len(content) > MAX_JWKS_FILE_BYTES:
        raise PolicyInvalid(f"the key file is larger than {MAX_JWKS_FILE_BYTES // 1024} KiB")
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PolicyInvalid("the key file is not UTF-8 text") from exc
    if json_too_deep(content, limit=MAX_JWKS_DEPTH):
        raise PolicyInvalid(f"the key file nests deeper than {MAX_JWKS_DEPTH} levels")
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except _Duplicate as exc:
        raise PolicyInvalid([PolicyProblem(exc.name, "duplicate member")]) from exc
    except (ValueError, RecursionError) as exc:
        raise PolicyInvalid(f"the key file is not JSON: {str(exc)[:120]}") from exc
    keys, problems = compile_pinned_jwks(data, where="", source=path)
    if keys is None:
        raise PolicyInvalid(problems)
    problems = material_problems(keys, where="")
    if problems:
        raise PolicyInvalid(problems)
    return keys


class _Duplicate(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for name, value in pairs:
        if name in result:
            raise _Duplicate(name[:60])
        result[name] = value
    return result
