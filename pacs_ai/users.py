"""``pacs-ai users add NAME --role ROLE``: a dashboard user's entry for the configuration,
with the password hashed (scrypt); the configuration accepts hashed passwords only."""

from __future__ import annotations

import sys

import click


@click.group()
def users() -> None:
    """Dashboard users (monitor.users in the configuration)."""


@users.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["admin", "read-only"]),
    default="read-only",
    show_default=True,
    help="admin may also retry, resend, release and discard jobs.",
)
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input instead of asking twice.",
)
def add(name: str, role: str, *, password_stdin: bool) -> None:
    """Print NAME's entry for monitor.users, with the password's hash (never the password).

    Paste the printed line under ``monitor: users:`` and restart ``pacs-ai serve``.
    """
    from monitor.passwords import hash_password  # noqa: PLC0415

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        raise click.UsageError("the password needs at least 8 characters")
    if any(c.isspace() or c == ":" for c in name) or not 0 < len(name) <= 64:
        raise click.UsageError("NAME: 1 to 64 characters, no spaces or colons")
    click.echo("# under monitor: users: in the configuration")
    click.echo(f'- {{name: "{name}", role: {role}, password_hash: "{hash_password(password)}"}}')
