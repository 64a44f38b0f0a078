"""Installable like a library: pyproject.toml's ranges, the exact tested set in constraints.txt that `make` installs,
and transformers only in the `pretrained` extra. Fast: reads files and the installed packages' metadata."""
from __future__ import annotations

import re
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def pins() -> dict[str, str]:
    """constraints.txt as {canonical name: version}."""
    found = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            found[canonicalize_name(name)] = version.strip()
    return found


def test_dependencies_are_ranges_and_transformers_is_an_extra():
    requirements = [Requirement(text) for text in PROJECT["dependencies"]]
    assert not [str(r) for r in requirements if any(spec.operator == "==" for spec in r.specifier)]
    assert "transformers" not in {canonicalize_name(r.name) for r in requirements}
    extras = PROJECT["optional-dependencies"]
    assert [canonicalize_name(Requirement(r).name) for r in extras["pretrained"]] == ["transformers"]
    # The tests build tiny pretrained encoders, start a local Ray cluster and an authenticated MLflow server.
    dev_self = [Requirement(r) for r in extras["dev"] if canonicalize_name(Requirement(r).name) == "fluxflow-pipelines"]
    assert len(dev_self) == 1 and {"pretrained", "cluster", "auth"} <= dev_self[0].extras


def test_the_tested_set_is_pinned_and_fits_the_ranges():
    pinned = pins()
    assert "fluxflow-pipelines" not in pinned
    # This test runs in the tested environment: every pin is what is installed here.
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = {name: (version, installed.get(name)) for name, version in pinned.items() if installed.get(name) != version}
    assert not wrong, f"constraints.txt differs from this environment (pinned, installed): {wrong}"
    # Every declared range (extras included) admits the pinned version: `pip install -c constraints.txt` resolves.
    declared = PROJECT["dependencies"] + [r for extra in PROJECT["optional-dependencies"].values() for r in extra]
    for requirement in map(Requirement, declared):
        name = canonicalize_name(requirement.name)
        if name == "fluxflow-pipelines":
            continue
        assert name in pinned, f"{requirement} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), f"{requirement} vs {pinned[name]}"


def test_make_installs_the_project_with_the_constraints():
    done = subprocess.run(["make", "-n", "-B", "setup"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    installs = [line for line in done.stdout.splitlines() if re.search(r"pip install .*-e ", line)]
    assert installs and all("-c constraints.txt" in line for line in installs), done.stdout


def test_what_the_readmes_commands_write_in_the_checkout_is_ignored_by_git():
    """fluxflow-export's README example (--output exported/quickstart) and fluxflow-compare's files in its default
    --output (.): compare_<name>.csv/.png/.json and compare_<name>_differences.csv, and with --registered-model
    compare_versions_<name>.csv/.png (flows/cli_compare.py). The tracked docs/images/compare_*.png stay outside the
    pattern."""
    readme = (REPO / "README.md").read_text()
    assert "--output exported/quickstart" in readme and "compare_<experiment>_differences.csv" in readme
    written = ["exported/quickstart/model.safetensors", "compare_fluxflow.csv", "compare_fluxflow.png",
               "compare_fluxflow.json", "compare_fluxflow_differences.csv", "compare_versions_fluxflow.csv",
               "compare_versions_fluxflow.png"]
    kept = ["docs/images/compare_hypotheses.png", "docs/images/compare_new.png"]
    done = subprocess.run(["git", "check-ignore", "--no-index", *written, *kept], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode in (0, 1), done.stderr  # 128: not a git checkout
    assert done.stdout.split() == written
