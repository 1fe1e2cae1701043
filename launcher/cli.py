"""The `fracture` command: run the system, migrate the database, manage users, classify files, train."""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fracture.config import get_settings
from launcher.datasets_cli import datasets as datasets_commands
from launcher.schedules_cli import schedules as schedules_commands
from trainer.cli import commands as trainer_commands

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


@click.group()
def main() -> None:
    """Classify bone X-rays as fractured / not fractured; all state lives under $FRACTURE_HOME."""


# ---------------------------------------------------------------- database


@main.group()
def db() -> None:
    """Database migrations (the only way the schema is made)."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Migrate the database up to REVISION (default: head)."""
    from fracture.migrate import current, upgrade

    url = get_settings().database_url
    upgrade(url, revision)
    click.echo(f"database at revision {current(url)}")


@db.command("current")
def db_current() -> None:
    """Print the database's current revision."""
    from fracture.migrate import current

    click.echo(current(get_settings().database_url) or "(empty database)")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Migrate the database down to REVISION ("base" empties it)."""
    from fracture.migrate import current, downgrade

    url = get_settings().database_url
    downgrade(url, revision)
    click.echo(f"database at revision {current(url) or '(empty)'}")


# ---------------------------------------------------------------- backup and restore


@main.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
def backup(out: Path) -> None:
    """Write the database and storage (and the web's key under FRACTURE_HOME) to the tar OUT, with a manifest.

    Safe while the system runs: the database is copied consistently (SQLite's backup API, pg_dump) before storage.
    OUT ending .gz or .tgz is compressed (slower; model artifacts and images gain little).
    """
    from launcher.backup import BackupError
    from launcher.backup import backup as write_backup

    try:
        write_backup(get_settings(), out, echo=click.echo)
    except BackupError as e:
        raise click.ClickException(str(e)) from None


@main.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="replace the database and storage of an installation that holds data")
def restore(archive: Path, force: bool) -> None:
    """Restore a `fracture backup` ARCHIVE into this installation (stop it first), then migrate it to head."""
    from launcher.backup import BackupError
    from launcher.backup import restore as read_backup

    try:
        read_backup(get_settings(), archive, force, echo=click.echo)
    except BackupError as e:
        raise click.ClickException(str(e)) from None


# ---------------------------------------------------------------- users


# Who the audit log names for a change made with this command (fracture.audit_log.CLI; not imported here, so that
# the command starts without the database's modules).
CLI_ACTOR = "cli"


@main.group()
def users() -> None:
    """User accounts and API tokens (passwords and tokens are shown once, never stored in clear).

    Every change is recorded in the audit log (the /audit page) with "cli" as the actor."""


def _accounts_session() -> AbstractContextManager[Session]:
    from fracture.db import session_scope
    from fracture.migrate import upgrade

    url = get_settings().database_url
    upgrade(url)
    return session_scope(url)


@users.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="may retrain, schedule, promote models and see every job")
@click.option("--json", "as_json", is_flag=True, help='print {"username", "password", "token"} only')
def users_create(name: str, admin: bool, as_json: bool) -> None:
    """Create user NAME; print a one-time password and an API token."""
    from fracture.accounts import AccountError, create_user

    try:
        with _accounts_session() as session:
            creds = create_user(session, name, admin=admin, actor=CLI_ACTOR)
    except AccountError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(creds.as_json())
        return
    click.echo(f"created {'admin' if admin else 'user'} {creds.username}")
    click.echo(f"password: {creds.password}")
    click.echo(f"API token: {creds.token}   (send it as 'Authorization: Bearer <token>')")
    click.echo("Both are shown only now; neither is stored in clear.")


@users.command("list")
def users_list() -> None:
    """List users with their role and live API tokens."""
    from sqlalchemy import select

    from fracture.models import User

    with _accounts_session() as session:
        for user in session.scalars(select(User).order_by(User.id)):
            live = [t for t in user.tokens if t.revoked_at is None]
            used = max((t.last_used_at for t in live if t.last_used_at), default=None)
            role = "admin" if user.is_admin else "user"
            state = "" if user.active else " (disabled)"
            seen = f", last used {used:%Y-%m-%d %H:%M}" if used else ""
            ids = ", ".join(f"#{t.id}" for t in live) or "none"
            click.echo(f"{user.username}\t{role}{state}\ttokens: {ids}{seen}")


@users.command("revoke-token")
@click.argument("name", required=False)
@click.option("--id", "token_id", type=int, help="revoke only this token (see `fracture users list`)")
def users_revoke_token(name: str | None, token_id: int | None) -> None:
    """Revoke every API token of user NAME, or the one token --id."""
    from fracture.accounts import AccountError, revoke_tokens

    try:
        with _accounts_session() as session:
            count = revoke_tokens(session, name, token_id, actor=CLI_ACTOR)
    except AccountError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"revoked {count} token(s)")


@users.command("create-token")
@click.argument("name")
@click.option("--label", default="cli", show_default=True, help="a name to tell the token apart")
def users_create_token(name: str, label: str) -> None:
    """Issue another API token for user NAME (printed once)."""
    from fracture.accounts import AccountError, get_user, issue_token

    try:
        with _accounts_session() as session:
            token = issue_token(session, get_user(session, name), label, actor=CLI_ACTOR)
    except AccountError as e:
        raise click.ClickException(str(e)) from None
    click.echo(token)


@users.command("set-password")
@click.argument("name")
@click.option("--password", prompt=True, prompt_required=False, hide_input=True, confirmation_prompt=True,
              default=None, help="the new password (default: a random one, printed once)")
def users_set_password(name: str, password: str | None) -> None:
    """Set user NAME's password (random unless --password); their browser sessions end."""
    from fracture.accounts import AccountError, set_password

    if password is not None and len(password) < 10:
        raise click.ClickException("a password needs at least 10 characters")
    try:
        with _accounts_session() as session:
            chosen = set_password(session, name, password, actor=CLI_ACTOR)
    except AccountError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"password of {name} changed" + ("" if password else f": {chosen}"))


@users.command("admin")
@click.argument("name")
@click.option("--remove", is_flag=True, help="make NAME an ordinary user again")
def users_admin(name: str, remove: bool) -> None:
    """Make user NAME an admin (or, with --remove, an ordinary user; never the last enabled admin)."""
    from fracture.accounts import AccountError, set_admin

    try:
        with _accounts_session() as session:
            set_admin(session, name, not remove, actor=CLI_ACTOR)
    except AccountError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{name} is {'no longer ' if remove else 'now '}an admin")


@users.command("disable")
@click.argument("name")
def users_disable(name: str) -> None:
    """Disable user NAME: no login, tokens and sessions stop working (never the last enabled admin)."""
    _set_active(name, False)


@users.command("enable")
@click.argument("name")
def users_enable(name: str) -> None:
    """Enable user NAME again (their tokens that were not revoked work again)."""
    _set_active(name, True)


def _set_active(name: str, active: bool) -> None:
    from fracture.accounts import AccountError, set_active

    try:
        with _accounts_session() as session:
            set_active(session, name, active, actor=CLI_ACTOR)
    except AccountError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{name} is {'enabled' if active else 'disabled'}")


# ---------------------------------------------------------------- run everything


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address the web server binds to")
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--broker", type=click.Choice(["auto", "redis", "sqlite"]), default="auto", show_default=True,
              help="auto: $REDIS_URL if set, else a private redis-server if installed, else embedded SQLite")
