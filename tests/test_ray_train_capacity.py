"""A step across nodes asking for more workers than the whole Ray cluster can hold fails at once, with one line."""
import pytest

from fluxflow.runtime.ray_train_launch import check_capacity


def test_more_gpu_workers_than_the_cluster_has_gpus_fails_naming_both():
    with pytest.raises(RuntimeError) as caught:
        check_capacity({"CPU": 32.0, "GPU": 4.0}, 8, True, "vae")
    assert str(caught.value) == ("step vae: training.distributed asks for 8 workers with one GPU each; the Ray "
                                 "cluster has 4 GPUs in all")


def test_cpu_workers_count_cpus_and_a_cluster_that_fits_passes():
    with pytest.raises(RuntimeError, match="has 1 CPUs in all"):
        check_capacity({"CPU": 1.0}, 2, False, "vae")
    check_capacity({"CPU": 2.0}, 2, False, "vae")
    check_capacity({"CPU": 2.0, "GPU": 2.0}, 2, True, "vae")
