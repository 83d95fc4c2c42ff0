"""The owner console (DESIGN §9.2, STYLE P18): cross-origin protection, a page's shown payload hash, a console
session inside a write, and the typed confirmation for giving `invoke`."""

from __future__ import annotations

from agent_rooms_mcp.errors import conflict, invalid, unauthenticated
from agent_rooms_mcp.principals import Scope

# Safe methods change nothing, so a cross-origin one cannot forge a change (the console keeps them so).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cross_origin_allowed(method: str, sec_fetch_site: str | None, origin: str | None, host: str | None) -> bool:
    """Go 1.25 `CrossOriginProtection`'s verdict on one request (Filippo Valsorda's algorithm, as Datasette
    adopted it in place of CSRF tokens): a safe method passes; `Sec-Fetch-Site: same-origin` or `none` (the
    user typed it) passes, any other value refuses; without it, an `Origin` must name exactly the `Host`;
    with neither header the request is not from a browser, and CSRF cannot apply (the console still demands
    its session cookie)."""
    if method.upper() in SAFE_METHODS:
        return True
    if sec_fetch_site is not None:
        return sec_fetch_site.strip().lower() in ("same-origin", "none")
    if origin is None:
        return True
    scheme, sep, rest = origin.strip().partition("://")
    if not sep or scheme.lower() not in ("http", "https") or host is None:
        return False  # "null" (a sandboxed frame, a file: page) and anything unparsable is cross-origin
    return rest.lower() == host.strip().lower()


def console_session_holds(held: bool) -> None:
    """Inside a write a console request makes, its session must still hold: one logged out, expired or whose
    device was revoked since the request authenticated answers UNAUTHENTICATED, and the write rolls back."""
    if not held:
        raise unauthenticated("console_session_ended_during_call")


def require_shown_payload(shown: str | None, actual: str) -> None:
    """A decision made on a page carries the payload hash the page showed (DESIGN §9.2): any other hash means
    the owner decided on something other than what is pending now."""
    if shown is not None and shown != actual:
        raise conflict(
            f"payload_sha256 {shown[:16]}…: the proposal's payload is {actual[:16]}…; reload it and decide again"
        )


def require_invoke_confirmation(before: frozenset[Scope], after: frozenset[Scope], typed: str, handle: str) -> None:
    """Giving an agent `invoke` at the console (it may then wake other agents) needs its handle typed out."""
    if Scope.INVOKE in after - before and typed.strip() != handle:
        raise invalid("confirm", f"giving invoke to {handle} needs its handle typed into the confirmation field")
