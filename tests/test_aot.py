"""Exported sweep programs: traced once, reloaded without tracing, equal to the jitted program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optimizer import aot
from optimizer.problem import Numbers, Pools, assemble_jit, scenario_inputs


@pytest.fixture()
def export_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(aot, "export_dir", lambda: tmp_path)
    aot.forget()
    yield tmp_path
    aot.forget()


def test_exported_program_is_traced_once_and_reloaded(export_dir):
    traces = []

    @jax.jit
    def f(x, y):
        traces.append(1)  # runs at trace time only
        return {"s": x * y.sum(), "t": jnp.tanh(x)}

    x, y = jnp.linspace(0.0, 1.0, 5), jnp.ones((3, 5))
    first = aot.exported("f", f, (x, y), "v1")(x, y)
    assert len(traces) == 1 and len(list(export_dir.glob("f-*.xla"))) == 1
    aot.forget()  # as a new process would: deserialise, no Python tracing
    again = aot.exported("f", f, (x, y), "v1")(x * 2, y)
    assert len(traces) == 1
    np.testing.assert_allclose(np.asarray(again["s"]), np.asarray(f(x * 2, y)["s"]), rtol=0, atol=0)
    np.testing.assert_allclose(np.asarray(first["t"]), np.tanh(np.asarray(x)), rtol=1e-14)
    # another shape or another static setting is another program
    aot.exported("f", f, (x[:4], y[:, :4]), "v1")
    aot.exported("f", f, (x, y), "v2")
    assert len(list(export_dir.glob("f-*.xla"))) == 3


def test_corrupt_export_is_rewritten(export_dir):
    f = jax.jit(lambda x: x + 1.0)
    x = jnp.arange(3.0)
    aot.exported("g", f, (x,))
    (path,) = export_dir.glob("g-*.xla")
    path.write_bytes(b"not a program")
    aot.forget()
    np.testing.assert_array_equal(np.asarray(aot.exported("g", f, (x,))(x)), [1.0, 2.0, 3.0])


def test_a_quick_program_is_stored_apart_and_computes_the_same(export_dir):
    """``quick=True`` (no LLVM optimisation) is another program, with the same numbers up to rounding."""
    f = jax.jit(lambda x: jnp.sum(jnp.exp(jnp.sin(x)) * x) + jnp.cumsum(x ** 2))
    x = np.linspace(-2.0, 3.0, 257)
    full = np.asarray(aot.exported("p", f, (x,))(x))
    assert not aot.stored("p", (x,), quick=True)
    quick = np.asarray(aot.exported("p", f, (x,), quick=True)(x))
    assert aot.stored("p", (x,), quick=True) and len(list(export_dir.glob("p-*.xla"))) == 2
    np.testing.assert_allclose(quick, full, rtol=1e-13)
    np.testing.assert_allclose(quick, np.sum(np.exp(np.sin(x)) * x) + np.cumsum(x ** 2), rtol=1e-13)
    assert aot.options(True)["xla_backend_optimization_level"] == 0 and aot.options(False) == aot.COMPILER_OPTIONS


def test_no_cache_dir_means_plain_jit(monkeypatch):
    monkeypatch.setattr(aot, "export_dir", lambda: None)
    f = jax.jit(lambda x: x)
    assert aot.exported("h", f, (jnp.zeros(2),)) is f


def test_scenario_assembly_round_trips_through_export(export_dir):
    """The NamedTuple pytrees of a scenario (Numbers, Pools, Deployment, Problem) serialise."""
    from hydra import compose, initialize_config_dir

    from optimizer.catalog import to_schema
    from optimizer.schema import RunConfig, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(aot.ROOT / "conf"), version_base="1.3"):
        cfg = to_schema(compose(config_name="config"), RunConfig)
    base, pools, _ = scenario_inputs(cfg)
    assert isinstance(base, Numbers) and isinstance(pools, Pools)
    want = assemble_jit(base, pools)
    fresh = aot.exported("assemble", assemble_jit, (base, pools))(base, pools)
    aot.forget()
    got = aot.exported("assemble", assemble_jit, (base, pools))(base, pools)
    for a, b, c in zip(jax.tree.leaves(got), jax.tree.leaves(fresh), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the stored program is the compiled one
        # compiled with aot.COMPILER_OPTIONS: the same numbers as the plain jit up to rounding
        np.testing.assert_allclose(np.asarray(a, float), np.asarray(c, float), rtol=1e-12, atol=1e-300)
    assert type(got) is type(want)


@pytest.mark.parametrize("overrides", [[], ["time=day", "sweep=risk"]], ids=["default", "hourly-pruned"])
def test_problem_shapes_match_the_assembly_without_tracing_the_cost_kernels(overrides):
    """What a first run compiles the solve from: the shapes of ``assemble`` exactly, on the default
    scenario and on per-segment candidate pools (a sweep's pruning), without tracing the cost kernels."""
    from hydra import compose, initialize_config_dir

    from optimizer import problem as problem_mod
    from optimizer.catalog import to_schema
    from optimizer.problem import candidate_scores_jit, problem_shapes, prune_candidates
    from optimizer.schema import RunConfig, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(aot.ROOT / "conf"), version_base="1.3"):
        cfg = to_schema(compose(config_name="config", overrides=overrides), RunConfig)
    base, pools, _ = scenario_inputs(cfg)
    if overrides:
        pools = prune_candidates(pools, *candidate_scores_jit(base, pools, bisection_steps=8))
        assert np.ndim(pools.valid) == 3  # (S, P, W): candidates per segment
    want = jax.eval_shape(assemble_jit, base, pools)
    got = problem_shapes(base, pools)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)

    def no_kernels(*args, **kwargs):
        raise AssertionError("problem_shapes traced the cost kernels")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(problem_mod, "serving_of", no_kernels)
        assert jax.tree.structure(problem_shapes(base, pools)) == jax.tree.structure(want)


