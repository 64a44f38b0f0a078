"""Look at a pipeline run the way a user does: the Prefect UI page of the flow run and the MLflow UI page of its
experiment, in headless Chromium. Asserts that every step name is on the Prefect page and every metric name on the
MLflow page, and saves a screenshot of each.

Needs a Prefect server and an MLflow UI that know the run (make server, make mlflow-ui, and a run of
fluxflow-pipeline), plus Chromium and its driver: `bash scripts/browser_check.sh` installs the Debian packages
`chromium` and `chromium-driver` when missing and runs this file. Not part of pytest (it needs apt and a browser).

    bash scripts/browser_check.sh                        # latest completed fluxflow-pipeline run, default URLs
    bash scripts/browser_check.sh --flow-run-id <uuid> --prefect-url http://127.0.0.1:4200 \\
        --mlflow-url http://127.0.0.1:5000 --out docs/screenshots
    bash scripts/browser_check.sh --registered-model NAME     # the model's pages instead (browser_model_page.py)

Exit status 0 when everything was found, 1 when something was missing (each page is saved once it has loaded, found or
not).
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import flows.env  # noqa: F401  (quiet, offline defaults before prefect or mlflow is imported)

REPO = Path(__file__).resolve().parents[1]
FLOW_NAME = "fluxflow-pipeline"
# The flags the task asks for: no GPU, no network chatter (QUIC, component updates, sync), a fresh profile.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1600,1300", "--hide-scrollbars"]


def require_server(what: str, url: str, hint: str) -> None:
    """Exit 2 with one line unless something answers HTTP at `url` (any status: a server that asks for credentials
    is there): without it the first request to it ended the script in a traceback."""
    try:
        urllib.request.urlopen(url, timeout=5).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"❌ no {what} answers at {url} ({reason}): {hint}", file=sys.stderr)
        sys.exit(2)


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


# The trimmed texts of the page's visible leaf elements: a metric name counts as shown when it is a chart's title or
# a run's name, not when it is only part of a longer string (`vae_loss` inside `final/vae_loss`).
LEAF_TEXTS = """
const texts = new Set();
for (const el of document.body.querySelectorAll('*')) {
  if (el.childElementCount === 0 && el.offsetParent !== null) {
    const t = el.textContent.trim();
    if (t) texts.add(t);
  }
}
return [...texts];
"""


def shown(driver, texts: list[str]) -> set[str]:
    return set(texts) & set(driver.execute_script(LEAF_TEXTS))


def wait_for_texts(driver, texts: list[str], timeout: float) -> list[str]:
    """Poll the rendered page until every text is shown as an element's whole text; returns those still missing at
    the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        missing = [t for t in texts if t not in shown(driver, texts)]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.5)


# The nearest scrollable ancestor of arguments[0] (the chart area), or null.
SCROLLER = """
let el = arguments[0];
while (el && !(el.scrollHeight > el.clientHeight + 2 && /auto|scroll/.test(getComputedStyle(el).overflowY))) {
  el = el.parentElement;
}
return el;
"""


def click(driver, xpath: str, timeout: float) -> None:
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(ec.element_to_be_clickable(("xpath", xpath))).click()


def check_prefect_page(driver, prefect_url: str, facts: RunFacts, out: Path, timeout: float,
                       filename: str = "prefect_flow_run.png") -> list[str]:
    """The flow run page: its run graph with one node per step (screenshot, out/filename), then its "Task Runs" tab,
    which must list every step."""
    driver.get(f"{prefect_url}/runs/flow-run/{facts.flow_run_id}")
    missing = wait_for_texts(driver, [facts.flow_run_name, "Task Runs"], timeout)
    time.sleep(3)  # the run graph is drawn on a canvas after the data arrives
    driver.save_screenshot(str(out / filename))
    if not missing:
        click(driver, "//*[(@role='tab' or self::li or self::button or self::a) and normalize-space()='Task Runs']",
              timeout)
        missing = wait_for_texts(driver, facts.step_names, timeout)
    return [f"Prefect page lacks {t!r}" for t in missing]


