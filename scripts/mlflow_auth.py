"""Start an MLflow tracking server that lets no one in without the credentials of a secret file.

    FLUXFLOW_MLFLOW_AUTH_FILE=/path/to/secret python scripts/mlflow_auth.py mlflow ui --host H --port P ...

    FLUXFLOW_MLFLOW_AUTH_FILE=/path/to/secret python scripts/mlflow_auth.py --check   # the file only: exit 0 or 2

The secret file's first line is `USER:PASSWORD` (12 characters at least: MLflow's rule). Before the server starts,
this script makes USER an admin of MLflow's basic-auth app with exactly that password, in the auth database
FLUXFLOW_MLFLOW_AUTH_DB (a SQLAlchemy URI; default sqlite:///mlflow-auth.db in the working directory): created the
first time, set again at every start. So rotating the password is: change the file, restart the server. MLflow itself
only reads its bootstrap password when the admin does not exist yet, which would leave an old password in place.

Then it replaces itself (exec) with the command given, plus `--app-name basic-auth`, with MLFLOW_AUTH_CONFIG_PATH naming
a generated basic_auth.ini that holds no password, and a fresh MLFLOW_FLASK_SERVER_SECRET_KEY (the CSRF key of the
sign-up page, shared by the workers of this start). The password is never on a command line, in the ini, in the
server's environment or in its log.

Used by scripts/mlflow_ui.sh and by the `mlflow` service of docker/compose.yaml (where only MLflow is installed):
it imports nothing of this repository.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import sys
import tempfile

SECRET_FILE, AUTH_DB = "FLUXFLOW_MLFLOW_AUTH_FILE", "FLUXFLOW_MLFLOW_AUTH_DB"
DEFAULT_AUTH_DB = "sqlite:///mlflow-auth.db"
# What a user other than the admin may do on experiments and models it did not create: read them. Workers and
# `fluxflow-train` use the admin's credentials (one secret), so they may write everywhere.
DEFAULT_PERMISSION = "READ"
# Variables that hold a password and that the server does not need: not passed on.
CLIENT_SECRETS = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD",
                  "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING")


def fail(message: str) -> None:
    print(f"❌ {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def read_secret() -> tuple[str, str]:
    path = os.environ.get(SECRET_FILE)
    if not path:
        fail(f"{SECRET_FILE} is not set: it names the file whose first line is USER:PASSWORD")
    try:
        with open(path, encoding="utf-8") as f:
            user, colon, password = f.readline().strip().partition(":")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{SECRET_FILE}={path}: cannot read it ({type(exc).__name__})")
    if not (user and colon and password):
        fail(f"{SECRET_FILE}={path}: its first line must be USER:PASSWORD (both non-empty)")
    if len(password) < 12:
        fail(f"{SECRET_FILE}={path}: MLflow needs a password of at least 12 characters")
    return user, password


def write_ini(user: str, database_uri: str) -> str:
    """A basic_auth.ini for this start (no password in it: the admin exists before the server reads it). The server
    reads it for as long as it runs and nothing is left to delete it after the exec, so its name comes from its
    content: a restart rewrites the same file instead of leaving one more behind."""
    text = (f"[mlflow]\ndefault_permission = {DEFAULT_PERMISSION}\ndatabase_uri = {database_uri}\n"
            f"admin_username = {user}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    name = hashlib.sha256(f"{os.getuid()}\n{text}".encode()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"fluxflow-mlflow-auth-{name}.ini")
    fd, tmp = tempfile.mkstemp(prefix="fluxflow-mlflow-auth-", suffix=".tmp")  # then renamed: never half-written
    with os.fdopen(fd, "w") as f:
        f.write(text)
    try:
        os.replace(tmp, path)
    except OSError:  # another user's file by that name (a shared /tmp): this start's own file, as it is
        return tmp
    return path


def set_admin(user: str, password: str, database_uri: str) -> list[str]:
    """USER is an admin with PASSWORD in the auth database; returns the other admins (who can still log in)."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(database_uri)
    if store.has_user(user):
        store.update_user(user, password=password, is_admin=True)
    else:
        store.create_user(user, password, is_admin=True)
    return [u.username for u in store.list_users() if u.is_admin and u.username != user]


def main(command: list[str]) -> None:
    if not command:
        fail("usage: FLUXFLOW_MLFLOW_AUTH_FILE=FILE python scripts/mlflow_auth.py mlflow ui|server ARGS... (or "
             "--check: the file only)")
    user, password = read_secret()
    if command == ["--check"]:  # scripts/mlflow_ui.sh, before it says "started": a bad file is its one line, exit 2
        return
    database_uri = os.environ.get(AUTH_DB) or DEFAULT_AUTH_DB
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    others = set_admin(user, password, database_uri)
    if others:
        print(f"⚠️  other admin users in {database_uri} can still log in: {', '.join(others)} (to revoke one: "
              "docs/OPERATIONS.md, 'Rotate and revoke')", file=sys.stderr, flush=True)
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_SECRETS}
    env["MLFLOW_AUTH_CONFIG_PATH"] = write_ini(user, database_uri)
    env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
    print(f"MLflow basic authentication on: admin user '{user}' (password from {SECRET_FILE}), users in "
          f"{database_uri}", file=sys.stderr, flush=True)
    os.execvpe(command[0], [*command, "--app-name", "basic-auth"], env)


if __name__ == "__main__":
    main(sys.argv[1:])
