"""A step across nodes asking for more workers than the whole Ray cluster can hold fails at once, with one line."""
import pytest

from fluxflow.runtime.ray_train_launch import capacity_problem


def test_more_gpu_workers_than_the_cluster_has_gpus_fails_naming_both():
    assert capacity_problem({"CPU": 32.0, "GPU": 4.0}, 8, True, "vae") == (
        "step vae: training.distributed asks for 8 workers with one GPU each; the Ray cluster has 4 GPUs in all")


def test_cpu_workers_count_cpus_and_a_cluster_that_fits_passes():
    assert capacity_problem({"CPU": 1.0}, 2, False, "vae").endswith("has 1 CPU in all")  # was "1 CPUs"
    assert capacity_problem({"CPU": 1.5}, 2, False, "vae").endswith("has 1.5 CPUs in all")
    assert capacity_problem({"CPU": 2.0}, 2, False, "vae") is None
    assert capacity_problem({"CPU": 2.0, "GPU": 2.0}, 2, True, "vae") is None


def test_a_step_across_nodes_asks_ray_for_no_cpu_or_gpu_for_its_task_unless_its_resources_say():
    """The Ray executor's task of a Ray Train step only waits for the Train workers, which hold their own."""
    pytest.importorskip("prefect")
    from flows.ray_steps import step_request
    from fluxflow.config import load_config

    def request(resources: dict | None = None) -> dict:
        step = {"name": "a", "n_epochs": 1, "train_vae": True, **({"resources": resources} if resources else {})}
        config = load_config({"training": {"executor": {"kind": "ray"}, "distributed": {"nodes": 2},
                                           "pipeline": {"steps": [step]}}}).config
        return step_request(config.resolved_steps()[0], 1, True, across_nodes=True)

    assert request() == {}
    assert request({"cpus": 2, "gpus": 1}) == {"CPU": 2.0, "GPU": 1.0}
