"""Credentials for Prefect and MLflow servers that ask for them, read from the environment or from secret files.

The servers' own mechanisms do the checking (docs/OPERATIONS.md, "Servers other hosts can reach"): a Prefect server
started with PREFECT_SERVER_API_AUTH_STRING answers 401 to clients without the same PREFECT_API_AUTH_STRING, and an
MLflow server started with `--app-name basic-auth` answers 401 to clients without MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD. Both clients read those variables themselves, so all this module does is fill them in, before
Prefect or MLflow is imported (flows/env.py calls `apply_secret_files`):

- FLUXFLOW_PREFECT_AUTH_FILE / FLUXFLOW_MLFLOW_AUTH_FILE name a file whose first line is `user:password` (one file may
  serve both). A variable set directly wins over its file.
- `user:password@` written into MLFLOW_TRACKING_URI or PREFECT_API_URL is moved into those variables, so that the URL
  the run logs, prints and passes to its tasks as a parameter holds no secret.

Nothing here ever prints a password: messages name the variable or the file. This module imports neither Prefect nor
MLflow (the scripts call `python -m flows.credentials check` before they start a worker or deploy).
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

from fluxflow.errors import NonRetryable

PREFECT_FILE, MLFLOW_FILE = "FLUXFLOW_PREFECT_AUTH_FILE", "FLUXFLOW_MLFLOW_AUTH_FILE"
PREFECT_AUTH, MLFLOW_USER, MLFLOW_PASSWORD = "PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_USERNAME", \
    "MLFLOW_TRACKING_PASSWORD"
PROBE_TIMEOUT_S = 5.0


class CredentialsError(NonRetryable, ValueError):
    """A secret file that cannot be used, or a server that refuses the credentials: the one line to print. Running
    again without a change fails the same way, so a flow run that meets it fails at once with that line (and
    `fluxflow-train` exits 2, flows/fault_policy.py)."""


def read_secret_file(variable: str) -> tuple[str, str] | None:
    """(user, password) from the file named by environment variable `variable`; None when it is not set."""
    path = os.environ.get(variable)
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"{variable}={path}: cannot read it ({type(exc).__name__}: "
                               f"{getattr(exc, 'strerror', None) or 'not UTF-8'})") from None
    user, colon, password = line.partition(":")
    if not (user and colon and password):
        raise CredentialsError(f"{variable}={path}: its first line must be USER:PASSWORD (both non-empty)")
    return user, password


def _move_userinfo(variable: str) -> tuple[str, str] | None:
    """`user:password@` of the URL in `variable`, removed from it; None when it has none."""
    url = os.environ.get(variable, "")
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return None
    host = parts.netloc.rpartition("@")[2]
    os.environ[variable] = urllib.parse.urlunsplit(parts._replace(netloc=host))
    return urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password)


def apply_secret_files() -> None:
    """Fill in the clients' variables from the secret files and from URLs with credentials (see the module's
    docstring). Raises CredentialsError for a file that is set but unusable."""
    # Per server: the URL's variable, its secret file's, the variable whose presence means "set", and what to set.
    servers = (("PREFECT_API_URL", PREFECT_FILE, PREFECT_AUTH,
                lambda user, password: {PREFECT_AUTH: f"{user}:{password}"}),
               ("MLFLOW_TRACKING_URI", MLFLOW_FILE, MLFLOW_PASSWORD,
                lambda user, password: {MLFLOW_USER: user, MLFLOW_PASSWORD: password}))
    for url_variable, _, is_set, variables in servers:  # every URL first: a bad file leaves none holding a secret
        in_url = _move_userinfo(url_variable)
        if in_url and is_set not in os.environ:
            os.environ.update(variables(*in_url))
    for _, file_variable, is_set, variables in servers:
        found = is_set not in os.environ and read_secret_file(file_variable)
        if found:
            os.environ.update(variables(*found))


def _request(url: str, user_password: str | None, method: str = "GET") -> urllib.request.Request:
    """A JSON API request to `url` with these Basic credentials (None: none)."""
    request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None,
                                     headers={"Content-Type": "application/json"})
    if user_password:
        token = base64.b64encode(user_password.encode("utf-8")).decode("ascii")
        request.add_header("Authorization", f"Basic {token}")
    return request


def _mlflow_user_password() -> str | None:
    """`user:password` for the MLflow server from MLFLOW_TRACKING_USERNAME/PASSWORD, or None when no password is set."""
    password = os.environ.get(MLFLOW_PASSWORD)
    return f"{os.environ.get(MLFLOW_USER, '')}:{password}" if password else None


def _answers_401(url: str, user_password: str | None, method: str = "GET") -> bool:
    """Whether `url` answers 401 to a request with these Basic credentials (None: none). No server's URL, or
    unreachable: False (an outage is `unreachable_reason`'s to report)."""
    if not url.startswith(("http://", "https://")):
        return False
    try:
        with urllib.request.urlopen(_request(url, user_password, method), timeout=PROBE_TIMEOUT_S):
            return False
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    except (OSError, ValueError, http.client.HTTPException):
        return False


def unreachable_reason(url: str) -> str | None:
    """Why the server at `url` (Prefect's API, an MLflow tracking server) gets no HTTP answer at its /health (refused,
    no route, DNS, a timeout), or None when it gets any (an error status included: a proxy without /health, a server
    asking for credentials); None too for what is no server (a sqlite store, a path). One request, no retries: the
    clients of MLflow and Prefect retry a refused connection for minutes."""
    return _health(url)[1]


def _health(url: str) -> tuple[int | None, str | None]:
    """(the HTTP status the server at `url` answers its /health with, None) or (None, why it gets no answer); (None,
    None) for what is no server's URL. One request."""
    if not url.startswith(("http://", "https://")):
        return None, None
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S) as response:
            return response.status, None
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError) as exc:  # URLError is an OSError; a timeout too
        return None, str(getattr(exc, "reason", exc))
    except http.client.HTTPException as exc:  # another service on that port: a traceback before
        return None, f"what answers there is not an HTTP server ({type(exc).__name__})"


