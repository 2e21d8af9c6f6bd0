"""Shared fixtures. Tests run in float64 (oracle tolerances are unreliable in float32)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

from optimizer.aot import COMPILER_OPTIONS  # noqa: E402

# every jit of the tests compiles with the options of the stored programs a run uses (set before
# XLA's backend starts; the test processes the tests start inherit them)
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                    *(f"--{k}={str(v).lower()}" for k, v in COMPILER_OPTIONS.items())]).strip()
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

from kernels.roofline import Deployment, Efficiency  # noqa: E402
from kernels.serving import Workload  # noqa: E402


def llama8b_h100_fp8() -> Deployment:
    """Llama-3.1-8B (models.csv) at FP8 on one H100 SXM (gpu_specs.csv), by hand."""
    f = lambda x: jnp.asarray(x, jnp.float64)  # noqa: E731
    return Deployment(
        weight_bytes=f(8.03e9), dense_weight_bytes=f(8.03e9), expert_weight_bytes=f(0.0),
        num_experts=f(1.0), experts_per_token=f(1.0), active_params=f(8.03e9),
        expert_active_params=f(0.0),
        kv_full_bytes_per_token=f(65536.0), kv_window_bytes_per_token=f(0.0), window_tokens=f(0.0),
        attn_full_flops=f(4 * 32 * 32 * 128), attn_window_flops=f(0.0),
        attn_prefill_flops=f(4 * 32 * 32 * 128), layers=f(32.0), moe_layers=f(0.0),
        hidden_size=f(4096.0), kv_heads=f(8.0), hbm_bytes=f(80e9), mem_bw=f(3.35e12), peak_flops=f(1979e12),
        attn_peak_flops=f(1979e12), link_bw=f(450e9), scaleout_bw=f(50e9), domain_gpus=f(8.0),
        gpus=f(1.0), tp=f(1.0), ep=f(1.0))


def moe_like() -> Deployment:
    """A DeepSeek-V3-shaped MoE deployment on 8 GPUs (illustrative numbers for kernel tests)."""
    f = lambda x: jnp.asarray(x, jnp.float64)  # noqa: E731
    return Deployment(
        weight_bytes=f(671e9), dense_weight_bytes=f(17e9), expert_weight_bytes=f(654e9),
        num_experts=f(256.0), experts_per_token=f(8.0), active_params=f(37e9),
        expert_active_params=f(654e9 * 8 / 256),
        kv_full_bytes_per_token=f(35136.0), kv_window_bytes_per_token=f(0.0), window_tokens=f(0.0),
        attn_full_flops=f(61 * 2 * 128 * (576 + 512)), attn_window_flops=f(0.0),
        attn_prefill_flops=f(61 * 2 * 128 * (192 + 128)), layers=f(61.0), moe_layers=f(58.0),
        hidden_size=f(7168.0), kv_heads=f(1.0), hbm_bytes=f(141e9), mem_bw=f(4.8e12), peak_flops=f(1979e12),
        attn_peak_flops=f(1979e12), link_bw=f(450e9), scaleout_bw=f(50e9), domain_gpus=f(8.0),
        gpus=f(8.0), tp=f(8.0), ep=f(8.0))


@pytest.fixture
def dep8b() -> Deployment:
    return llama8b_h100_fp8()


@pytest.fixture
def dep_moe() -> Deployment:
    return moe_like()


@pytest.fixture
def eff() -> Efficiency:
    f = lambda x: jnp.asarray(x, jnp.float64)  # noqa: E731
    return Efficiency(f(0.8), f(0.6), f(0.7), f(1.0), f(0.002), f(0.9), f(0.0), f(0.0), f(0.0), f(1.0))


@pytest.fixture
def wl() -> Workload:
    f = lambda x: jnp.asarray(x, jnp.float64)  # noqa: E731
    return Workload(f(1000.0), f(1000.0), f(0.0))


@pytest.fixture(scope="session")
def cli_jax_cache(tmp_path_factory) -> str:
    """One compilation cache and program store for the command-line tests of a session (each a new
    process): the first compiles and stores the default scenario's programs, the others load them,
    as a user's second run does."""
    return str(tmp_path_factory.mktemp("cli-jax-cache"))

