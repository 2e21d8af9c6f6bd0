"""The package's layout: imports run one way (kernels → model → solve → apps → report / io), with
no circle, and importing the library configures nothing."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LAYERS = {  # module (or package prefix) -> layer; a module may import only its own layer or lower ones
    "kernels": 0,
    "optimizer.errors": 1, "optimizer.schema": 1, "optimizer.validate": 1, "optimizer.catalog": 1,
    "optimizer.runtime": 1, "optimizer.io": 1, "optimizer.aot": 1, "optimizer.jax_cache": 1, "optimizer.progress": 1,
    "optimizer.profiles": 1, "optimizer.windows": 1,
    "optimizer.params": 2, "optimizer.deployments": 2, "optimizer.economics": 2, "optimizer.decision": 2,
    "optimizer.problem": 3, "optimizer.constraints": 3, "optimizer.objective": 3, "optimizer.cases": 3,
    "optimizer.estimate": 3, "optimizer.calibration": 3,
    "optimizer.solve": 4,
    "optimizer.engine": 5, "optimizer.sweep": 5,
    "optimizer.plan": 6, "optimizer.price_sheet": 6, "optimizer.report": 6, "optimizer.sweep.report": 6,
    "optimizer.figures": 6,
    "optimizer.run": 7, "optimizer.run_estimate": 7, "optimizer.run_calibrate": 7, "optimizer.callbacks": 7,
    "optimizer.cli": 8,
}


def modules() -> dict[str, Path]:
    out = {}
    for p in [*ROOT.glob("optimizer/**/*.py"), *ROOT.glob("kernels/**/*.py")]:
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports_of(path: Path, mods: dict) -> set[str]:
    """Project modules imported by a file, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in mods}
    return found


def layer(mod: str) -> int:
    best = max((k for k in LAYERS if mod == k or mod.startswith(k + ".")), key=len)
    return LAYERS[best]


def test_every_module_has_a_layer_and_imports_run_one_way():
    mods = modules()
    wrong = []
    for m, p in mods.items():
        if m in ("optimizer", "kernels"):
            continue
        for dep in imports_of(p, mods):
            if dep in ("optimizer", "kernels") or dep == m or m.startswith(dep + ".") or dep.startswith(m + "."):
                continue  # a package's __init__ gathers its own modules
            if layer(dep) > layer(m):
                wrong.append(f"{m} (layer {layer(m)}) imports {dep} (layer {layer(dep)})")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    mods = modules()
    graph = {m: {d for d in imports_of(p, mods) if d != m and not m.startswith(d + ".")} for m, p in mods.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph.get(m, ()):
            if state.get(d) == 1:
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_importing_the_library_leaves_jax_in_float32_and_building_refuses_it():
    script = """
import jax
import optimizer.cli, optimizer.engine, optimizer.sweep, optimizer.estimate, optimizer.calibration
assert not jax.config.jax_enable_x64, "an import switched on float64"
assert not jax.config.jax_compilation_cache_dir, "an import switched on the compilation cache"
from optimizer.runtime import Float32Error
from tests.scenarios import run_config, segment
from optimizer.problem import build_problem
try:
    build_problem(run_config({"chat": segment()}))
except Float32Error as e:
    assert "float64" in str(e) and "optimizer.runtime.configure()" in str(e)
else:
    raise SystemExit("float32 was accepted")
from optimizer import runtime
runtime.configure(cache=False)
prob, _ = build_problem(run_config({"chat": segment()}))
assert prob.demand.ref_price.dtype == "float64"
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "HOME": str(ROOT)})
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
