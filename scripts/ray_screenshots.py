"""Screenshots of a pipeline run on the local Ray cluster (`make ray-cluster`, then `make ray-hypotheses`), in headless
Chromium, for docs/DISTRIBUTED.md: the Ray dashboard's Cluster page (the two nodes), the job page of the run's Ray job
(its task table: the step tasks and the node each ran on) and the Prefect UI page of the flow run (its run graph).

Asserts what the pictures must show: both nodes ALIVE on the Cluster page, the run's step tasks ran on two different
nodes (Ray's state API) and are in the job page's task table, and every step is a task run of the flow run. The
browser, the driver and the page waits are those of scripts/browser_check.py.

    make ray-screenshots    # the ports of `make ray-cluster` (FLUXFLOW_RAY_DASHBOARD_PORT, FLUXFLOW_PREFECT_PORT)
    python scripts/ray_screenshots.py --dashboard-url http://127.0.0.1:8265 --prefect-url http://127.0.0.1:4200 \\
        [--job-id 01000000] [--flow-run-id <uuid>] [--out docs/screenshots]

Defaults: the newest Ray job whose entrypoint is fluxflow-train, the newest completed fluxflow-pipeline flow run.
Exit status 0 when everything was found, 1 otherwise (each page is saved once it has loaded, found or not).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from browser_check import (REPO, SCROLLER, RunFacts, check_prefect_page, make_driver, prefect_facts, report,
                           require_server, wait_for_texts)

WINDOW = (1400, 900)  # smaller than browser_check's: the PNGs stay under ~200 KB
STEP_TASK = "pipeline-step"  # the Ray task name of a step (flows/ray_steps.py)


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def ray_facts(dashboard_url: str, job_id: str | None) -> tuple[list[str], str, list[tuple[str, str]]]:
    """(ids of the ALIVE nodes, the job's id, (name, node id) of each of its tasks) from the dashboard's API."""
    nodes = [n["raylet"]["nodeId"] for n in get_json(f"{dashboard_url}/nodes?view=summary")["data"]["summary"]
             if n["raylet"]["state"] == "ALIVE"]
    if job_id is None:
        jobs = [j for j in get_json(f"{dashboard_url}/api/jobs/") if "fluxflow-train" in (j.get("entrypoint") or "")]
        if not jobs:
            sys.exit(f"no fluxflow-train job on the Ray cluster of {dashboard_url}: run one (make ray-hypotheses)")
        job_id = max(jobs, key=lambda j: j.get("start_time") or 0)["job_id"]
    tasks = get_json(f"{dashboard_url}/api/v0/tasks?detail=1&limit=1000&filter_keys=job_id&filter_predicates=%3D"
                     f"&filter_values={job_id}")["data"]["result"]["result"]
    return nodes, job_id, [(t["name"], t["node_id"]) for t in tasks]


def shoot_cluster(driver, dashboard_url: str, nodes: list[str], out: Path, timeout: float) -> list[str]:
    """The Cluster page: one row per node, ALIVE."""
    driver.get(f"{dashboard_url}/#/cluster")
    missing = wait_for_texts(driver, ["Node List", "ALIVE", *nodes], timeout)
    time.sleep(2)  # the usage bars fill in after the rows
    driver.save_screenshot(str(out / "ray_dashboard_cluster.png"))
    return [f"Ray Cluster page lacks {t!r}" for t in missing]


def shoot_job(driver, dashboard_url: str, job_id: str, out: Path, timeout: float) -> list[str]:
    """The job page with its task table open (a collapsed section at first) and at the top: each step task with the
    node it ran on. Zoomed out to 80%, as a user would, so that the table's Node ID column fits in the window."""
    from selenium.webdriver.common.action_chains import ActionChains

    driver.get(f"{dashboard_url}/#/jobs/{job_id}")
    missing = wait_for_texts(driver, [job_id, "SUCCEEDED"], timeout)
    if not missing:
        driver.execute_script("document.body.style.zoom = '80%';")
        header = driver.find_element("xpath", "//h4[normalize-space()='Task Table']")
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", header)
        header.click()
        missing = wait_for_texts(driver, [STEP_TASK], timeout)
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", header)
        scroller = driver.execute_script(SCROLLER, header)  # below the dashboard's fixed top bars
        driver.execute_script("arguments[0].scrollTop -= 90;", scroller) if scroller else \
            driver.execute_script("window.scrollBy(0, -90);")
        # The pointer, left where the header was clicked, now hovers a task id whose tooltip would cover the table.
        ActionChains(driver).move_to_element(header).perform()
    time.sleep(2)
    driver.save_screenshot(str(out / "ray_dashboard_job.png"))
    return [f"Ray job page lacks {t!r}" for t in missing]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dashboard-url",
                        default=f"http://127.0.0.1:{os.environ.get('FLUXFLOW_RAY_DASHBOARD_PORT', '8265')}")
    parser.add_argument("--prefect-url",
                        default=f"http://127.0.0.1:{os.environ.get('FLUXFLOW_PREFECT_PORT', '4200')}")
    parser.add_argument("--job-id", help="default: the newest fluxflow-train job on the cluster")
    parser.add_argument("--flow-run-id", help="default: the newest completed fluxflow-pipeline run")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each page's texts")
    args = parser.parse_args(argv)
    require_server("Ray dashboard", args.dashboard_url, "start the cluster (make ray-cluster), or name its dashboard "
                   "with --dashboard-url")
    require_server("Prefect server", f"{args.prefect_url}/api/health", "start it (make server), or name it with "
                   "--prefect-url")

    nodes, job_id, tasks = ray_facts(args.dashboard_url, args.job_id)
    step_nodes = {node for name, node in tasks if name == STEP_TASK}
    print(f"Ray: {len(nodes)} nodes alive; job {job_id}: {len(tasks)} tasks, its step tasks on {len(step_nodes)} nodes")
    problems = [] if len(step_nodes) >= 2 else [f"the step tasks of job {job_id} ran on {len(step_nodes)} node(s)"]
    run_id, run_name, steps = asyncio.run(prefect_facts(f"{args.prefect_url}/api", args.flow_run_id))
    print(f"flow run {run_name} ({run_id}): steps {', '.join(steps)}")
    facts = RunFacts(run_id, run_name, steps, "", "", "", "", [])  # the Prefect page needs no MLflow facts

    args.out.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="fluxflow-chromium-")
    driver = make_driver(profile)
    driver.set_window_size(*WINDOW)
    try:
        problems += shoot_cluster(driver, args.dashboard_url, nodes, args.out, args.timeout)
        problems += shoot_job(driver, args.dashboard_url, job_id, args.out, args.timeout)
        problems += check_prefect_page(driver, args.prefect_url, facts, args.out, args.timeout,
                                       filename="prefect_ray_flow_run.png")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    names = ["ray_dashboard_cluster.png", "ray_dashboard_job.png", "prefect_ray_flow_run.png"]
    return report(problems, [args.out / name for name in names])


if __name__ == "__main__":
    sys.exit(main())
