"""Look at a pipeline run the way a user does: the Prefect UI page of the flow run and the MLflow UI page of its
experiment, in headless Chromium. Asserts that every step name is on the Prefect page and every metric name on the
MLflow page, and saves a screenshot of each.

Needs a Prefect server and an MLflow UI that know the run (make server, make mlflow-ui, and a run of
fluxflow-pipeline), plus Chromium and its driver: `bash scripts/browser_check.sh` installs the Debian packages
`chromium` and `chromium-driver` when missing and runs this file. Not part of pytest (it needs apt and a browser).

    bash scripts/browser_check.sh                        # latest completed fluxflow-pipeline run, default URLs
    bash scripts/browser_check.sh --flow-run-id <uuid> --prefect-url http://127.0.0.1:4200 \\
        --mlflow-url http://127.0.0.1:5000 --out docs/screenshots

Exit status 0 when everything was found, 1 when something was missing (the screenshots are saved either way).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO = Path(__file__).resolve().parents[1]
FLOW_NAME = "fluxflow-pipeline"
# The flags the task asks for: no GPU, no network chatter (QUIC, component updates, sync), a fresh profile.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1600,1300", "--hide-scrollbars"]


@dataclass
class RunFacts:
    flow_run_id: str
    flow_run_name: str
    step_names: list[str]
    experiment_id: str
    experiment_name: str
    pipeline_run_id: str  # the MLflow parent run; its nested runs are the steps
    pipeline_run_name: str
    metric_names: list[str]


async def prefect_facts(api_url: str, flow_run_id: str | None) -> tuple[str, str, list[str]]:
    """(flow run id, flow run name, task run names) of the given run, or of the newest completed pipeline run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            if flow_run_id:
                run = await client.read_flow_run(flow_run_id)
            else:
                runs = await client.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
                    flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type={"any_": ["COMPLETED"]})),
                    sort=FlowRunSort.END_TIME_DESC,
                    limit=1,
                )
                if not runs:
                    sys.exit(f"no completed {FLOW_NAME} run on {api_url}; run one first (see docs/OPERATIONS.md)")
                run = runs[0]
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run.id]}))
    return str(run.id), run.name, sorted({t.name for t in tasks})


def mlflow_facts(mlflow_url: str, flow_run_id: str) -> tuple[str, str, str, str, list[str]]:
    """(experiment id and name, pipeline run id and name, metric names of its step runs) of the MLflow run tagged
    with the flow run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_url)
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(experiment_ids, filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    if not parents:
        sys.exit(f"no MLflow run tagged prefect.flow_run_id={flow_run_id} on {mlflow_url}: is the MLflow UI reading "
                 "the store the flow wrote to?")
    parent = parents[0]
    steps = client.search_runs([parent.info.experiment_id],
                               filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    metrics = sorted({name for run in steps for name in run.data.metrics})
    experiment = client.get_experiment(parent.info.experiment_id)
    return experiment.experiment_id, experiment.name, parent.info.run_id, parent.info.run_name, metrics


def make_driver(user_data_dir: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    # An explicit driver path keeps Selenium Manager from trying to download one.
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(options=options, service=service)


def page_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def wait_for_texts(driver, texts: list[str], timeout: float) -> list[str]:
    """Poll the rendered page until every text is visible; returns those still missing at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        body = page_text(driver)
        missing = [t for t in texts if t not in body]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.5)


# Scroll the nearest scrollable ancestor of arguments[0] to its end.
SCROLL_TO_END = """
let el = arguments[0];
while (el && el.scrollHeight <= el.clientHeight) { el = el.parentElement; }
if (el) { el.scrollTop = el.scrollHeight; }
"""


def click(driver, xpath: str, timeout: float) -> None:
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(ec.element_to_be_clickable(("xpath", xpath))).click()


