"""Where a sandboxed run's egress proxy lets its CLI go (DESIGN §5, Network): model APIs, base URLs, the hub."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from agent_rooms_mcp.principals import AgentTool

# DESIGN §5, Network: where a sandboxed run's egress proxy lets the CLI go. Each CLI's model API (Codex's
# ChatGPT login calls chatgpt.com's backend and refreshes at auth.openai.com), the hosts of the base URLs
# its environment names, and the hub when the bridge reaches it over the network (a listener's runs).
MODEL_API_HOSTS: Mapping[AgentTool, frozenset[tuple[str, int]]] = {
    AgentTool.CLAUDE: frozenset({("api.anthropic.com", 443)}),
    AgentTool.CODEX: frozenset({("api.openai.com", 443), ("chatgpt.com", 443), ("auth.openai.com", 443)}),
}
BASE_URL_VARS: Mapping[AgentTool, tuple[str, ...]] = {
    AgentTool.CLAUDE: ("ANTHROPIC_BASE_URL",),
    AgentTool.CODEX: ("OPENAI_BASE_URL",),
    AgentTool.OPENCLAW: ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL"),
}
# OpenClaw talks to whichever providers the owner gave it keys for (research/wake.md §3, --auth-env-only):
# a provider's API host is reachable when its key variable is in the run's environment.
OPENCLAW_PROVIDER_HOSTS: Mapping[str, tuple[str, int]] = {
    "ANTHROPIC_API_KEY": ("api.anthropic.com", 443),
    "OPENAI_API_KEY": ("api.openai.com", 443),
    "GEMINI_API_KEY": ("generativelanguage.googleapis.com", 443),
    "GOOGLE_API_KEY": ("generativelanguage.googleapis.com", 443),
    "OPENROUTER_API_KEY": ("openrouter.ai", 443),
    "MISTRAL_API_KEY": ("api.mistral.ai", 443),
    "GROQ_API_KEY": ("api.groq.com", 443),
    "XAI_API_KEY": ("api.x.ai", 443),
}


def _url_host(url: str) -> tuple[str, int] | None:
    """(host, port) of an http(s) URL, or None for anything else (the CLI would fail on it anyway)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


def allowed_hosts(tool: AgentTool, env: Mapping[str, str], hub_url: str | None) -> frozenset[tuple[str, int]]:
    """The (host, port) pairs a sandboxed run of `tool` may reach through its egress proxy.

    `env` is the run's own environment (its base URL and provider key variables); `hub_url` the hub's
    URL when the run's bridge goes over the network, None when it uses the run directory's socket.
    """
    hosts = set(MODEL_API_HOSTS.get(tool, frozenset()))
    if tool == AgentTool.OPENCLAW:
        named = {OPENCLAW_PROVIDER_HOSTS[name] for name in env if name in OPENCLAW_PROVIDER_HOSTS}
        # No key in the environment: its stored auth profiles are Anthropic's or OpenAI's.
        hosts |= named or {("api.anthropic.com", 443), ("api.openai.com", 443)}
    for name in BASE_URL_VARS.get(tool, ()):
        if (where := _url_host(env.get(name, ""))) is not None:
            hosts.add(where)
    if hub_url is not None and (where := _url_host(hub_url)) is not None:
        hosts.add(where)
    return frozenset(hosts)
