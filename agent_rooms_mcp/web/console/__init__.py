"""The owner console at /console/ (DESIGN §9.2, STYLE P18): server-rendered pages for one logged-in owner.

A page handler authenticates the session, calls the same owner action the CLI calls (owner_actions, with
an owner principal whose rows say `via: console`) or a read of `services/console_views`, and renders a
template. It holds no rule of its own: who may do what is `policy`'s.

Every answer carries a strict CSP (no inline script or style: the stylesheet and the one script are served
files), `frame-ancestors 'none'`, nosniff, no referrer and no caching. Every unsafe request passes the
cross-origin check (`policy.cross_origin_allowed`) before anything reads its body, after the same Host and
Origin allow-lists as /mcp (public.py).
"""

from __future__ import annotations

from agent_rooms_mcp.web.console.app import PREFIX, Console, logged_in_owner

__all__ = ["PREFIX", "Console", "logged_in_owner"]
