"""The layers' import contract, read from the source (tests/import_graph.py) and checked in a fresh interpreter.

- `fluxflow` is the torch core: it never imports `prefect`, `mlflow` or the orchestration in `flows`.
- `fluxflow.models` never imports `fluxflow.train` (the networks do not know how they are trained).
- `fluxflow.config` never imports `torch`, not even through another fluxflow module: validation must stay fast.
- `fluxflow.cache`, `.sampling`, `.checkpoints` and `.runtime` never import `fluxflow.train`.
- No two modules of `fluxflow` or `flows` import each other, directly or around a longer cycle.

An import counts wherever it is written (inside functions too), and through every fluxflow module it runs.
"""
import subprocess
import sys
from pathlib import Path

import pytest

from import_graph import Import, chain_to, imports_in, imports_of_tree, is_within, modules_run_by

REPO = Path(__file__).resolve().parents[2]

# (modules under this prefix, may not import this, because)
RULES = [
    ("fluxflow", "prefect", "the torch core runs without orchestration"),
    ("fluxflow", "mlflow", "the torch core runs without tracking"),
    ("fluxflow", "flows", "orchestration sits on top of the core, not under it"),
    ("fluxflow.models", "fluxflow.train", "the networks do not know how they are trained"),
    ("fluxflow.config", "torch", "validation must not pay for a torch import"),
    ("fluxflow.cache", "fluxflow.train", "the caches store what training asks for; they do not know training"),
    ("fluxflow.sampling", "fluxflow.train", "generation needs the models, not how they were trained"),
    ("fluxflow.checkpoints", "fluxflow.train", "checkpoint files are data; the runner writes them"),
    ("fluxflow.runtime", "fluxflow.train", "devices and processes sit under training, not over it"),
]


def describe(chain: list[Import]) -> str:
    """`a.py:3 imports x -> x.py:7 imports torch`."""
    return " -> ".join(f"{imp.where()} imports {imp.module}" for imp in chain)


def violations(known: dict[str, list[Import]]) -> list[str]:
    found = []
    for scope, forbidden, why in RULES:
        for module in known:
            if is_within(module, scope):
                chain = chain_to(module, forbidden, known, not_through=scope)
                if chain:
                    found.append(f"{describe(chain)}  ({scope} may not import {forbidden}: {why})")
    return found


def test_no_layer_imports_what_it_must_not():
    problems = violations(imports_of_tree(REPO, "fluxflow"))
    assert not problems, "forbidden imports:\n" + "\n".join(problems)


def import_cycles(known: dict[str, list[Import]]) -> list[list[str]]:
    """Each cycle of imports among `known` modules (wherever the import is written) as its modules, sorted; Tarjan's
    strongly connected components of more than one module. A module's own packages are no edge: they are already
    being imported when it runs."""
    edges = {m: sorted(n for imp in imps for n in modules_run_by(imp.module, known) if not is_within(m, n))
             for m, imps in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for nxt in edges[module]:
            if nxt not in index:
                visit(nxt)
                low[module] = min(low[module], low[nxt])
            elif nxt in stack:
                low[module] = min(low[module], index[nxt])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(known):
        if module not in index:
            visit(module)
    return cycles


def test_no_import_cycles():
    cycles = import_cycles({**imports_of_tree(REPO, "fluxflow"), **imports_of_tree(REPO, "flows")})
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def write(root: Path, relative: str, text: str) -> None:
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    (root / relative).write_text(text)


def test_the_check_finds_relative_dotted_in_function_and_indirect_imports(tmp_path):
    write(tmp_path, "fluxflow/__init__.py", "")
    write(tmp_path, "fluxflow/config/__init__.py", "from . import sizes\n")
    write(tmp_path, "fluxflow/config/sizes.py", "import os\n\ndef f():\n    from ..models import net\n")
    write(tmp_path, "fluxflow/models/__init__.py", "")
    write(tmp_path, "fluxflow/models/net.py", "import torch.nn\n")
    write(tmp_path, "fluxflow/models/uses_train.py", "from fluxflow.train.step_run import StepRun\n")
    write(tmp_path, "fluxflow/train/__init__.py", "")
    write(tmp_path, "fluxflow/train/step_run.py", "def g():\n    import mlflow.tracking\n")
    problems = violations(imports_of_tree(tmp_path, "fluxflow"))
    # Each offence once, where it is written; config/__init__.py reaches torch only through config/sizes.py.
    assert problems == [
        "fluxflow/train/step_run.py:2 imports mlflow.tracking  (fluxflow may not import mlflow: the torch core runs "
        "without tracking)",
        "fluxflow/models/uses_train.py:1 imports fluxflow.train.step_run  (fluxflow.models may not import "
        "fluxflow.train: the networks do not know how they are trained)",
        "fluxflow/config/sizes.py:4 imports fluxflow.models.net -> fluxflow/models/net.py:1 imports torch.nn  "
        "(fluxflow.config may not import torch: validation must not pay for a torch import)",
    ]


def test_imports_are_resolved_to_absolute_names_with_their_lines(tmp_path):
    write(tmp_path, "pkg/sub/mod.py", "import a.b as c\nfrom .sib import x\nfrom .. import top\n")
    found = [(i.line, i.module) for i in imports_in(tmp_path, Path("pkg/sub/mod.py"))]
    assert found == [(1, "a.b"), (2, "pkg.sub.sib"), (2, "pkg.sub.sib.x"), (3, "pkg"), (3, "pkg.top")]


HEAVY = "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'prefect', 'mlflow'}))"


@pytest.mark.parametrize("code", [
    "import fluxflow.config, fluxflow.config.modes, fluxflow.config.summary, fluxflow.config.model_sizes",
    "import contextlib, io, flows.cli_train as c\nwith contextlib.redirect_stdout(io.StringIO()) as out:\n"
    "    assert c.main(['--config', 'configs/quickstart.yaml', '--validate-pipeline']) == 0\n"
    "assert 'flow_processor' in out.getvalue()",
], ids=["config_package", "validate_pipeline"])
def test_validation_loads_neither_torch_prefect_nor_mlflow(code):
    done = subprocess.run([sys.executable, "-c", f"import sys\n{code}\n{HEAVY}"], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.slow  # a torch import in a fresh interpreter: ~5 s
def test_the_local_path_and_validating_a_multi_node_config_never_import_ray():
    """Ray is imported only by a step that trains across nodes (fluxflow/runtime/ray_train_launch.py)."""
    code = ("import sys\nimport fluxflow.train.pipeline, fluxflow.runtime.launch, fluxflow.train.distributed_step\n"
            "from fluxflow.config import load_config\n"
            "load_config({'training': {'distributed': {'nodes': 2}, 'executor': {'kind': 'ray'}, 'pipeline': {'steps': "
            "[{'name': 'a', 'n_epochs': 1, 'train_vae': True}]}}})\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