def prefect_unreachable() -> str | None:
    """Why the Prefect server at PREFECT_API_URL does not answer at all, or answers as no Prefect API, or None. A run
    cannot start without its orchestrator, unlike without MLflow (whose records can wait)."""
    api_url = os.environ.get("PREFECT_API_URL", "")
    status, reason = _health(api_url)  # one request answers both questions
    if reason:
        return (f"the Prefect server at {api_url} (PREFECT_API_URL) does not answer ({reason}): start it "
                "(make server), or unset PREFECT_API_URL to run on a temporary server")
    if status == 404:
        # The UI's address, copied without /api: every Prefect API answers its /health (the client's own check),
        # and the client's first call (/admin/version) failed with a 40-line traceback.
        ending = "" if api_url.rstrip("/").endswith("/api") else f", e.g. {api_url.rstrip('/')}/api"
        return (f"no Prefect API at {api_url} (PREFECT_API_URL): its /health answers 404 Not Found; PREFECT_API_URL "
                f"should be the server's API address, which ends in /api{ending}")
    return None


def prefect_refusal(api_url: str | None = None) -> str | None:
    """Why the Prefect server at `api_url` (default PREFECT_API_URL) refuses this process, or None."""
    api_url = api_url or os.environ.get("PREFECT_API_URL", "")
    if not _answers_401(f"{api_url.rstrip('/')}/flows/filter", os.environ.get(PREFECT_AUTH), "POST"):
        return None
    given = f"the credentials of {PREFECT_AUTH}" if os.environ.get(PREFECT_AUTH) else "no credentials"
    return (f"the Prefect server at {api_url} refused {given} (401 Unauthorized): set {PREFECT_FILE} to the file "
            f"holding its USER:PASSWORD (the server's PREFECT_SERVER_API_AUTH_STRING), or {PREFECT_AUTH}")


def mlflow_refusal(tracking_uri: str | None = None) -> str | None:
    """Why the MLflow server at `tracking_uri` (default MLFLOW_TRACKING_URI) refuses this process, or None."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    user_password = _mlflow_user_password()
    if not _answers_401(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1", user_password):
        return None
    given = f"the credentials of {MLFLOW_USER}/{MLFLOW_PASSWORD}" if user_password else "no credentials"
    return (f"the MLflow server at {uri} refused {given} (401 Unauthorized): set {MLFLOW_FILE} to the file holding "
            f"its USER:PASSWORD, or {MLFLOW_USER} and {MLFLOW_PASSWORD}")


def mlflow_answer(tracking_uri: str, path: str) -> dict | None:
    """The JSON object the MLflow server at `tracking_uri` answers to GET `path` (e.g. "/api/2.0/mlflow/..."), with
    this process's credentials, or None for any failure (no answer, an error status, a timeout, not a JSON object).
    One request, no retries, PROBE_TIMEOUT_S: for a best-effort check, where MLflow's client retries for minutes."""
    try:
        with urllib.request.urlopen(_request(f"{tracking_uri.rstrip('/')}{path}", _mlflow_user_password()),
                                    timeout=PROBE_TIMEOUT_S) as response:
            answer = json.loads(response.read())
    except (OSError, ValueError, http.client.HTTPException):  # HTTPError and timeouts are OSErrors; bad JSON a Value
        return None
    return answer if isinstance(answer, dict) else None


def main(argv: list[str]) -> int:
    """`python -m flows.credentials check`: exit 1 with one line per server that refuses these credentials (the
    secret files applied first), 0 otherwise. The scripts run it before a worker or a deployment talks to them."""
    if argv != ["check"]:
        print("usage: python -m flows.credentials check", file=sys.stderr)
        return 2
    try:
        apply_secret_files()
    except CredentialsError as exc:
        print(f"❌ {exc}", file=sys.stderr)
        return 1
    problems = [p for p in (prefect_refusal(), mlflow_refusal()) if p]
    for problem in problems:
        print(f"❌ {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
