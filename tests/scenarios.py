"""Small scenarios built in code for the optimizer's oracle tests."""

from optimizer import catalog
from optimizer.schema import (DemandConfig, FleetConfig, OfferConfig, RunConfig, SegmentConfig,
                              SolverConfig, TimeConfig)


def segment(demand="constant_elasticity", elasticity=2.0, models=("llama-3p1-8b",), tier="interactive",
            tpot_ms=50.0, peak_to_mean=1.5, quality_sensitivity=0.0, volume=1e10, price=(0.2, 0.6), **kw):
    offers = {m: OfferConfig(input_usd_per_mtok=price[0], output_usd_per_mtok=price[1], price_source="test")
              for m in models}
    return SegmentConfig(tier=tier, offers=offers, input_tokens_per_day=volume, isl=1000.0, osl=250.0,
                         demand=demand, elasticity=elasticity, quality_sensitivity=quality_sensitivity,
                         tpot_ms=tpot_ms if tier == "interactive" else None, peak_to_mean=peak_to_mean, **kw)


def run_config(segments: dict, gpus=("h100-sxm",), precisions=("fp8",), integer=False, method="auto",
               periods=1, **fleet_kw) -> RunConfig:
    """A scenario of ``segments``; the day as one period unless ``periods`` (flat profiles give the
    same plan at any number of periods: tests/test_hourly.py)."""
    return RunConfig(
        demand=DemandConfig(name="test", segments=segments),
        fleet=FleetConfig(gpus=list(gpus), precisions=list(precisions), **fleet_kw),
        time=TimeConfig(periods=periods, hours_per_period=24.0 / periods),
        solver=SolverConfig(integer_fleet=integer, method=method),
        efficiency=catalog.load_efficiency("calibrated"))
