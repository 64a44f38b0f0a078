"""The MLflow UI pages of a registered model, the way a user looks at them, in headless Chromium: the model page
must list every version and show the alias on the version that holds it; that version's page must show the alias
and link its source run. Saves `mlflow_model.png` and `mlflow_model_version.png`.

Run through scripts/browser_check.sh (which installs Chromium when missing):

    bash scripts/browser_check.sh --registered-model fluxflow-retrain-demo --mlflow-url http://127.0.0.1:5000

Needs an MLflow UI over a store with registered versions (make mlflow-ui; scripts/retrain_demo.py makes some).
"""
from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote

from browser_check import shown, wait_for_texts

NBSP = "\xa0"  # the alias chip reads "@ champion" with a non-breaking space


def model_facts(mlflow_url: str, name: str, alias: str) -> tuple[list[str], str | None]:
    """(version numbers, the version holding `alias` or None)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_url)
    versions = sorted((str(v.version) for v in client.search_model_versions(f"name = '{name}'")), key=int)
    holder = client.get_registered_model(name).aliases.get(alias)
    return versions, None if holder is None else str(holder)


def close_side_panels(driver) -> None:
    for close in driver.find_elements("css selector", "button[aria-label='Close']"):  # the assistant panel
        close.click()


def check_model_page(driver, mlflow_url: str, name: str, alias: str, out: Path, timeout: float) -> list[str]:
    versions, holder = model_facts(mlflow_url, name, alias)
    if not versions:
        return [f"no versions of registered model {name!r} at {mlflow_url}"]
    driver.get(f"{mlflow_url}/#/models/{quote(name)}")
    chip = f"@{NBSP}{alias}"
    missing = wait_for_texts(driver, [f"Version {v}" for v in versions] + ([chip] if holder else []), timeout)
    close_side_panels(driver)
    driver.execute_script("document.body.style.zoom = '0.75';")  # three versions and their tags on one screen
    time.sleep(2)
    driver.save_screenshot(str(out / "mlflow_model.png"))
    problems = [f"model page lacks {t!r}" for t in missing]
    if holder is None:
        return problems + [f"no version of {name!r} holds the alias {alias!r}"]
    driver.get(f"{mlflow_url}/#/models/{quote(name)}/versions/{holder}")
    missing = wait_for_texts(driver, [name, "Source Run", chip], timeout)  # the name: in the breadcrumbs
    close_side_panels(driver)
    time.sleep(2)
    driver.save_screenshot(str(out / "mlflow_model_version.png"))
    if "Source Run" in shown(driver, ["Source Run"]) and not driver.find_elements(
            "xpath", "//a[contains(@href, '/runs/')]"):
        missing.append("a link to the source run")
    return problems + [f"page of version {holder} lacks {t!r}" for t in missing]
