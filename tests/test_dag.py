"""dvc.yaml holds every stage to the code it runs: each gptpipe/flows module that `stages/X.py` imports,
directly or through other modules, is one of X's deps, and so is each data path X reads (a file, not its folder),
so a change reruns exactly the stages it touches."""

import ast
from pathlib import Path

import yaml

from conftest import REPO
from gptpipe import artifacts

# Shared infrastructure that deliberately triggers no rerun: it decides how a stage reads, writes and fails,
# never what it computes.
# (Package __init__ files that hold only a docstring count as nothing.)
INFRA = {
    "gptpipe/__init__.py": "quiets library loggers",
    "gptpipe/errors.py": "the one-line error and interrupt handling",
    "gptpipe/io.py": "atomic writes and JSON reading; the bytes a stage writes come from its own modules",
    "gptpipe/stage.py": "the stage runner: inputs checked, launcher, atomic outputs, metrics; the work is the stage's",
    "gptpipe/artifacts.py": "reads dvc.yaml itself: where each path is and which stage makes it, not what is in it",
    "gptpipe/dist.py": "which device and how many processes; the device is a param each stage lists (device.*)",
}


def module_file(name: str) -> Path | None:
    """The repo file of a gptpipe/flows module (a package's __init__.py), or None for any other module."""
    if name.split(".")[0] not in ("gptpipe", "flows"):
        return None
    path = REPO / Path(*name.split("."))
    for f in (path.with_suffix(".py"), path / "__init__.py"):
        if f.is_file():
            return f
    return None


def imports(path: Path) -> set[Path]:
    """The gptpipe/flows module files `path` imports (`from pkg import mod` counts mod when it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            found |= {f for i in range(1, len(parts) + 1) if (f := module_file(".".join(parts[:i])))}
    return found


def docstring_only(f: Path) -> bool:
    body = ast.parse(f.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def closure(path: Path) -> set[str]:
    """The module files `path` runs, directly or through the modules it imports."""
    seen, todo = set(), [path]
    while todo:
        for f in imports(todo.pop()) - seen:
            seen.add(f)
            todo.append(f)
    return {str(f.relative_to(REPO)) for f in seen if not docstring_only(f)}


def covered(module: str, deps: list[str]) -> bool:
    return any(module == d or module.startswith(d.rstrip("/") + "/") for d in deps)


def test_every_stage_depends_on_the_modules_it_runs():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, stage in stages.items():
        shim = f"stages/{name}.py"
        assert shim in stage["deps"], f"dvc.yaml: stage {name} does not list its own {shim}"
        gaps = sorted(m for m in closure(REPO / shim) if m not in INFRA and not covered(m, stage["deps"]))
        if gaps:
            missing[name] = gaps
    assert not missing, "dvc.yaml: add to each stage's deps the modules it runs: " + "; ".join(
        f"{name}: {', '.join(gaps)}" for name, gaps in missing.items())


def test_the_closure_follows_imports_through_modules():
    assert {"gptpipe/tasks.py", "gptpipe/chat_data.py"} <= closure(REPO / "stages/tasks.py")
    assert "gptpipe/corpus.py" in closure(REPO / "stages/tokenize.py"), "tokenize -> encode -> corpus"


def test_no_stage_depends_on_code_it_does_not_run():
    """A stale code dep reruns a stage for nothing, and one that no longer exists stops `dvc repro`."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    stale = {}
    for name, stage in stages.items():
        runs = closure(REPO / f"stages/{name}.py") | {f"stages/{name}.py"}
        code = [d for d in stage["deps"] if d.startswith(("gptpipe/", "flows/", "stages/"))]
        extra = [d for d in code if not any(covered(m, [d]) for m in runs)]
        if extra:
            stale[name] = extra
    assert not stale, "dvc.yaml: remove the code deps a stage does not run: " + "; ".join(
        f"{name}: {', '.join(extra)}" for name, extra in stale.items())


def read_paths(shim: Path) -> set[str]:
    """The path arguments of the shim's `stage.run(...)` call, `${...}` filled from params as the runner does."""
    call = next(n for n in ast.walk(ast.parse(shim.read_text()))
                if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "run")
    return {artifacts.resolve(k.value.value, REPO) for k in call.keywords
            if k.arg != "launcher" and isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)}


def test_each_stage_depends_on_the_data_it_reads_and_no_more():
    """A path a stage reads but does not list never reruns it; a folder listed where the stage reads one file
    of it reruns it for nothing (midtrain listed data/raw/tasks: a new held-out set reran it and all after)."""
    wrong = {}
    for name, stage in artifacts.graph(REPO).items():  # data deps only, outs, metrics and plots
        reads = [r for r in read_paths(REPO / f"stages/{name}.py") if not covered(r, stage["outs"] + stage["metrics"])]
        data = stage["deps"]
        unlisted = [r for r in reads if not any(covered(r, [d]) or covered(d, [r]) for d in data)]
        broad = [d for d in data if any(r != d and covered(r, [d]) for r in reads)]
        if unlisted or broad:
            wrong[name] = f"add {unlisted}" if unlisted else f"name the files it reads instead of {broad}"
    assert not wrong, "dvc.yaml deps: " + "; ".join(f"{name}: {fix}" for name, fix in wrong.items())
