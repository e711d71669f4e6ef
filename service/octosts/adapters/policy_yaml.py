"""Strict YAML reading of trust policies (the only module importing ``yaml``).

Safety and clarity rules applied before the domain sees any data:

* at most 64 KiB, UTF-8 (an optional BOM is accepted);
* safe loading only, through a loader that refuses anchors and aliases
  altogether (no "billion laughs" expansion), caps nesting depth, rejects
  merge keys (``<<``) and duplicate keys, and records the line of every key
  so each problem names its field and line;
* the top level must be a single mapping document.

Type and field validation is the domain's (``compile_policy``); problems
from both layers are reported together in one ``PolicyInvalid``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import yaml

from octosts.adapters.pinned_keys import material_problems
from octosts.domain.ceiling import PermissionCeiling, compile_ceiling
from octosts.domain.errors import PolicyInvalid, PolicyProblem
from octosts.domain.issuers import TrustedIssuers, compile_trusted_issuers
from octosts.domain.policy import PolicyKind, TrustPolicy, compile_policy

MAX_POLICY_BYTES = 64 * 1024
MAX_DEPTH = 16
_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """A parsed document: its data, the 1-based line of every field path, and
    the problems found while reading (duplicate keys and the like)."""

    data: object
    lines: Mapping[str, int]
    problems: tuple[PolicyProblem, ...]


class _Refused(yaml.MarkedYAMLError):
    """A construct this loader refuses (anchor, alias, too deep)."""


class _StrictLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        # The stubs leave peek_event untyped; every event carries start_mark.
        event = self.peek_event()  # type: ignore[no-untyped-call]
        mark: yaml.Mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(
                problem="aliases (*name) are not allowed in policy files",
                problem_mark=mark,
            )
        if getattr(event, "anchor", None) is not None:
            raise _Refused(
                problem="anchors (&name) are not allowed in policy files",
                problem_mark=mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(
                    problem=f"nesting deeper than {MAX_DEPTH} levels",
                    problem_mark=mark,
                )
            return super().compose_node(parent, index)  # type: ignore[arg-type]
        finally:
            self._depth -= 1


def load_document(text: bytes | str) -> YamlDocument:
    """Read one YAML document strictly, recording key lines and duplicate keys.

    Raises PolicyInvalid for oversized, non-UTF-8 or malformed YAML and for
    refused constructs (anchors, aliases, deep nesting, unknown tags).
    """
    source = _decode(text)
    loader: _StrictLoader | None = None
    try:
        # The reader checks for forbidden characters in its constructor.
        loader = _StrictLoader(source)
        node = loader.get_single_node()
        if node is None:
            return YamlDocument(data=None, lines=MappingProxyType({}), problems=())
        walker = _Walker(loader)
        data = walker.value(node, "")
    except yaml.MarkedYAMLError as exc:
        raise PolicyInvalid([_marked_problem(exc)]) from exc
    except yaml.reader.ReaderError as exc:
        line = source[: max(exc.position, 0)].count("\n") + 1
        raise PolicyInvalid(
            [PolicyProblem("", f"character not allowed in YAML ({exc.reason})", line)]
        ) from exc
    except yaml.YAMLError as exc:
        raise PolicyInvalid([PolicyProblem("", f"invalid YAML: {exc}")]) from exc
    except (ValueError, OverflowError) as exc:
        # Scalar construction: an integer past Python's digit limit, a bad timestamp...
        raise PolicyInvalid([PolicyProblem("", f"value cannot be read: {str(exc)[:120]}")]) from exc
    finally:
        if loader is not None:
            loader.dispose()
    return YamlDocument(
        data=data, lines=MappingProxyType(walker.lines), problems=tuple(walker.problems)
    )


def parse_trust_policy(text: bytes | str, *, kind: PolicyKind) -> TrustPolicy:
    """Parse and compile a repository (``kind="repo"``) or organization policy.

    Raises PolicyInvalid listing every problem (field and line).
    """
    return read_trust_policy(text, kind=kind)[0]


def read_trust_policy(
    text: bytes | str, *, kind: PolicyKind
) -> tuple[TrustPolicy, Mapping[str, int]]:
    """``parse_trust_policy``, with the line of every field path (for later problems)."""
    document = load_document(text)
    if not isinstance(document.data, dict):
        line = 1 if document.data is not None else None
        raise PolicyInvalid(
            [*document.problems, PolicyProblem("", "a policy must be a mapping of fields", line)]
        )
    try:
        policy = compile_policy(document.data, kind=kind, lines=document.lines)
    except PolicyInvalid as exc:
        raise PolicyInvalid([*document.problems, *exc.problems]) from None
    problems = list(document.problems)
    if policy.jwks is not None:
        problems += material_problems(policy.jwks, where="jwks", lines=document.lines)
    if problems:
        raise PolicyInvalid(problems)
    return policy, document.lines


def parse_trusted_issuers(
    text: bytes | str, *, insecure_issuers: frozenset[str] = frozenset()
) -> TrustedIssuers:
    """Parse and validate an org ``trusted-token-issuers.yaml`` (same strict YAML rules).

    Raises PolicyInvalid listing every problem (field and line).
    """
    document = load_document(text)
    try:
        trusted = compile_trusted_issuers(
            document.data, lines=document.lines, insecure_issuers=insecure_issuers
        )
    except PolicyInvalid as exc:
        raise PolicyInvalid([*document.problems, *exc.problems]) from None
    if document.problems:
        raise PolicyInvalid(list(document.problems))
    return trusted


def parse_permission_ceiling(text: bytes | str) -> PermissionCeiling:
    """Parse and validate an org ``permission-ceiling.yaml`` (same strict YAML rules).

    Raises PolicyInvalid listing every problem (field and line).
    """
    document = load_document(text)
    try:
        ceiling = compile_ceiling(document.data, lines=document.lines)
    except PolicyInvalid as exc:
        raise PolicyInvalid([*document.problems, *exc.problems]) from None
    if document.problems:
        raise PolicyInvalid(list(document.problems))
    return ceiling


def _decode(text: bytes | str) -> str:
    if isinstance(text, str):
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PolicyInvalid("the policy is not valid Unicode text") from exc
    else:
        raw = bytes(text)
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyInvalid(f"the policy is larger than {MAX_POLICY_BYTES // 1024} KiB")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PolicyInvalid([PolicyProblem("", "the policy is not UTF-8 text", line)]) from exc


class _Walker:
    """Builds plain Python values from composed nodes, keeping key lines."""

    def __init__(self, loader: _StrictLoader) -> None:
        self.loader = loader
        self.lines: dict[str, int] = {}
        self.problems: list[PolicyProblem] = []

    def value(self, node: yaml.Node, path: str) -> object:
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _PLAIN_TAGS:
            # Collections are built here, not by the constructor, so explicit
            # tags (!!python/..., !!set, !custom) must be refused here too.
            raise _Refused(
                problem=f"unsupported tag {node.tag[:60]!r}", problem_mark=node.start_mark
            )
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            items: list[object] = []
            for index, item in enumerate(node.value):
                item_path = f"{path}[{index}]"
                self.lines[item_path] = item.start_mark.line + 1
                items.append(self.value(item, item_path))
            return items
        return self.loader.construct_object(node, deep=True)

    def mapping(self, node: yaml.MappingNode, path: str) -> dict[object, object]:
        result: dict[object, object] = {}
        first_line: dict[object, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                raise _Refused(
                    problem="merge keys (<<) are not allowed in policy files",
                    problem_mark=key_node.start_mark,
                )
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(PolicyProblem(path, "keys must be plain scalars", line))
                continue
            key = self.loader.construct_object(key_node, deep=True)
            child = f"{path}.{key}" if path else str(key)
            if key in first_line:
                self.problems.append(
                    PolicyProblem(
                        child[:120],
                        f"duplicate key (first defined on line {first_line[key]})",
                        line,
                    )
                )
                continue
            first_line[key] = line
            self.lines[child] = line
            result[key] = self.value(value_node, child)
        return result


def _marked_problem(exc: yaml.MarkedYAMLError) -> PolicyProblem:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    parts = [p for p in (exc.context, exc.problem) if p]
    message = ", ".join(parts) or "invalid YAML"
    if not isinstance(exc, _Refused):
        message = f"invalid YAML: {message}"
    return PolicyProblem("", message, line)
