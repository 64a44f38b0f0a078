"""Three "nights" of retraining into one MLflow store, to see the loop in the MLflow UI: the small pipeline of
configs/tiny_test.yaml with a flow step added, trained three times with different flow-step settings (as if the data
had changed overnight). Each run is the Prefect flow `fluxflow-pipeline`: it registers the flow step's checkpoint as
a version of `fluxflow-retrain-demo` and promotes it only when it beats the champion on `eval_fd_ours_cfg` (lower is
better). docs/screenshots/mlflow_model.png was taken of such a store (docs/OPERATIONS.md).

    MLFLOW_TRACKING_URI=sqlite:///$PWD/demo.db python scripts/retrain_demo.py --out outputs/retrain_demo

About 1-2 minutes on 2 CPU cores. Prints each night's decision and the champion.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import flows.env  # noqa: E402,F401  (quiet, offline defaults before prefect or mlflow is imported)

MODEL = "fluxflow-retrain-demo"
# The flow step of each night: a short one, a longer one (lower Fréchet distance), one whose learning rate diverges.
NIGHTS = {"night-1": {"max_steps": 2, "lr": 1e-4}, "night-2": {"n_epochs": 6, "lr": 3e-3},
          "night-3": {"max_steps": 3, "lr": 1.0}}


def night_config(flow_step: dict) -> dict:
    raw = copy.deepcopy(yaml.safe_load((REPO / "configs" / "tiny_test.yaml").read_text()))
    raw["training"]["pipeline"]["steps"].append({"name": "flow", "n_epochs": 1, "train_diff_full": True,
                                                 "ema_decay": 0.5, **flow_step})
    raw["training"]["pipeline"]["datasets"]["shapes"]["holdout"] = 16
    raw["tracking"] = {"experiment_name": MODEL}
    raw["promotion"] = {"metric": "eval_fd_ours_cfg", "n_images": 16}
    return raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/retrain_demo", help="one output directory per night below this")
    args = parser.parse_args(argv)

    from flows.pipeline_flow import pipeline_flow

    for night, flow_step in NIGHTS.items():
        state = pipeline_flow(night_config(flow_step), output_dir=str(Path(args.out) / night), return_state=True)
        if not state.is_completed():
            print(f"{night}: {state.name}: {state.message}", file=sys.stderr)
            return 1
    from mlflow.tracking import MlflowClient

    from flows.mlflow_runs import resolve_tracking_uri

    client = MlflowClient(resolve_tracking_uri())
    for version in sorted(client.search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version)):
        tags = client.get_model_version(MODEL, version.version).tags
        print(f"version {version.version}: {tags.get('fluxflow.promotion.decision')} "
              f"({tags.get('fluxflow.promotion.reason')})")
    print(f"champion: version {client.get_model_version_by_alias(MODEL, 'champion').version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
