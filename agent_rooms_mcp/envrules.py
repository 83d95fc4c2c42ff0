"""What may be in a woken CLI's environment: the allowlist, the denylist and the provider keys an owner may set.

Rules only, no process: the services check an owner's variables with them when they are set, and
`wake/env.py` applies them again when it builds a child's environment, so neither imports the other.

Whatever is in a CLI's environment, the model can read (`env` in a tool shell), and both CLIs pass
their whole environment on to MCP servers or tool shells (research/wake.md §5.1). So nothing is
inherited by default: a name reaches the child only if it is on the allowlist (§5.2) and not on
the denylist (§5.3), or if the owner configured it for this agent and it is not denied.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["BASE_ALLOW", "RUN_SETS", "TOOL_ALLOW", "check_extra", "check_new", "check_tool", "is_denied"]

# Close to Codex's `inherit=core`; TERM and NO_COLOR are not inherited but set (below).
BASE_ALLOW: frozenset[str] = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ"}
)

# Where each CLI keeps its login and config. Passed through only to that CLI. Provider keys are
# never inherited: they arrive through `extra`, where the owner configured them on purpose.
TOOL_ALLOW: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "claude": frozenset({"CLAUDE_CONFIG_DIR"}),
        "codex": frozenset({"CODEX_HOME"}),
        "openclaw": frozenset({"OPENCLAW_HOME", "OPENCLAW_STATE_DIR", "OPENCLAW_CONFIG_PATH"}),
    }
)

# Provider credentials an owner may configure in `extra` although the secret patterns match them.
# Each works for its own CLI only: an Anthropic key handed to Codex is a leak, not a login.
_AUTH_ALLOW: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "claude": frozenset(
            {"ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_BASE_URL"}
        ),
        "codex": frozenset({"CODEX_API_KEY", "OPENAI_API_KEY"}),
        "openclaw": frozenset(),
    }
)
# OpenClaw talks to many providers, each with its own key variable, so any *_API_KEY is accepted...
_OPENCLAW_KEY = re.compile(r"[A-Z][A-Z0-9_]*_API_KEY")

# The denylist of research/wake.md §5.3, one family per pattern. Case-insensitive on the name.
_CLOUD = r"^(AWS|AMAZON|GOOGLE|GCLOUD|GCP|CLOUDSDK|AZURE|ARM|OCI|ALIBABA|ALICLOUD|IBMCLOUD|DIGITALOCEAN|DO|LINODE|HCLOUD|SCW|HEROKU|FLY|VERCEL|NETLIFY|CLOUDFLARE|CF)_"  # noqa: E501
_FORGE_CI = r"^(GITHUB|GH|GITLAB|GL|BITBUCKET|GITEA|ACTIONS|RUNNER|CI_JOB|BUILDKITE|CIRCLE)_"
_CLUSTER = r"^(KUBECONFIG|KUBE_.*|K8S_.*|HELM_.*|DOCKER_.*|PODMAN_.*|CONTAINER_HOST|BUILDAH_.*)$"
_AGENTS = r"^(SSH_AUTH_SOCK|SSH_AGENT_PID|GPG_AGENT_INFO|GNUPGHOME|SSH_ASKPASS)$"
_VAULTS = r"^(VAULT|CONSUL|NOMAD|TF_VAR|TF_TOKEN|TERRAFORM|PULUMI|OP|BW|DOPPLER|INFISICAL|SOPS|AGE)_"
_REGISTRIES = (
    r"^(NPM_TOKEN|NODE_AUTH_TOKEN|YARN_NPM_AUTH_TOKEN|PYPI_.*|TWINE_.*|UV_.*TOKEN.*|CARGO_REGISTRY_TOKEN"
    r"|GEM_HOST_API_KEY|HOMEBREW_GITHUB_API_TOKEN)$"
)
_DATABASES = (
    r"^(DATABASE_URL|.*_DATABASE_URL|PGPASSWORD|PGPASSFILE|PGSERVICEFILE|MYSQL_PWD|REDIS_URL|MONGO(DB)?_URI|AMQP_URL)$"
)
_SECRETS = (
    r"(SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|PRIVATE_KEY|API_KEY|ACCESS_KEY|_AUTH$|COOKIE|SESSION_KEY)"
)
# A parent agent's markers: a woken CLI must not believe it runs inside another agent's session.
_MARKERS = (
    r"^(CLAUDECODE|CLAUDE_CODE_(SESSION_ID|MESSAGING_.*|ENTRYPOINT|CHILD_NOTES_DIR|LAUNCHED_BY_SESSION_IDS)"
    r"|CLAUDE_PROJECT_DIR|AI_AGENT|CODEX_(THREAD_ID|SESSION_ID|TOOL_CALL_ID|CI|INTERNAL_.*)|OPENCLAW_SHELL|MCP_.*)$"
)
_OURS = r"^AGENT_ROOMS_(?!RUN_ID$|WAKE_DEPTH$)"  # the server's own secrets and paths
_INJECTION = r"^(LD_PRELOAD|LD_LIBRARY_PATH|DYLD_.*|PYTHONPATH|PYTHONSTARTUP|NODE_OPTIONS|BASH_ENV|ENV|PROMPT_COMMAND)$"

_FAMILIES = (
    _CLOUD,
    _FORGE_CI,
    _CLUSTER,
    _AGENTS,
    _VAULTS,
    _REGISTRIES,
    _DATABASES,
    _SECRETS,
    _MARKERS,
    _OURS,
    _INJECTION,
)
_DENIED = re.compile("|".join(f"(?:{family})" for family in _FAMILIES), re.IGNORECASE)  # compiled once
# ...but never one of these, which are no provider key whatever their suffix.
_NEVER = re.compile(f"(?:{_MARKERS})|(?:{_INJECTION})|^AGENT_ROOMS_", re.IGNORECASE)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# What every spawn sets or takes from the process that spawns it, and why an owner's value for one would break
# or subvert the run: the CLI is found on the spawning process's PATH (DESIGN §5), and with another PATH the
# CLI's own interpreter, or the CLI itself, is not found inside the run ("cli_not_found", for the wrong reason).
_SPAWN_PATH = "the CLI and what it runs are found on the PATH of the hub or listener that spawns it"
RUN_SETS: Mapping[str, str] = MappingProxyType(
    {
        "PATH": f"{_SPAWN_PATH} (point AGENT_ROOMS_CLAUDE_BIN, _CODEX_BIN or _OPENCLAW_BIN at a CLI elsewhere)",
        "HOME": "a sandboxed run's home is the agent's own CLI configuration directory, set at every spawn",
        "TMPDIR": "each run gets a private temporary directory of its own",
        "TERM": "the run's output is read as JSON, so every run gets TERM=dumb",
        "NO_COLOR": "the run's output is read as JSON, so every run gets NO_COLOR=1",
        "DISABLE_AUTOUPDATER": "a woken Claude must not replace its own binary under a running supervisor",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "a woken Claude sends only the traffic its work needs",
    }
)


def is_denied(name: str) -> bool:
    """True if name is on the denylist of research/wake.md §5.3 (case-insensitive)."""
    return _DENIED.search(name) is not None


def _auth_allowed(name: str, tool: str) -> bool:
    if name in _AUTH_ALLOW[tool]:
        return True
    return tool == "openclaw" and _OPENCLAW_KEY.fullmatch(name) is not None and _NEVER.search(name) is None


def check_tool(tool: str) -> None:
    """ValueError naming the tool, unless it is one whose environment these rules know."""
    if tool not in TOOL_ALLOW:
        raise ValueError(f"unknown tool {tool!r}: expected one of {', '.join(sorted(TOOL_ALLOW))}")


def check_extra(name: str, value: str, tool: str) -> None:
    """May an owner give this variable to an agent of `tool`? ValueError naming it (never its value) if not.

    Checked when the owner sets it and again at every spawn, so a denylist that grows applies to values
    stored before."""
    check_tool(tool)
    if not _NAME.fullmatch(name) or "\0" in value:
        raise ValueError(f"environment variable {name!r} is not a valid name=value pair")
    if name.upper().startswith("AGENT_ROOMS_"):
        raise ValueError(f"environment variable {name} is reserved for agent-rooms and cannot be configured")
    if name in RUN_SETS:
        why = RUN_SETS[name]
        raise ValueError(f"environment variable {name} is set by agent-rooms for every run and cannot be set: {why}")
    if is_denied(name) and not _auth_allowed(name, tool):
        raise ValueError(f"environment variable {name} is denied for {tool} (it looks like a credential or marker)")


def check_new(handle: str, name: str, value: str) -> None:
    """What only a value being set must also pass (a stored one is not failed for it at a spawn): a value at
    all. An empty variable tells a CLI nothing (an empty key is no key) and hides a mistake such as an empty
    file piped in; `agent env unset` is how one is removed. ValueError naming the variable, never a value."""
    if not value:
        raise ValueError(f"environment variable {name} has an empty value: give it one, or remove it with: "
                         f"agent-rooms agent env unset {handle} {name}")  # fmt: skip
