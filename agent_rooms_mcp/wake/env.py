"""The environment a woken CLI starts with: an allowlist, then a denylist, then what the run sets.

Whatever is in a CLI's environment, the model can read (`env` in a tool shell), and both CLIs pass
their whole environment on to MCP servers or tool shells (research/wake.md §5.1). So nothing is
inherited by default: a name reaches the child only if it is on the allowlist (§5.2) and not on
the denylist (§5.3), or if the owner configured it for this agent (`extra`) and it is not denied.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

__all__ = ["BASE_ALLOW", "TOOL_ALLOW", "is_denied", "scrubbed_env"]

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

# What a run sets itself; `extra` may not replace these, since the wake depth is a spawn cap.
_RUN_ID = "AGENT_ROOMS_RUN_ID"
_DEPTH = "AGENT_ROOMS_WAKE_DEPTH"


def is_denied(name: str) -> bool:
    """True if name is on the denylist of research/wake.md §5.3 (case-insensitive)."""
    return _DENIED.search(name) is not None


def _auth_allowed(name: str, tool: str) -> bool:
    if name in _AUTH_ALLOW[tool]:
        return True
    return tool == "openclaw" and _OPENCLAW_KEY.fullmatch(name) is not None and _NEVER.search(name) is None


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # lstat, not stat: a symlink planted at this path would send the CLI's temp files elsewhere.
    if not stat.S_ISDIR(path.lstat().st_mode):
        raise NotADirectoryError(f"{path} is not a directory")
    path.chmod(0o700)  # mkdir's mode is filtered by the umask, and the directory may already exist
    return path


def check_extra(name: str, value: str, tool: str) -> None:
    """May an owner give this variable to an agent of `tool`? ValueError naming it (never its value) if not.

    Checked when the owner sets it and again at every spawn, so a denylist that grows applies to values
    stored before."""
    if tool not in TOOL_ALLOW:
        raise ValueError(f"unknown tool {tool!r}: expected one of {', '.join(sorted(TOOL_ALLOW))}")
    if not _NAME.fullmatch(name) or "\0" in value:
        raise ValueError(f"environment variable {name!r} is not a valid name=value pair")
    if name.upper().startswith("AGENT_ROOMS_"):
        raise ValueError(f"environment variable {name} is reserved for agent-rooms and cannot be configured")
    if is_denied(name) and not _auth_allowed(name, tool):
        raise ValueError(f"environment variable {name} is denied for {tool} (it looks like a credential or marker)")


def scrubbed_env(
    parent: Mapping[str, str],
    *,
    tool: str,
    run_dir: Path,
    run_id: str,
    depth: int,
    extra: Mapping[str, str] = MappingProxyType({}),
) -> dict[str, str]:
    """The environment for one woken CLI. Creates <run_dir>/tmp (mode 0700) for its TMPDIR.

    Raises ValueError for an unknown tool, or for an `extra` name that is denied for this tool or
    not a valid variable name; the message names the variable, never its value.
    """
    if tool not in TOOL_ALLOW:
        raise ValueError(f"unknown tool {tool!r}: expected one of {', '.join(sorted(TOOL_ALLOW))}")
    if depth < 0:
        raise ValueError(f"wake depth must be >= 0, got {depth}")
    for name, value in extra.items():
        check_extra(name, value, tool)

    allow = BASE_ALLOW | TOOL_ALLOW[tool]
    env = {name: value for name, value in parent.items() if name in allow and not is_denied(name)}
    env.setdefault("TZ", "UTC")
    env["TERM"] = "dumb"  # no colour codes or cursor movement in output we parse
    env["NO_COLOR"] = "1"
    env["TMPDIR"] = os.fspath(_private_dir(run_dir / "tmp"))
    if tool == "claude":
        env["DISABLE_AUTOUPDATER"] = "1"  # a wake must not rewrite the binary under a running supervisor
        env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] = "1"
    env.update(extra)
    # Last, so nothing above can replace them: the MCP bridge and the depth cap rely on both.
    env[_RUN_ID] = run_id
    env[_DEPTH] = str(depth)
    return env
