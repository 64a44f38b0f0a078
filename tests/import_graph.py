"""Every import statement of a source tree, read with `ast` (nothing is imported), for the import contract test.

An import is recorded wherever it appears (module level, inside functions, under `if TYPE_CHECKING:`): an import
inside a function still runs when that function does. Relative imports are resolved to absolute names, and
`from a import b` records `a.b` as well as `a`, since `b` may be a submodule.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Import:
    file: Path  # relative to the repository root
    line: int
    module: str  # absolute dotted name

    def where(self) -> str:
        return f"{self.file.as_posix()}:{self.line}"


def module_name(file: Path) -> str:
    """`fluxflow/config/modes.py` -> `fluxflow.config.modes`; a package's `__init__.py` -> the package."""
    parts = list(file.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _base_package(file: Path, level: int) -> str:
    """The package a relative import of `level` dots starts from."""
    package = module_name(file).split(".")
    if file.name != "__init__.py":
        package = package[:-1]  # a module's own package
    return ".".join(package[: len(package) - (level - 1)])


def _names(node: ast.AST, file: Path) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            base = ".".join(p for p in (_base_package(file, node.level), node.module) if p)
        return [base, *(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")]
    return []


def imports_in(root: Path, file: Path) -> list[Import]:
    """Every module `root / file` imports, with line numbers. `file` is relative to `root`."""
    tree = ast.parse((root / file).read_text(encoding="utf-8"), filename=str(file))
    return [Import(file, node.lineno, name) for node in ast.walk(tree) for name in _names(node, file) if name]


def imports_of_tree(root: Path, package: str) -> dict[str, list[Import]]:
    """Module name -> its imports, for every .py file under `root / package`."""
    files = sorted(p.relative_to(root) for p in (root / package).rglob("*.py"))
    return {module_name(f): imports_in(root, f) for f in files}


def is_within(module: str, prefix: str) -> bool:
    """`torch.nn` is within `torch`; `torchvision` is not."""
    return module == prefix or module.startswith(prefix + ".")


def modules_run_by(name: str, known: dict[str, list[Import]]) -> list[str]:
    """The known modules that importing `name` executes: every package on the way, and `name` if it is a module."""
    parts = name.split(".")
    return [m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if m in known]


def chain_to(start: str, forbidden: str, known: dict[str, list[Import]], not_through: str = "") -> list[Import] | None:
    """The shortest chain of imports from module `start` to `forbidden`, directly or through known modules.

    Modules within `not_through` are not followed: the caller checks each of them itself, so one offending import
    is reported once, where it is written, not again for every module that reaches it.
    """
    queue: list[tuple[str, list[Import]]] = [(start, [])]
    seen = {start}
    while queue:
        module, chain = queue.pop(0)
        for imp in known[module]:
            if is_within(imp.module, forbidden):
                return [*chain, imp]
            for nxt in modules_run_by(imp.module, known):
                if nxt not in seen and not (not_through and is_within(nxt, not_through)):
                    seen.add(nxt)
                    queue.append((nxt, [*chain, imp]))
    return None
