"""Golden losses: the first losses of a fixed tiny three-step pipeline on CPU are pinned, so that any change to the
training math (losses, optimizers, schedules, data order, random draws) shows as a failure here.

The pinned values live in tests/golden/tiny_losses.json. When a change to the math is intended, regenerate them with
`python -m tests.test_golden_losses` and say in the commit why the numbers moved.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers_tiny import tiny_config  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "tiny_losses.json"
STEPS = [
    {"name": "vae", "n_epochs": 1, "max_steps": 3, "train_vae": True},
    {"name": "gan", "n_epochs": 1, "max_steps": 3, "train_vae": True, "gan_training": True, "r1_gamma": 1.0,
     "r1_interval": 2},
    {"name": "flow", "n_epochs": 1, "max_steps": 3, "train_diff_full": True},
]
LOSSES = ("vae_loss", "kl_loss", "g_loss", "d_loss", "flow_loss")


def tiny_pipeline_losses(output: Path) -> dict[str, list[dict[str, float]]]:
    """{step: [{loss: value} per batch]} from the metrics files of the pipeline run on the bare path."""
    import torch

    from fluxflow.train.pipeline import run_pipeline
    from fluxflow.train.tracking import metrics_file

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one intra-op thread: the reduction order, and so the bits, do not depend on cores
    try:
        config = tiny_config(output, STEPS, no_samples=True, checkpoint_save_interval=100)
        run_pipeline(config)
    finally:
        torch.set_num_threads(threads)
    losses = {}
    for step in STEPS:
        lines = [json.loads(line) for line in metrics_file(output, step["name"]).read_text().splitlines()]
        losses[step["name"]] = [{k: v for k, v in line["metrics"].items() if k in LOSSES}
                                for line in lines if not any(k.startswith("eval_") for k in line["metrics"])]
    return losses


def test_tiny_pipeline_losses_match_the_pinned_values(tmp_path):
    expected = json.loads(GOLDEN.read_text())
    found = tiny_pipeline_losses(tmp_path)
    assert set(found) == set(expected)
    for step, batches in expected.items():
        assert len(found[step]) == len(batches), f"step {step}: {len(found[step])} logged batches"
        for i, (want, got) in enumerate(zip(batches, found[step])):
            assert set(got) == set(want), f"step {step}, batch {i + 1}: metrics {sorted(got)}"
            for name, value in want.items():
                assert math.isclose(got[name], value, rel_tol=1e-5, abs_tol=1e-7), \
                    f"step {step}, batch {i + 1}: {name} {got[name]!r} != pinned {value!r}"


if __name__ == "__main__":  # regenerate the pinned values
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.write_text(json.dumps(tiny_pipeline_losses(Path(tmp)), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
