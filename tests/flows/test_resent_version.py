"""A registered version made twice by a resent request (MLflow's client sends a request again when its answer was
lost: a server killed after it committed, then started again) leaves one version."""
from mlflow.tracking import MlflowClient

from flows.registry import create_version_once, versions_of


class ResendingClient(MlflowClient):
    def create_model_version(self, *args, **kwargs):
        super().create_model_version(*args, **kwargs)
        return super().create_model_version(*args, **kwargs)


def test_a_version_created_twice_by_a_resent_request_leaves_one_version(mlflow_store, tmp_path):
    client = ResendingClient(mlflow_store)
    client.create_registered_model("m")
    version = create_version_once(client, "m", {"fluxflow.step_name": "flow"}, source=str(tmp_path / "model"))
    assert [v.version for v in versions_of(client, "m")] == [version.version]
    assert versions_of(client, "m")[0].tags["fluxflow.step_name"] == "flow"
