"""Lines a run says about counts: `fluxflow-train`'s line per step at the end, the flow's warning about records MLflow
did not take. A count of 1 reads singular ("1 epoch", "1 record"): `make demo`'s one-epoch steps said "1 epochs"."""
from __future__ import annotations

import logging
from types import SimpleNamespace

from helpers_tiny import tiny_config


def test_the_end_of_a_run_says_1_epoch_of_a_one_epoch_step(tmp_path, monkeypatch, capsys):
    from flows import cli_flow_run

    ref = {"uri": "out/warm/final.pt", "sha256": "0" * 64, "step_name": "warm", "step_key": "k", "global_step": 2,
           "epoch": 1}
    outcomes = [{"ref": ref, "result": {"step_name": "warm", "outcome": "epochs_done", "epochs_done": epochs,
                                        "final_metrics": {}, "trained": trained, "resumed_from": None},
                 "run_id": None, "run_url": None} for epochs, trained in ((1, False), (2, True))]
    state = SimpleNamespace(is_completed=lambda: True, result=lambda: outcomes,
                            state_details=SimpleNamespace(flow_run_id="id"))
    monkeypatch.setattr(cli_flow_run, "api_url_for_run", lambda: None)  # no Prefect server, no flow: its outcome
    monkeypatch.setattr(cli_flow_run, "pipeline_flow", lambda *args, **kwargs: state)
    monkeypatch.setattr(cli_flow_run, "print_where_to_look", lambda *args: None)
    assert cli_flow_run.run_pipeline_flow(tiny_config(tmp_path / "out")) == 0
    assert capsys.readouterr().out.splitlines() == [  # was "1 epochs"
        "Pipeline finished:",
        "  warm: epochs_done (already complete, skipped), 1 epoch, out/warm/final.pt",
        "  warm: epochs_done, 2 epochs, out/warm/final.pt"]


def test_one_record_mlflow_did_not_take_is_said_as_one(monkeypatch, caplog):
    from flows import pipeline_flow

    class Stalled:  # MLflow does not answer: one record (the run's end) stays queued
        def put(self, call):
            return 1

        def wait(self, seq, stall_s):
            return False

        def pending(self):
            return 1

    monkeypatch.setattr(pipeline_flow, "TRACKING", Stalled())
    monkeypatch.setattr(pipeline_flow, "get_run_logger", lambda: logging.getLogger("flows.test_run_lines"))
    run = SimpleNamespace(client=SimpleNamespace(tracking_uri="http://mlflow:5000"), terminate=lambda status: None)
    with caplog.at_level(logging.WARNING, logger="flows.test_run_lines"):
        assert not pipeline_flow.send_records(run, "FINISHED", stall_s=1)
    assert "MLflow (http://mlflow:5000) did not answer for 1 s: 1 record not sent. The metrics" in caplog.text