def check_prefect_page(driver, prefect_url: str, facts: RunFacts, out: Path, timeout: float) -> list[str]:
    """The flow run page: its run graph (screenshot), then its "Task Runs" tab, which must list every step."""
    driver.get(f"{prefect_url}/runs/flow-run/{facts.flow_run_id}")
    missing = wait_for_texts(driver, [facts.flow_run_name, "Task Runs"], timeout)
    time.sleep(3)  # the run graph is drawn on a canvas after the data arrives
    driver.save_screenshot(str(out / "prefect_flow_run.png"))
    if not missing:
        click(driver, "//*[(@role='tab' or self::li or self::button or self::a) and normalize-space()='Task Runs']", timeout)
        missing = wait_for_texts(driver, facts.step_names, timeout)
    return [f"Prefect page lacks {t!r}" for t in missing]


def check_mlflow_page(driver, mlflow_url: str, facts: RunFacts, out: Path, timeout: float) -> list[str]:
    """The experiment's runs in chart view, the pipeline run expanded to its step runs: one chart per metric."""
    driver.get(f"{mlflow_url}/#/experiments/{facts.experiment_id}/runs?compareRunsMode=CHART")
    missing = wait_for_texts(driver, [facts.experiment_name, facts.pipeline_run_name], timeout)
    if missing:
        return [f"MLflow page lacks {t!r}" for t in missing]
    # Step runs are nested under the pipeline run and collapsed: the button in its name cell expands them.
    click(driver, f"//div[@role='gridcell'][.//a[contains(@href, '/runs/{facts.pipeline_run_id}')]]//button",
          timeout)
    for close in driver.find_elements("css selector", "button[aria-label='Close']"):  # the assistant side panel
        close.click()
    # Charts are grouped in sections by name prefix (`final/...` first, then "Model metrics") and drawn only once
    # scrolled into view: read the first screen, then scroll the "Model metrics" section to the top and read again.
    wanted = [*facts.step_names, *facts.metric_names]
    seen = {t for t in wanted if t in page_text(driver)}
    wait_for_texts(driver, ["Model metrics"], timeout)
    header = driver.find_element("xpath", "//*[normalize-space()='Model metrics']")
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", header)
    seen |= set(wanted) - set(wait_for_texts(driver, [t for t in wanted if t not in seen], timeout / 2))
    if not seen >= set(wanted):  # more rows than the window holds: scroll the chart area to its end
        driver.execute_script(SCROLL_TO_END, header)
        seen |= set(wanted) - set(wait_for_texts(driver, [t for t in wanted if t not in seen], timeout / 2))
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", header)
    time.sleep(2)  # chart lines are drawn after their titles
    driver.save_screenshot(str(out / "mlflow_experiment.png"))
    return [f"MLflow page lacks {t!r}" for t in wanted if t not in seen]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefect-url", default="http://127.0.0.1:4200")
    parser.add_argument("--mlflow-url", default="http://127.0.0.1:5000")
    parser.add_argument("--flow-run-id", help="default: the newest completed fluxflow-pipeline run")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each page's texts")
    args = parser.parse_args(argv)

    run_id, run_name, steps = asyncio.run(prefect_facts(f"{args.prefect_url}/api", args.flow_run_id))
    experiment_id, experiment_name, parent_id, parent_name, metrics = mlflow_facts(args.mlflow_url, run_id)
    facts = RunFacts(run_id, run_name, steps, experiment_id, experiment_name, parent_id, parent_name, metrics)
    print(f"flow run {facts.flow_run_name} ({facts.flow_run_id}): steps {', '.join(steps)}")
    print(f"MLflow experiment {experiment_name} ({experiment_id}): metrics {', '.join(metrics)}")

    args.out.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="fluxflow-chromium-")
    driver = make_driver(profile)
    try:
        problems = check_prefect_page(driver, args.prefect_url, facts, args.out, args.timeout)
        problems += check_mlflow_page(driver, args.mlflow_url, facts, args.out, args.timeout)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    print(f"screenshots: {args.out / 'prefect_flow_run.png'}, {args.out / 'mlflow_experiment.png'}")
    for problem in problems:
        print("MISSING:", problem)
    print("browser check passed" if not problems else "browser check FAILED")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