def test_lowered_is_called_before_a_compile_and_not_on_a_load(export_dir):
    """``exported(..., lowered=)`` tells a caller that the program's Python part is done: once, after
    lowering a program it compiles; never for one it loads."""
    calls = []
    f = jax.jit(lambda x: 2.0 * x)
    x = np.arange(3.0)
    aot.exported("twice", f, (x,), lowered=lambda: calls.append("lowered"))
    assert calls == ["lowered"]
    aot.forget()
    np.testing.assert_array_equal(np.asarray(aot.exported("twice", f, (x,), lowered=lambda: calls.append("again"))(x)),
                                  2.0 * x)
    assert calls == ["lowered"]


STORE_PROBE = """
import os, sys
os.environ["TOKENMARGIN_JAX_CACHE"] = sys.argv[1]
from optimizer import runtime
runtime.configure()
import jax, jax.numpy as jnp
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # every program in JAX's cache too
from optimizer import aot

@jax.jit
def tm_store_probe(x, y):
    # eigh: a LAPACK kernel, which a stored executable must find initialised in a new process
    return {"q": (x / (1.0 + y.sum()) + jnp.exp(-x)) @ y.T, "r": jnp.tanh(x).sum(),
            "e": jnp.linalg.eigh(y.T @ y + jnp.diag(x[0]))[0].sum()}

x, y = jnp.linspace(0.0, 1.0, 6).reshape(2, 3), jnp.ones((4, 3))
out = aot.exported("tm_store_probe", tm_store_probe, (x, y))(x, y)
print("VALUE", float(out["q"].sum()), float(out["r"]), float(out["e"]))
"""


def test_stored_program_runs_in_a_new_process_even_when_jax_cache_held_it(tmp_path):
    """The stored executable is compiled afresh, never taken from JAX's persistent cache (XLA:CPU
    executables loaded from there serialise into files that fail in the next process)."""
    import subprocess
    import sys

    def probe():
        r = subprocess.run([sys.executable, "-c", STORE_PROBE, str(tmp_path / "jax")], cwd=aot.ROOT,
                           capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                              "JAX_PLATFORMS": "cpu"})
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    first = probe()  # compiles; JAX's cache and the program store both get it
    store = tmp_path / "jax" / aot.SUBDIR
    for p in store.glob("tm_store_probe-*"):
        p.unlink()  # as after a source change that leaves this program's HLO unchanged
    probe()  # JAX's cache holds the executable: the store must still get a fresh compile
    assert len(list(store.glob("tm_store_probe-*" + aot.SUFFIX))) == 1
    third = probe()  # loads the stored executable in a new process and runs it
    assert third.stdout.split("VALUE")[1] == first.stdout.split("VALUE")[1]
    assert "failed to run" not in third.stderr


def test_a_program_compiled_from_shapes_serves_arrays_and_compiles_once(export_dir):
    """A program compiled ahead from ``ShapeDtypeStruct``s (what a first run does beside the
    assembly) is the one later calls with arrays get; threads asking at once compile it once."""
    from concurrent.futures import ThreadPoolExecutor

    traces = []

    @jax.jit
    def f(x, y):
        traces.append(1)
        return x @ y

    x, y = np.arange(12.0).reshape(3, 4), np.ones((4, 2))
    specs = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(y.shape, y.dtype))
    assert not aot.stored("f", (x, y))
    with ThreadPoolExecutor(4) as pool:
        programs = list(pool.map(lambda a: aot.exported("f", f, a), [specs, (x, y), specs, (x, y)]))
    assert len(traces) == 1 and all(p is programs[0] for p in programs)
    assert aot.stored("f", (x, y)) and len(list(export_dir.glob("f-*.xla"))) == 1
    np.testing.assert_array_equal(np.asarray(programs[0](x, y)), x @ y)


def test_an_xla_without_a_compiler_option_compiles_without_it(export_dir, monkeypatch):
    monkeypatch.setattr(aot, "COMPILER_OPTIONS", {"xla_no_such_option_anywhere": True})
    f = jax.jit(lambda x: 2.0 * x)
    np.testing.assert_array_equal(np.asarray(aot.exported("k", f, (jnp.arange(3.0),))(jnp.arange(3.0))), [0.0, 2.0, 4.0])


def test_the_program_recorded_next_is_loaded_ahead_and_served(export_dir):
    """A run that needed ``g`` after ``f`` records it; a new process loads ``g`` ahead (no trace)."""
    traces = []

    @jax.jit
    def f(x):
        return x + 1.0

    @jax.jit
    def g(x):
        traces.append(1)
        return 3.0 * x

    x = np.arange(4.0)
    aot.exported("f", f, (x,))
    assert not aot.prefetch_next("f", (x,))  # nothing recorded yet
    aot.exported("g", g, (x,))
    aot.remember_next("f", (x,), ("g", (x,), ""))
    aot.forget()  # a new process
    assert aot.prefetch_next("f", (x,)) and not aot.prefetch_next("f", (x,))  # loaded once
    np.testing.assert_array_equal(np.asarray(aot.exported("g", g, (x,))(x)), 3.0 * x)
    assert len(traces) == 1  # served from the prefetched executable, not traced again
    # a record naming a program no longer stored is ignored
    aot.forget()
    for p in export_dir.glob("g-*.xla"):
        p.unlink()
    assert not aot.prefetch_next("f", (x,))
