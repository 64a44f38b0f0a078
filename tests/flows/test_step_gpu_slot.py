"""Which Prefect API a local step asks for the host's `gpu` slot (flows/step_task.py, flows/gpu_slot.py): not the
temporary server this process started for its run alone, which has no limit (each request cost the step about a
second at its start); yes a kept temporary server (a user may have given it a limit) and any other server. No server
is started: the slot request is recorded, and the step stops as it enters its work."""
from __future__ import annotations

import contextlib
import uuid
from types import SimpleNamespace

import pytest
from helpers_tiny import tiny_config
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows import prefect_server, step_task
from flows.mlflow_runs import TrackingTarget
from fluxflow.config.run_config import run_dict


class EnteredTheStep(Exception):
    """Raised where the step's work begins, after its slot (if any) was taken."""


def slot_requests(tmp_path, monkeypatch, server: prefect_server.TemporaryServer | None, api_url: str) -> list[str]:
    """The gpu_slot requests of one local step task run on the Prefect API `api_url`, `server` being this process's
    temporary server (None: it started none)."""
    requests = []
    monkeypatch.setattr(prefect_server, "_started", server)
    monkeypatch.setattr(step_task, "gpu_slot",
                        lambda who, task_run_id: requests.append(who) or contextlib.nullcontext())
    monkeypatch.setattr(step_task.TaskRunContext, "get", classmethod(lambda cls: SimpleNamespace(
        task_run=SimpleNamespace(id=uuid.uuid4(), flow_run_id=None))))

    def entered(step_name):
        raise EnteredTheStep(step_name)

    monkeypatch.setattr(step_task.together, "meet", entered)
    config = run_dict(tiny_config(tmp_path / "out"))
    tracking = TrackingTarget("sqlite:///unused.db", "", "", "session", "pipeline").to_dict()
    with temporary_settings({PREFECT_API_URL: api_url}), pytest.raises(EnteredTheStep):
        step_task.run_step_task(config, "warm", None, tracking)
    return requests


def temporary_server(port: int, keep: bool) -> prefect_server.TemporaryServer:
    server = prefect_server.TemporaryServer(keep)
    server.port = port
    return server


def test_a_step_on_the_runs_own_temporary_server_asks_for_no_gpu_slot(tmp_path, monkeypatch):
    own = temporary_server(4571, keep=False)
    assert slot_requests(tmp_path, monkeypatch, own, own.api_url) == []


@pytest.mark.parametrize(("server", "api_url"), [
    (temporary_server(4571, keep=True), "http://127.0.0.1:4571/api"),  # kept (--keep-server): it may have a limit
    (temporary_server(4571, keep=False), "http://127.0.0.1:4200/api"),  # a configured server beside an unused one
    (None, "http://127.0.0.1:4200/api")])  # a worker's server
def test_a_step_on_any_other_server_asks_for_the_gpu_slot(tmp_path, monkeypatch, server, api_url):
    assert slot_requests(tmp_path, monkeypatch, server, api_url) == ["Step warm"]
