"""Test helpers: central finite differences in float64."""

import jax
import jax.numpy as jnp
import numpy as np


def fd_grad(f, x, h=1e-6):
    """Central finite-difference derivative of scalar ``f`` at scalar ``x`` (relative step)."""
    x = float(x)
    step = h * max(abs(x), 1.0)
    return (float(f(x + step)) - float(f(x - step))) / (2 * step)


def assert_grad_matches_fd(f, x, rtol=1e-4, atol=1e-10):
    """``jax.grad(f)(x)`` agrees with a central difference."""
    g = float(jax.grad(lambda t: f(t))(jnp.asarray(float(x), jnp.float64)))
    fd = fd_grad(f, x)
    np.testing.assert_allclose(g, fd, rtol=rtol, atol=atol)
