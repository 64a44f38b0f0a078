"""Credentials from secret files and URLs into the variables Prefect's and MLflow's clients read, and never into
anything the run logs (flows/credentials.py, the config's tracking_uri)."""
from __future__ import annotations

import http.server
import os
import threading

import pytest
from binary_server import binary_protocol_server
from helpers_tiny import tiny_raw
from prefect_ui_server import prefect_under_api

from flows import credentials
from flows.credentials import CredentialsError, apply_secret_files

CLIENT_VARIABLES = ("PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                    "FLUXFLOW_PREFECT_AUTH_FILE", "FLUXFLOW_MLFLOW_AUTH_FILE", "PREFECT_API_URL", "MLFLOW_TRACKING_URI")


@pytest.fixture
def clean_env(monkeypatch):
    for name in CLIENT_VARIABLES:
        # set, then deleted: monkeypatch then removes at the end what the test's code set (apply_secret_files writes
        # os.environ itself); a delenv of a variable not set records nothing, and the secret leaked into later tests
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return monkeypatch


def test_secret_files_fill_in_the_variables_the_clients_read(clean_env, tmp_path):
    (tmp_path / "both").write_text("  ops:pa:ss word  \nsecond line ignored\n")
    clean_env.setenv("FLUXFLOW_PREFECT_AUTH_FILE", str(tmp_path / "both"))
    clean_env.setenv("FLUXFLOW_MLFLOW_AUTH_FILE", str(tmp_path / "both"))
    apply_secret_files()
    assert os.environ["PREFECT_API_AUTH_STRING"] == "ops:pa:ss word"  # the password may hold colons and spaces
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("ops", "pa:ss word")


def test_a_variable_set_directly_wins_over_its_file(clean_env, tmp_path):
    (tmp_path / "file").write_text("ops:from-the-file\n")
    clean_env.setenv("FLUXFLOW_PREFECT_AUTH_FILE", str(tmp_path / "file"))
    clean_env.setenv("PREFECT_API_AUTH_STRING", "ops:from-the-environment")
    apply_secret_files()
    assert os.environ["PREFECT_API_AUTH_STRING"] == "ops:from-the-environment"


@pytest.mark.parametrize("content", ["no-colon-secret", ":secret-only", "", "user-only:"])
def test_an_unusable_secret_file_is_named_without_showing_its_content(clean_env, tmp_path, content):
    (tmp_path / "bad").write_text(content)
    clean_env.setenv("FLUXFLOW_MLFLOW_AUTH_FILE", str(tmp_path / "bad"))
    with pytest.raises(CredentialsError, match="USER:PASSWORD") as raised:
        apply_secret_files()
    assert str(tmp_path / "bad") in str(raised.value)
    assert "secret" not in str(raised.value).replace(str(tmp_path), "")


def test_a_missing_secret_file_is_named(clean_env, tmp_path):
    clean_env.setenv("FLUXFLOW_PREFECT_AUTH_FILE", str(tmp_path / "missing"))
    with pytest.raises(CredentialsError, match="cannot read it"):
        apply_secret_files()


def test_credentials_in_a_server_url_are_moved_out_of_it(clean_env):
    clean_env.setenv("MLFLOW_TRACKING_URI", "https://tracker:p%40ss-word@mlflow.example:5000/path")
    clean_env.setenv("PREFECT_API_URL", "http://ops:another-one@prefect.example:4200/api")
    apply_secret_files()
    assert os.environ["MLFLOW_TRACKING_URI"] == "https://mlflow.example:5000/path"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("tracker", "p@ss-word")
    assert os.environ["PREFECT_API_URL"] == "http://prefect.example:4200/api"
    assert os.environ["PREFECT_API_AUTH_STRING"] == "ops:another-one"


def test_local_stores_and_unreachable_servers_are_not_refusals(clean_env):
    assert credentials.mlflow_refusal("sqlite:///mlflow.db") is None
    assert credentials.mlflow_refusal("http://127.0.0.1:9") is None  # down: the outage path, not a refusal
    assert credentials.prefect_refusal("http://127.0.0.1:9/api") is None


def test_a_url_where_no_http_server_answers_is_unreachable_in_one_line_not_a_traceback(clean_env):
    """A URL naming another service's port (its answer is no HTTP status line): http.client's BadStatusLine went up
    from the start's checks as a traceback, and from the tracking queue's probe of a server to come back."""
    with binary_protocol_server() as port:
        url = f"http://127.0.0.1:{port}"
        assert credentials.unreachable_reason(url) == "what answers there is not an HTTP server (BadStatusLine)"
        assert credentials.mlflow_refusal(url) is None
        assert credentials.prefect_refusal(f"{url}/api") is None


def test_a_password_in_the_configs_tracking_uri_is_refused_without_echoing_it(tmp_path):
    from fluxflow.config import ConfigError, load_config

    raw = tiny_raw(tmp_path / "out")
    raw["tracking"] = {"tracking_uri": "http://tracker:hunter2-hunter2@mlflow.example:5000"}
    with pytest.raises(ConfigError, match="tracking.tracking_uri: holds a password") as raised:
        load_config(raw)
    assert "hunter2" not in str(raised.value)
    raw["tracking"] = {"tracking_uri": "http://mlflow.example:5000"}
    assert load_config(raw).config.tracking.tracking_uri == "http://mlflow.example:5000"


def test_a_prefect_api_url_without_api_is_refused_in_one_line_saying_it_should_end_in_api(clean_env):
    with prefect_under_api() as root:
        clean_env.setenv("PREFECT_API_URL", root)
        assert credentials.prefect_unreachable() == (
            f"no Prefect API at {root} (PREFECT_API_URL): its /health answers 404 Not Found; PREFECT_API_URL should "
            f"be the server's API address, which ends in /api, e.g. {root}/api")
        clean_env.setenv("PREFECT_API_URL", f"{root}/api")
        assert credentials.prefect_unreachable() is None


class AsksForCredentials(http.server.BaseHTTPRequestHandler):
    """A tracking server that answers its health check and 401 to everything else (wrong credentials)."""

    def do_GET(self):  # noqa: N802  (http.server's naming)
        self.send_response(200 if self.path == "/health" else 401)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.mark.slow  # a Prefect flow on the session's test API: a few seconds
def test_a_flow_run_whose_tracking_server_refuses_its_credentials_fails_at_once_with_one_line(
        tmp_path, prefect_api, monkeypatch, capsys):
    from flows.cli_flow_run import run_pipeline_flow
    from fluxflow.config.run_config import resolve_run_config

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AsksForCredentials)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "tracker")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    try:
        # as a worker's flow run: not retried, exit 2
        assert run_pipeline_flow(resolve_run_config(tiny_raw(tmp_path / "out")).config) == 2
    finally:
        server.shutdown()
    printed = capsys.readouterr()
    assert "refused the credentials of MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (401" in printed.err
    assert "not-the-password" not in printed.out + printed.err
    assert not (tmp_path / "out" / "checkpoints").exists()  # nothing trained without its records


