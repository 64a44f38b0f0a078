"""bench/gpu_check.py's entry point runs end to end in its CPU dry run (the GPU figures need a CUDA machine)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_dry_run_measures_the_flow_step_and_a_two_step_pipeline(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry-run", "--pipeline-batches", "2",
                           "--results-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = [(r["kind"], r["batch"], r["compile"]) for r in result["rows"]]
    assert rows == [("flow", 2, False), ("flow", 4, False), ("pipeline", 4, False)]
    assert all(r["s_per_batch"] > 0 for r in result["rows"]) and result["rows"][0]["flops_per_step"] > 0
    assert result["rows"][2]["steps"] == ["vae", "flow"]
    assert result["skipped"] == ["torchrun: fewer than 2 GPUs"]
    assert "### gpu_check" in done.stdout


def test_without_a_gpu_the_real_run_refuses_and_points_at_the_dry_run():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the real run would start")
    from bench import gpu_check

    with pytest.raises(SystemExit, match="--dry-run"):
        gpu_check.main([])


def test_the_real_run_configs_validate_at_real_size(tmp_path):
    """What the GPU run builds, checked here without building it: the real_256 model and the pipeline config."""
    from types import SimpleNamespace

    from bench import gpu_check
    from bench.throughput import step_config
    from fluxflow.config.model_sizes import parameter_counts

    model = gpu_check.real_model(dry_run=False)
    config, step = step_config("flow", 256, 128, model, "bf16", compile=True)
    assert config.training.compile and config.model.text_embedding_dim == 768 and step.train_diff
    assert parameter_counts(config.model, 3)["flow_processor"] == 180_778_768  # configs/real_256.yaml's flow model
    args = SimpleNamespace(dry_run=False, pipeline_batches=20)
    pipeline = gpu_check.pipeline_config(args, model, 256, 1, tmp_path)
    assert [s.name for s in pipeline.resolved_steps()] == ["vae", "flow"]
    assert (pipeline.training.batch_size, pipeline.training.precision, pipeline.data.img_size) == (64, "bf16", 256)
    assert [s.name for s in gpu_check.pipeline_config(args, model, 256, 2, tmp_path).resolved_steps()] == ["flow"]


def test_a_failing_section_keeps_the_rows_measured_before_it_and_fails_the_run(tmp_path, monkeypatch):
    """A first GPU run whose compiled flow row or pipeline raises must still hand back the rows measured so far (in
    the results file, rewritten after each section, which also survives the shell script's 10-minute kill)."""
    from bench import gpu_check

    def measure_step(kind, img_size, batch, device, **kw):
        return {"kind": kind, "img_size": img_size, "batch": batch, "precision": kw["precision"],
                "compile": kw["compile"], "s_per_batch": 0.5, "images_per_s": 2 * batch, "flops_per_step": None,
                "mfu": None}

    def broken_pipeline(*args):
        raise RuntimeError("inductor: compilation failed")

    monkeypatch.setattr(gpu_check, "measure_step", measure_step)
    monkeypatch.setattr(gpu_check, "timed_pipeline", broken_pipeline)
    assert gpu_check.main(["--dry-run", "--results-dir", str(tmp_path)]) == 1
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [(r["kind"], r["batch"]) for r in result["rows"]] == [("flow", 2), ("flow", 4)]
    assert result["failed"] == ["pipeline: RuntimeError: inductor: compilation failed"]
