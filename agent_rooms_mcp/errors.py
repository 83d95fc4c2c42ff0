"""The one error type we raise on purpose, and the stable codes of DESIGN §7.

Clients branch on the code string; the message is for people; `audit_reason` is for the audit
row only and never reaches a caller.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """The stable codes of DESIGN §7. Renaming one breaks every client that checks it."""

    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN_SCOPE = "FORBIDDEN_SCOPE"
    NO_GRANT = "NO_GRANT"
    IDENTITY_UNVERIFIED = "IDENTITY_UNVERIFIED"
    NOT_FOUND = "NOT_FOUND"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    TOO_LARGE = "TOO_LARGE"
    CONFLICT = "CONFLICT"
    INVITE_INVALID = "INVITE_INVALID"
    RATE_LIMITED = "RATE_LIMITED"
    SPAWN_CAP = "SPAWN_CAP"
    CONSTRAINED_RUNTIME_REQUIRED = "CONSTRAINED_RUNTIME_REQUIRED"
    CONSENT_PENDING = "CONSENT_PENDING"


class RoomsError(Exception):
    """`message` reaches the caller; `audit_reason` never does. `retry_after_ms` says when trying again
    may succeed (RATE_LIMITED); the error result carries it beside the code."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        audit_reason: str | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.audit_reason = audit_reason or code.value.lower()
        self.retry_after_ms = retry_after_ms
        # NOT_FOUND only: the kind looked for and the reference the caller gave. Tool results never show the
        # reference (their text is the same for every missing thing); the operator's CLI names it, with the
        # command that lists the valid ones (cli/common.py).
        self.missing: tuple[str, str | None] | None = None


# Wherever two cases must look the same for security, the error comes from one of these
# constructors, so nobody hand-writes a more helpful message that tells them apart.


def unauthenticated(reason: str) -> RoomsError:
    return RoomsError(ErrorCode.UNAUTHENTICATED, "invalid or revoked credentials", audit_reason=reason)


def not_found(kind: str, ref: str | None = None) -> RoomsError:
    # The same words whether it is missing or hidden from this caller (DESIGN §3). `ref` is what the caller
    # named: pass it on the missing and the hidden path alike, so neither says more than the other.
    error = RoomsError(ErrorCode.NOT_FOUND, f"no such {kind}")
    error.missing = (kind, ref)
    return error


def invite_invalid(reason: str) -> RoomsError:
    # Unknown, expired and used codes are indistinguishable to the caller (invariant 37).
    return RoomsError(ErrorCode.INVITE_INVALID, "this invite code is not valid", audit_reason=reason)


def forbidden_scope(scope: str) -> RoomsError:
    return RoomsError(ErrorCode.FORBIDDEN_SCOPE, f"this credential lacks the '{scope}' scope")


def invalid(field: str, problem: str) -> RoomsError:
    return RoomsError(ErrorCode.INVALID_ARGUMENT, f"{field}: {problem}")


def too_large(field: str, limit: int, unit: str = "bytes") -> RoomsError:
    return RoomsError(ErrorCode.TOO_LARGE, f"{field}: larger than the limit of {limit} {unit}")


def forbidden(message: str) -> RoomsError:
    """FORBIDDEN_SCOPE for a caller whose credential is fine but who is not the one entitled to act."""
    return RoomsError(ErrorCode.FORBIDDEN_SCOPE, message)


def conflict(message: str) -> RoomsError:
    return RoomsError(ErrorCode.CONFLICT, message)
