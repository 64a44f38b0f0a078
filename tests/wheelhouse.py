"""Local wheels of what this test environment has installed, so a test can `pip install --no-index` a declared set
of requirements into a fresh virtualenv: pip resolves them as it would from PyPI, but from files on this disk (no
network; the local package mirror lacks most of them).

A wheel is the zip of an installed distribution's files (its RECORD) with the RECORD rewritten to match, named by the
tag its WHEEL file states; bytecode and scripts are left out (pip writes its own). Built once per session into a
shared folder, since torch alone is over a gigabyte.
"""
from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import venv
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def distributions_for(requirements: list[str]) -> set[str]:
    """The installed distributions `requirements` resolve to: each, and recursively what it requires (markers
    evaluated, extras followed), as pip would install them."""
    found: dict[str, set[str]] = {}
    todo = [Requirement(text) for text in requirements]
    while todo:
        req = todo.pop()
        name, extras = canonicalize_name(req.name), set(req.extras)
        if name in found and extras <= found[name]:
            continue
        found.setdefault(name, set()).update(extras)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency this environment lacks: then nothing here can need it
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": extra}) for extra in found[name] | {""}):
                todo.append(sub)
    return set(found)


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def wheel_of(dist: metadata.Distribution, folder: Path) -> Path:
    """`dist` as a wheel in `folder` (reused when already there)."""
    info = next(f for f in dist.files if str(f).endswith(".dist-info/METADATA")).parent
    tags = [line.split(":", 1)[1].strip() for line in dist.read_text("WHEEL").splitlines() if line.startswith("Tag:")]
    name = canonicalize_name(dist.metadata["Name"]).replace("-", "_")
    # A wheel with several tags is named by the set of each part: `py2.py3-none-any`.
    parts = [".".join(sorted({tag.split("-")[i] for tag in tags})) for i in range(3)]
    wheel = folder / f"{name}-{dist.version}-{'-'.join(parts)}.whl"
    if wheel.exists():
        return wheel
    partial = wheel.with_suffix(".partial")
    record, record_name = [], f"{info}/RECORD"
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as out:
        for file in dist.files:
            path = str(file)
            if path.startswith("..") or path.endswith(".pyc") or path == record_name or "__pycache__" in path:
                continue  # scripts outside site-packages, bytecode: pip makes its own
            source = Path(dist.locate_file(file))
            if not source.is_file():
                continue
            data = source.read_bytes()
            out.writestr(path, data)
            record.append(_record_line(path, data))
        out.writestr(record_name, "\n".join([*record, f"{record_name},,"]) + "\n")
    partial.rename(wheel)
    return wheel


def wheelhouse_for(requirements: list[str], folder: Path) -> Path:
    """`folder` holding a wheel of every installed distribution `requirements` resolve to (the project's own editable
    install, a distribution nobody declares, is never among them unless declared)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(distributions_for(requirements)):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        wheel_of(dist, folder)
    return folder


def environment_from_wheels(requirements: list[str], wheels: Path, where: Path) -> Path:
    """A virtualenv at `where` (made when missing) into which pip installs `requirements` from `wheels` only (no
    index, no network); its python."""
    python = where / "bin" / "python"
    if not python.exists():
        venv.EnvBuilder(with_pip=False).create(where)
    # This environment's pip installs into the new one (`--python`): the new one needs no pip of its own.
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--isolated",
                           "--no-index", "--no-compile", "--find-links", str(wheels), *requirements],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return python
