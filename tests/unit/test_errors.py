"""The facts on the exception tree that transport, metrics and audit read."""

from __future__ import annotations

from octosts.domain import errors


def _subclasses(cls: type[errors.StsError]) -> list[type[errors.StsError]]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


BRANCHES = errors.StsError.__subclasses__()


def test_every_branch_states_its_family_and_fault() -> None:
    # A new branch that forgot would silently inherit "internal" and "not the caller's fault".
    for branch in BRANCHES:
        assert "family" in vars(branch), branch
        assert "caller_fault" in vars(branch), branch
    assert len({b.family for b in BRANCHES} | {errors.StsError.family}) == len(BRANCHES) + 1


def test_subclasses_keep_their_branch_family_and_fault() -> None:
    for branch in BRANCHES:
        for sub in _subclasses(branch):
            assert "family" not in vars(sub), sub
            assert "caller_fault" not in vars(sub), sub
            assert (sub.family, sub.caller_fault) == (branch.family, branch.caller_fault)


def test_caller_faults_are_request_token_and_policy() -> None:
    faults = {b.__name__ for b in BRANCHES if b.caller_fault}
    assert faults == {"InvalidRequest", "AuthenticationError", "PermissionDenied"}


def test_a_reason_given_at_raise_time_keeps_the_family() -> None:
    exc = errors.TokenMalformed("no header", reason=errors.TOKEN_MISSING)
    assert (exc.reason, exc.family, exc.caller_fault) == ("token_missing", "unauthenticated", True)
