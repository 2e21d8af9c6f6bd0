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
    aot.exported("assemble", assemble_jit, (base, pools))
    aot.forget()
    got = aot.exported("assemble", assemble_jit, (base, pools))(base, pools)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert type(got) is type(want)