@click.option("--inference-concurrency", default=1, show_default=True, type=int,
              help="inference worker processes (each runs batches with all of torch's threads)")
def up(host: str, port: int, broker: str, inference_concurrency: int) -> None:
    """Migrate, then run web, inference worker, training worker and beat until Ctrl-C."""
    from launcher.supervisor import up as run_up

    sys.exit(run_up(host, port, broker, inference_concurrency, echo=click.echo))


# ---------------------------------------------------------------- classify in process


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="CSV to write")
@click.option("--model", "model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="checkpoint file (default: the active model of an existing installation, else the release model)")
@click.option("--batch-size", type=int, default=None, help="images per forward pass (default: $BATCH_SIZE)")
def classify(paths: tuple[Path, ...], out: Path, model: Path | None, batch_size: int | None) -> None:
    """Classify image files, folders (recursively) and zips; write one CSV row per file to --out.

    Runs in this process and needs no installation: nothing is written but the CSV.
    """
    from launcher.classify import ModelMissing, classify_files, default_model

    settings = get_settings()
    try:
        checkpoint, version_name = (model, f"file:{model.name}") if model else default_model(settings)
        count, errors, flagged = classify_files(list(paths), out, checkpoint, version_name, settings, batch_size)
    except ModelMissing as e:
        raise click.ClickException(str(e)) from None
    unlike = f", {flagged} unlike the model's training data (in_distribution false)" if flagged else ""
    click.echo(f"{count} file(s), {errors} error(s){unlike} -> {out}", err=True)


main.add_command(datasets_commands)
main.add_command(schedules_commands)

# The trainer's commands (`fracture train`, `fracture audit`, ...) join the group.
for _command in trainer_commands():
    main.add_command(_command)
