"""INVARIANTS.md in our own words: (number, what it says, the piece of work that proves it).

`INVARIANTS.md` lives beside the project, not in it, so the suite keeps its own copy of the rows.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple


class Invariant(NamedTuple):
    number: int
    text: str
    issues: frozenset[str]


def _rows() -> list[Invariant]:
    table = {
        1: ("no credential: UNAUTHENTICATED, audit row missing_credential, nothing changed", "core"),
        2: ("a passport whose signature does not verify is refused the same way", "core"),
        3: ("a foreign kid is refused without trying another key", "core"),
        4: ("only the exact v4.public. header is accepted", "core"),
        5: ("a passport for another deployment is refused", "core"),
        6: ("outside nbf - 10 s .. exp + 10 s is refused", "core"),
        7: ("an epoch below the agent's current one is refused", "core"),
        8: ("a revoked token fails on the very next call, stdio too", "core"),
        14: ("every authentication failure gives the same public answer", "core"),
        15: ("a token counts only from the Authorization header or the server's environment", "core"),
        16: ("revoking one token leaves the agent's others working", "core"),
        18: ("no plaintext token, code or key in logs, audit, results or the database", "core"),
        19: ("a foreign Origin gets 403 and a foreign Host is refused before tool code", "core"),
        20: ("no non-loopback bind without TLS, public URL and auth", "network"),
        21: ("tool x caller x scope matrix equals an independent table; denials change nothing", "core consent wake"),
        22: ("without the tool's scope: FORBIDDEN_SCOPE", "core"),
        23: ("cross-owner action without a grant: NO_GRANT", "consent"),
        24: ("cross-owner action with an unverified owner: IDENTITY_UNVERIFIED", "consent"),
        25: ("a revoked grant fails the next call and its pending proposals", "consent"),
        26: ("scope, grant and membership changes apply on the next call", "core"),
        27: ("a non-member's call on a private room looks like a missing room", "core"),
        28: ("listings never reveal rooms the caller is not in", "core"),
        29: ("a removed agent gets nothing of the room afterwards", "core"),
        31: ("another principal's ids grant nothing: NOT_FOUND", "core"),
        32: ("no MCP tool changes scopes; an OAuth token never carries consent or manage", "core connector"),
        33: ("human-only actions have no tool: tools/list is the documented list", "core"),
        34: ("authorisation is re-checked inside the write transaction", "core"),
        35: ("invite codes carry >= 128 bits and only their hash is stored", "core"),
        36: ("N concurrent accepts of one code: one winner", "core"),
        37: ("unknown, expired, revoked and used codes get the identical INVITE_INVALID", "core"),
        38: ("accepting exists only in the CLI and adds that owner's agents only, in one transaction", "core"),
        39: ("an invite past the room's pending cap is refused and changes nothing", "core"),
        40: (
            "console login links and enrollment codes: >= 128 bits, expire, single use (a POST), void after 5 failures",
            "network console",
        ),
        41: ("a new room's consent mode is task_by_task", "consent"),
        42: ("task_by_task: cross-owner work starts pending and wakes nobody", "consent wake"),
        43: ("only the target's owner moves a proposal out of pending", "consent"),
        44: ("decisions are final", "consent"),
        45: ("decisions are bound to the payload hash", "consent"),
        46: ("a consent mode change applies to future proposals and is audited", "consent"),
        47: ("no content changes consent, scope, grant or membership", "consent"),
        48: ("deleting an agent kills its credentials at once", "containment"),
        49: ("a deleted agent is invisible at once and purged later", "containment"),
        50: ("purged sentinels are gone from database and WAL bytes", "containment"),
        51: ("quarantining a room ends its runs and answers NOT_FOUND", "containment"),
        52: ("purge is idempotent and keeps the audit chain", "containment"),
        53: ("secure_delete is on for every connection", "core"),
        54: ("each successful change writes exactly one audit row; failures none", "core"),
        55: ("every denial writes an audit row naming actor, action, target and reason", "core"),
        56: ("UPDATE or DELETE on the audit table fails", "core"),
        57: ("audit verify names the first edited, deleted or reordered row", "core"),
        58: ("checkpoints catch truncation and re-chaining", "containment"),
        59: ("each checkpoint extends the previous one", "containment"),
        60: ("audit rows hold no bodies or secrets; UTC times", "core"),
        61: ("another owner's text arrives only inside an envelope with provenance", "core"),
        62: ("content cannot end an envelope early", "core"),
        63: ("invisible, bidi, control and ANSI characters never reach output; flags say so", "core"),
        64: ("tool names, descriptions and schemas are identical for every caller", "core"),
        65: ("no tool result exceeds its cap", "core"),
        66: ("HTTP bodies over the cap get 413; stdio lines over the cap are refused with bounded memory", "core"),
        67: ("past its burst a principal gets RATE_LIMITED", "network"),
        68: ("failed authentication is limited per source", "later"),
        69: ("runs never exceed the caps", "wake"),
        70: ("a run's environment holds only allowlisted variables", "wake"),
        71: ("a run past its limit is stopped with its descendants", "wake"),
        72: ("home directories 0700, key and database files 0600 whatever the umask", "core"),
        73: ("a key file readable by others, a symlink or another user's is refused", "core"),
        74: ("a stored secret decrypts only under its own purpose and row", "wake"),
        75: ("the official PASETO and PASERK vectors pass; Ed25519 edge cases are refused", "core"),
        76: ("legacy session ids are long and bound to the credential that opened them", "core"),
        77: ("a wake runs only the accepted payload; edit, reassign or cancel withdraws it", "hardening"),
        78: ("a handed-on task needs grant and consent for every owner whose words cross", "hardening"),
        79: ("every free-text field another principal chose is sanitised and enveloped", "hardening"),
        80: ("no Default_Ignorable_Code_Point or U+2028/2029 reaches output unflagged", "hardening"),
        81: ("every list is paged and bounded in encoded bytes; every integer argument is bounded", "hardening"),
        82: ("a refusal never tells exists-but-not-yours from does-not-exist", "hardening"),
        83: ("a call in flight when its credential is revoked returns no later data", "hardening"),
        84: ("slow or idle clients cannot exhaust the server", "hardening"),
        85: (
            "every state change is audited; no out-of-order insert; no credential-shaped target; bounded floods",
            "hardening",
        ),
        86: ("a failed COMMIT rolls back and leaves the store able to write", "hardening"),
        87: ("a run token reads and writes only the room of its run", "hardening"),
        88: ("tool errors carry no structuredContent; the code leads the text and sits in _meta", "hardening"),
        89: (
            "a sandboxed CLI reads and writes only what DESIGN 5 binds, reaches no host socket but its bridge "
            "(and its egress proxy), runs with no capability and a non-zero uid, and leaves no process behind",
            "containment",
        ),
        90: ("revocation receipts are proven: each credential named is refused by a real lookup first", "containment"),
        91: (
            "enrollment codes and console links are single use, short-lived, hashed at rest, limited after failures",
            "network console",
        ),
        92: ("a device acts only for its owner, never calls an MCP tool, and is refused once revoked", "network"),
        93: (
            "one listener holds an agent at a time; a reported spawn is never re-queued; a restart marks runs lost",
            "network",
        ),
        94: (
            "an agent's variables on a listener and its runs' event bodies never leave the owner's machine",
            "network",
        ),
        95: ("binding beyond loopback needs a public URL; forwarded headers count only when trusted", "network"),
        96: (
            "console pages escape all room content, every unsafe request passes the cross-origin check, session"
            " cookies are HttpOnly, SameSite=Strict, and __Host- and Secure under HTTPS",
            "console",
        ),
        97: (
            "OAuth: PKCE S256 only, codes single use, refresh rotation with a 30 s grace then family revocation, "
            "Claude's callbacks or loopback only, audience-bound access tokens, dead with their agent, iss always",
            "connector",
        ),
        98: (
            "every wake ends in a final state its causer can see; none stays woken or queued past its expiry",
            "operate",
        ),
        99: ("the hub spawns only local owners' agents; other owners' wakes wait for a listener or expire", "network"),
        100: ("no sandboxed process opens the hub's database or home: a woken CLI has only the bridge", "containment"),
        101: (
            "the sandbox fails closed: a failed probe fails the run; a cross-owner wake needs a working one",
            "containment",
        ),
        102: ("a run's causers are carried transitively and constrain what it wakes", "hardening"),
        103: ("the claim re-checks every condition of the wake; changes during a run withdraw it", "hardening"),
        104: (
            "a listener refuses an unverified claim, never widens its local policy, stops runs on 401/403 or a lapse",
            "network",
        ),
        105: (
            "each credential kind is accepted only where it belongs, refused before any lookup",
            "hardening network connector",
        ),
        106: (
            "an agent only tightens consent modes; agent invites wait for the owner, no usable code in results",
            "hardening",
        ),
        107: (
            "a restore revokes every credential in the restored database unless told to keep them; backups are 0600",
            "operate",
        ),
        108: (
            "a client ID metadata document comes only from a public address (checked on the connected socket), "
            "without redirects, within 5 s and 5 KiB, and names its own URL byte for byte",
            "connector",
        ),
    }
    return [Invariant(n, text, frozenset(issues.split())) for n, (text, issues) in table.items()]


INVARIANTS = _rows()


# docs/INVARIANTS.md is rendered from the rows above and the tests' own tags, so the shipped list cannot drift
# from what the suite proves: tests/test_project.py compares the file with this rendering.
DOC_COMMAND = ".venv/bin/python -m tests.invariants > docs/INVARIANTS.md"


def proving_tests(tests_dir: Path) -> dict[int, list[str]]:
    """Invariant number -> `file::test` names tagged `@pytest.mark.invariant(N, ...)` under tests_dir."""
    proofs: dict[int, list[str]] = defaultdict(list)
    for path in sorted(tests_dir.rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and ast.unparse(deco.func) == "pytest.mark.invariant":
                    for arg in deco.args:
                        number = ast.literal_eval(arg)
                        proofs[int(number)].append(f"{path.relative_to(tests_dir.parent).as_posix()}::{node.name}")
    return {n: sorted(set(names)) for n, names in proofs.items()}


def render_doc(tests_dir: Path) -> str:
    proofs = proving_tests(tests_dir)
    lines = [
        "# Security invariants, and the tests that prove them",
        "",
        "Each row is a promise the hub keeps whatever a caller sends, and the tests that try to break it. A",
        '"denied call changes nothing" means a hash of every table but the audit log is the same before and after.',
        "Numbers follow the project's security review, so gaps are invariants this version does not make (signed",
        "per-call proofs, for one). A row with no test belongs to work that is not built yet.",
        "",
        f"This file is generated (`{DOC_COMMAND}`), and `tests/test_project.py`",
        "fails when it disagrees with `tests/invariants.py` or with the `@pytest.mark.invariant(N)` tags in `tests/`.",
        "",
        "| # | invariant | proven by |",
        "|---|---|---|",
    ]
    for inv in INVARIANTS:
        tests = proofs.get(inv.number)
        proof = "<br>".join(f"`{t}`" for t in tests) if tests else f"not built yet ({', '.join(sorted(inv.issues))})"
        lines.append(f"| {inv.number} | {inv.text.replace('|', '/')} | {proof} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_doc(Path(__file__).resolve().parent))