def test_the_commands_that_read_the_store_say_a_refusal_or_an_unusable_secret_file_in_one_line(clean_env, tmp_path,
                                                                                              capsys):
    """fluxflow-compare showed MLflow's 401 as a 36-line traceback; fluxflow-generate --model (and serve_model.sh,
    through the same check) as MLflow's text, with "a pipeline with a flow step registers its model", and neither
    said that the secret file could not be used."""
    from flows import cli_compare, cli_generate, env
    from flows.registry import served_model_problem

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AsksForCredentials)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    clean_env.setenv("MLFLOW_TRACKING_USERNAME", "tracker")
    clean_env.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    refused = f"the MLflow server at {url} refused the credentials of MLFLOW_TRACKING_USERNAME/"
    try:
        assert cli_compare.main(["--registered-model", "m", "--tracking-uri", url,
                                 "--output", str(tmp_path / "cmp")]) == 2
        assert cli_generate.main(["--model", "models:/m@champion", "--tracking-uri", url, "--prompt", "a red circle",
                                  "--output", str(tmp_path / "img")]) == 2
        printed = capsys.readouterr()
        lines = printed.err.strip().splitlines()
        assert len(lines) == 2 and all(refused in line for line in lines), printed.err
        assert served_model_problem("models:/m@champion", url).startswith(f"models:/m@champion: {refused}")

        clean_env.setattr(env, "CREDENTIALS_PROBLEM", "FLUXFLOW_MLFLOW_AUTH_FILE (/run/secrets/x): its first line "
                                                      "must be USER:PASSWORD")
        assert cli_compare.main(["--registered-model", "m", "--tracking-uri", url,
                                 "--output", str(tmp_path / "cmp")]) == 2
        assert "FLUXFLOW_MLFLOW_AUTH_FILE (/run/secrets/x): its first line" in capsys.readouterr().err
    finally:
        server.shutdown()
    assert "not-the-password" not in printed.out + printed.err
