"""The `fracture` command: run the system, migrate the database, manage users, classify files in process."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import click

from fracture.config import get_settings


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


# ---------------------------------------------------------------- users


@main.group()
def users() -> None:
    """User accounts and API tokens (passwords and tokens are shown once, never stored in clear)."""


def _accounts_session():  # type: ignore[no-untyped-def]
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
            creds = create_user(session, name, admin=admin)
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
            count = revoke_tokens(session, name, token_id)
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
            token = issue_token(session, get_user(session, name), label)
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
            chosen = set_password(session, name, password)
    except AccountError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"password of {name} changed" + ("" if password else f": {chosen}"))


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
    from fracture.supervisor import up as run_up

    sys.exit(run_up(host, port, broker, inference_concurrency, echo=click.echo))


# ---------------------------------------------------------------- classify in process


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="CSV to write")
@click.option("--model", "model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="checkpoint file (default: the active model of $FRACTURE_HOME)")
@click.option("--batch-size", type=int, default=None, help="images per forward pass (default: $BATCH_SIZE)")
def classify(paths: tuple[Path, ...], out: Path, model: Path | None, batch_size: int | None) -> None:
    """Classify image files, folders (recursively) and zips; write path,prediction,probability,... to --out."""
    from tqdm import tqdm

    from fracture.checkpoint import CheckpointError
    from fracture.inference import Predictor
    from fracture.inputs import ZipBudget, collect

    settings = get_settings()
    checkpoint, version_name = (model, f"file:{model.name}") if model else _active_checkpoint()
    try:
        predictor = Predictor.from_file(
            checkpoint, batch_size=batch_size or settings.batch_size, max_pixels=settings.max_image_pixels
        )
    except CheckpointError as e:
        raise click.ClickException(str(e)) from None

    items = collect(list(paths), settings)
    budget = ZipBudget(settings)
    errors = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f, tqdm(total=len(items), unit="img", file=sys.stderr) as bar:
        writer = csv.writer(f)
        writer.writerow(["path", "prediction", "probability", "model_version", "error"])
        # Blocks bound memory when zips are read into it; within a block, batches run on the model.
        block = 256
        for start in range(0, len(items), block):
            part = items[start : start + block]
            outcome: list[tuple[str, float | None, str | None]] = [("", None, None)] * len(part)
            sources: list[object] = []
            where: list[int] = []
            for i, item in enumerate(part):
                source: object = item.error or item.path or (budget.read(item) if item.member else "no data")
                if item.error or isinstance(source, str):
                    outcome[i] = ("", None, item.error or str(source))
                else:
                    sources.append(source)
                    where.append(i)
            for pred in predictor.predict(sources):  # type: ignore[arg-type]
                outcome[where[pred.index]] = (pred.label or "", pred.probability, pred.error)
            for item, (label, prob, error) in zip(part, outcome, strict=True):
                errors += error is not None
                writer.writerow([item.name, label, "" if prob is None else f"{prob:.6f}", version_name, error or ""])
            bar.update(len(part))
    budget.close()
    click.echo(f"{len(items)} file(s), {errors} error(s) -> {out}", err=True)


def _active_checkpoint() -> tuple[Path, str]:
    """The active model of this installation (seeding the release model on a fresh one)."""
    from fracture.db import session_scope
    from fracture.migrate import upgrade
    from fracture.registry import active_version, checkpoint_path, ensure_seed_model

    settings = get_settings()
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        ensure_seed_model(session, settings)
        version = active_version(session)
        if version is None:
            raise click.ClickException(
                "no trained model is active in this installation: train one (`fracture train`) or pass --model"
            )
        return checkpoint_path(settings, version), version.name


# The trainer's commands (`fracture train`, `fracture audit`, ...) join the group.
def _add_trainer_commands() -> None:
    from trainer.cli import commands

    for command in commands():
        main.add_command(command)


_add_trainer_commands()