def scan_charts(driver, scroller, wanted: list[str], settle: float = 1.5) -> set[str]:
    """Charts are drawn only once scrolled into view: scroll the chart area from top to bottom, a screen at a time,
    and collect which of `wanted` appeared."""
    seen: set[str] = set()
    driver.execute_script("arguments[0].scrollTop = 0;", scroller)
    while True:
        time.sleep(settle)
        seen |= shown(driver, wanted)
        at_end = driver.execute_script(
            "const e = arguments[0]; return e.scrollTop + e.clientHeight >= e.scrollHeight - 2;", scroller)
        if seen >= set(wanted) or at_end:
            return seen
        driver.execute_script("arguments[0].scrollTop += arguments[0].clientHeight * 0.8;", scroller)


def check_mlflow_page(driver, mlflow_url: str, facts: RunFacts, out: Path, timeout: float) -> list[str]:
    """The experiment's runs in chart view, the pipeline run expanded to its step runs: one chart per metric. The
    screenshot shows the loss charts of the "Model metrics" section, one line per step run."""
    driver.get(f"{mlflow_url}/#/experiments/{facts.experiment_id}/runs?compareRunsMode=CHART")
    missing = wait_for_texts(driver, [facts.experiment_name, facts.pipeline_run_name], timeout)
    if missing:
        return [f"MLflow page lacks {t!r}" for t in missing]
    # Step runs are nested under the pipeline run and collapsed: the button in its name cell expands them.
    click(driver, f"//div[@role='gridcell'][.//a[contains(@href, '/runs/{facts.pipeline_run_id}')]]//button",
          timeout)
    for close in driver.find_elements("css selector", "button[aria-label='Close']"):  # the assistant side panel
        close.click()
    problems = [f"MLflow page lacks step run {t!r}" for t in wait_for_texts(driver, facts.step_names, timeout)]
    # Charts are grouped in sections by name prefix (`final/...`, then "Model metrics" for names without one).
    if wait_for_texts(driver, ["Model metrics"], timeout):
        return problems + ["MLflow page has no 'Model metrics' chart section"]
    header = driver.find_element("xpath", "//*[normalize-space()='Model metrics']")
    scroller = driver.execute_script(SCROLLER, header)
    seen = scan_charts(driver, scroller, facts.metric_names) if scroller else shown(driver, facts.metric_names)
    problems += [f"MLflow page lacks a chart of {t!r}" for t in facts.metric_names if t not in seen]
    # The screenshot: only the loss charts (the search box filters charts by name), "Model metrics" at the top.
    search = driver.find_elements("xpath", "//input[@placeholder='Search metric charts']")
    if search:
        search[0].send_keys("loss")
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", header)
    time.sleep(3)  # chart lines are drawn after their titles
    driver.save_screenshot(str(out / "mlflow_experiment.png"))
    return problems


def check_registered_model(args) -> int:
    from browser_model_page import check_model_page

    args.out.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="fluxflow-chromium-")
    driver = make_driver(profile)
    try:
        problems = check_model_page(driver, args.mlflow_url, args.registered_model, args.alias, args.out,
                                    args.timeout)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return report(problems, [args.out / "mlflow_model.png", args.out / "mlflow_model_version.png"])


def report(problems: list[str], screenshots: list[Path]) -> int:
    print("screenshots: " + ", ".join(map(str, screenshots)))
    for problem in problems:
        print("MISSING:", problem)
    print("browser check passed" if not problems else "browser check FAILED")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefect-url", default="http://127.0.0.1:4200")
    parser.add_argument("--mlflow-url", default="http://127.0.0.1:5000")
    parser.add_argument("--flow-run-id", help="default: the newest completed fluxflow-pipeline run")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each page's texts")
    parser.add_argument("--registered-model", metavar="NAME", help="check this registered model's pages instead "
                                                                   "(scripts/browser_model_page.py)")
    parser.add_argument("--alias", default="champion", help="with --registered-model: the alias to look for")
    args = parser.parse_args(argv)
    mlflow_hint = "start it (make mlflow-ui), or name it with --mlflow-url"
    if args.registered_model:
        require_server("MLflow server", f"{args.mlflow_url}/health", mlflow_hint)
        return check_registered_model(args)
    require_server("Prefect server", f"{args.prefect_url}/api/health", "start it (make server), or name it with "
                   "--prefect-url")
    require_server("MLflow server", f"{args.mlflow_url}/health", mlflow_hint)

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
    return report(problems, [args.out / "prefect_flow_run.png", args.out / "mlflow_experiment.png"])


if __name__ == "__main__":
    sys.exit(main())
