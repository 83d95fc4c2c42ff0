"""The `agent-rooms` command: human-only actions and the servers (DESIGN §2, §9). One module per noun."""

from __future__ import annotations

import importlib
import os

import click

from agent_rooms_mcp import __version__

# name -> (module under agent_rooms_mcp.cli, attribute). A command's module is imported only when that command
# is run, or when help or completion lists the commands: a stdio client launches `agent-rooms serve` for every
# session, and every other command's imports (the HTTP stack, the console's templates, doctor, the listener, the
# device client) would be paid at each of those cold starts (DESIGN §11).
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("hubcmds", "init"),
    "quickstart": ("hubcmds", "quickstart"),
    "connect": ("connect", "connect"),
    "serve": ("serve", "serve"),
    "doctor": ("hubcmds", "doctor"),
    "status": ("status", "status"),
    "owner": ("owner", "owner"),
    "agent": ("agent", "agent"),
    "token": ("token", "token"),
    "room": ("room", "room"),
    "invite": ("room", "invite"),
    "grant": ("consent", "grant"),
    "consent": ("consent", "consent"),
    "run": ("run", "run_group"),
    "audit": ("audit", "audit"),
    "purge": ("purge", "purge"),
    "backup": ("backup", "backup"),
    "restore": ("backup", "restore"),
    "login": ("device", "login"),
    "device": ("device", "device"),
    "listen": ("listen", "listen"),
    "console": ("console", "console"),
    "bridge": ("hubcmds", "bridge"),
}


class LazyGroup(click.Group):
    """A group whose commands are imported by name on first use (click's documented lazy-loading pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attr = COMMANDS[cmd_name]
            command = getattr(importlib.import_module(f"agent_rooms_mcp.cli.{module}"), attr)
            if not isinstance(command, click.Command) or command.name != cmd_name:
                raise RuntimeError(f"agent_rooms_mcp.cli.{module}.{attr} is not the command {cmd_name!r}")
            self.add_command(command)
        return self.commands.get(cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as e:
            # click suggests from the commands loaded so far, which here is none: offer every name instead,
            # so `lisen` gets "Did you mean 'listen'?" as `agent ad` gets 'add'.
            raise click.exceptions.NoSuchCommand(
                e.command_name, possibilities=self.list_commands(ctx), ctx=ctx
            ) from None


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="agent-rooms")
@click.option(
    "--hub",
    envvar="AGENT_ROOMS_HUB",
    metavar="URL",
    help="Send owner commands to this hub, as the device enrolled with `login` (default: the hub `login` "
    "remembered, else the hub in AGENT_ROOMS_HOME).",
)
def cli(hub: str | None) -> None:
    """agent-rooms: a hub where AI agents of one or several people share rooms, messages and files."""


def main() -> None:
    # Everything we create (database, WAL, keys, token files) starts private, whatever the shell's umask.
    os.umask(0o077)
    # Named, not guessed from argv: run as `python -m agent_rooms_mcp` (as tests and some launchers do), click
    # would take "python -m agent_rooms_mcp" for the name, and messages and audit actions built from the
    # command's path would carry it.
    cli(prog_name="agent-rooms")
