"""Off-peak price sheets: a product valid in named hours of the day, as a decision.

Oracles: the hours → period shares by hand; calibration (the blocks' reference volumes add up to
the segment's); the Steiner/Boiteux firm-peak closed form (ECONOMICS.md §2.7) from ONE segment
whose day is priced by an all-day sheet and an off-peak sheet, equal to the two-segment version
of tests/test_hourly.py; with no cost difference between the hours the two sheets price alike.
"""

from dataclasses import replace

import numpy as np
import pytest

from optimizer.engine import optimize
from optimizer.errors import ConfigError
from optimizer.problem import build_problem, scenario_inputs
from optimizer.schema import DemandConfig, ProductConfig, SegmentConfig, TimeConfig
from optimizer.windows import window_share
from tests.scenarios import run_config


def test_window_shares_by_hand():
    np.testing.assert_allclose(window_share(["16:30-00:30"], 24, 1.0, "h"),
                               [0.5] + [0.0] * 15 + [0.5] + [1.0] * 7)
    np.testing.assert_allclose(window_share(["00:00-01:00", "04:00-06:00", "10:00-24:00"], 12, 2.0, "h"),
                               [0.5, 0, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    np.testing.assert_allclose(window_share(["12:00-24:00"], 2, 12.0, "h"), [0.0, 1.0])
    np.testing.assert_allclose(window_share(["16:30-00:30"], 1, 24.0, "h"), [1 / 3])
    np.testing.assert_allclose(window_share(["22:00-02:00"], 4, 12.0, "h"), [1 / 6, 1 / 6, 1 / 6, 1 / 6])  # 2 days
    for bad, why in ((["25:00-01:00"], "hours 00-23"), (["9-10"], "HH:MM-HH:MM"), ([], "is empty"),
                     (["01:00-05:00", "04:00-06:00"], "overlap")):
        with pytest.raises(ConfigError, match=why):
            window_share(bad, 24, 1.0, "demand.products.x.hours")


def _product(hours=(), of=None, price=(0.2, 0.6), model="llama-3p1-8b", tier="standard"):
    return ProductConfig(model=model, tier=tier, input_usd_per_mtok=price[0], output_usd_per_mtok=price[1],
                         price_source="test", off_peak_of=of, hours=list(hours))


def _segment(volume, profile="flat", peak_to_mean=1.5, elasticity=2.0, products=None):
    return SegmentConfig(products=products or {"day": 1.0}, input_tokens_per_day=volume, isl=1000.0, osl=250.0,
                         demand="constant_elasticity", elasticity=elasticity, tpot_ms=50.0,
                         peak_to_mean=peak_to_mean, profile=profile)


def _config(segments, products, periods, **fleet_kw):
    cfg = run_config({}, on_demand=False, **fleet_kw)
    return replace(cfg, demand=DemandConfig(name="test", segments=segments, products=products),
                   time=TimeConfig(periods=periods, hours_per_period=24.0 / periods))


def test_a_segment_buying_an_off_peak_sheet_splits_into_two_blocks_of_its_day(tmp_path):
    path = tmp_path / "day.csv"
    path.write_text("hour,load_vs_mean\n" + "\n".join(f"{h},{1.5 if 8 <= h < 20 else 0.5}" for h in range(24)))
    products = {"day": _product(), "night": _product(["20:00-08:00"], of="day", price=(0.1, 0.3))}
    cfg = _config({"chat": _segment(1e10, profile=str(path), peak_to_mean=1.5)}, products, 24)
    numbers, _, labels = scenario_inputs(cfg)
    assert labels.segments == ("chat@peak", "chat@off-peak")
    assert labels.segment_parent == ("chat", "chat")
    assert labels.segment_hours == ("outside 20:00-08:00", "20:00-08:00")
    assert [labels.products[r] for r in np.asarray(labels.flow_product)[:, 0]] == ["day", "night"]
    assert labels.product_hours == ("outside 20:00-08:00", "20:00-08:00")
    prob, _ = build_problem(cfg)
    ref = np.asarray(prob.demand.ref_demand)[:, 0] * 1000.0  # input tokens per day at reference prices
    np.testing.assert_allclose(ref, [0.75e10, 0.25e10], rtol=1e-12)  # 12 h at 1.5 and 12 h at 0.5
    from optimizer import economics as econ

    peak, mean = (np.asarray(x) for x in econ.period_weights(prob))
    np.testing.assert_allclose(mean[0], np.where((np.arange(24) >= 8) & (np.arange(24) < 20), 2.0, 0.0))
    np.testing.assert_allclose(mean[1], np.where((np.arange(24) >= 8) & (np.arange(24) < 20), 0.0, 2.0))
    # the segment's load, hour by hour, is the sum of its blocks' (peak_to_mean = the profile's peak)
    np.testing.assert_allclose(peak[0] * 0.75 + peak[1] * 0.25, [1.5 if 8 <= h < 20 else 0.5 for h in range(24)])


def test_firm_peak_prices_from_one_segment_with_an_off_peak_sheet(tmp_path):
    """Steiner/Boiteux, CE e = 2, one segment whose day is 2e11 tokens in the first 12 h and 1e10
    in the last: p_peak = (b + β) e/(e − 1) on the all-day sheet, p_off = b e/(e − 1) on the
    off-peak sheet (b: the idle value ν forgone; β: the rest of the reserved rent)."""
    p0, p1 = 2 * 2e11 / 2.1e11, 2 * 1e10 / 2.1e11
    path = tmp_path / "day.csv"
    path.write_text(f"hour,load_vs_mean\n0,{p0!r}\n12,{p1!r}\n")
    products = {"day": _product(), "night": _product(["12:00-24:00"], of="day")}
    cfg = _config({"chat": _segment(2.1e11, profile=str(path), peak_to_mean=p0)}, products, 2,
                  idle_value_usd_per_gpu_hour=0.6 * 2.69)
    res = optimize(cfg)
    prob, b = res.prob, res.relaxed_breakdown
    assert res.relaxed.result == 0
    unit = float(prob.usd_per_gpu_hour[0]) / 3600 * np.asarray(prob.gpu_s_per_request)[:, 0, 0, 0] * 2 / float(
        prob.peak_utilization)
    price = np.asarray(b.price_per_request)[:, 0]
    nu, e = 0.6, 2.0
    assert price[0] == pytest.approx(unit[0] * (1 - nu / 2) * e / (e - 1), rel=2e-3)
    assert price[1] == pytest.approx(unit[1] * (nu / 2) * e / (e - 1), rel=2e-3)
    sheet = np.asarray(b.sheet)
    assert sheet[1, 0] < 0.5 * sheet[0, 0]  # the night sheet is the cheaper one


def test_without_a_cost_difference_the_two_sheets_price_alike():
    """One period: both blocks see the same cost per request, so each sheet earns the Lerner price
    of constant elasticity e = 2, p = c e/(e − 1), with c the reserved GPU-seconds a request takes
    at the peak (peak_to_mean 1.5 / ρ_peak 0.8 binds over 1 / ρ_day)."""
    products = {"day": _product(), "night": _product(["16:30-00:30"], of="day")}
    res = optimize(_config({"chat": _segment(1e10)}, products, 1))
    prob, b = res.prob, res.relaxed_breakdown
    assert res.relaxed.result == 0
    sheet = np.asarray(b.sheet)
    assert sheet[1] == pytest.approx(sheet[0], rel=1e-4)
    cost = float(prob.usd_per_gpu_hour[0]) / 3600 * np.asarray(prob.gpu_s_per_request)[:, 0, 0, 0] * 1.5 / 0.8
    np.testing.assert_allclose(np.asarray(b.price_per_request)[:, 0], 2.0 * cost, rtol=1e-3)
    np.testing.assert_allclose(np.asarray(prob.demand.ref_demand)[:, 0] * 1000.0, [2e10 / 3, 1e10 / 3], rtol=1e-12)


@pytest.mark.parametrize("change,match", [
    ({"night": _product(["20:00-08:00"], of="dawn")}, "off_peak_of = 'dawn' is not in demand.products"),
    ({"night": _product(["20:00-08:00"], of="day", model="llama-3p3-70b")}, "an off-peak product sells the same model"),
    ({"night": _product(["20:00-08:00"])}, "needs demand.products.night.off_peak_of"),
    ({"night": _product(["20:00-08:00"], of="day", tier="batch")}, "differs from the tier"),
    ({"night": _product(["08:00-08:00"], of="day")}, "accepted hours covering part of its day"),
    ({"night": _product(["8:00-20"], of="day")}, "HH:MM-HH:MM"),
])
def test_off_peak_products_with_a_wrong_field_are_refused(change, match):
    products = {"day": _product(), **change}
    with pytest.raises(ConfigError, match=match):
        scenario_inputs(_config({"chat": _segment(1e10)}, products, 24))


def test_a_sweep_axis_on_a_split_segment_moves_both_blocks():
    import jax.numpy as jnp

    from optimizer.sweep.axes import activated, apply_axes, resolve_path

    products = {"day": _product(), "night": _product(["20:00-08:00"], of="day")}
    cfg = _config({"chat": _segment(1e10), "rag": _segment(2e10)}, products, 24)
    numbers, _, labels = scenario_inputs(cfg)
    assert labels.segments == ("chat@peak", "chat@off-peak", "rag@peak", "rag@off-peak")
    elasticity = resolve_path("demand.segments.rag.elasticity", labels)
    share = resolve_path("demand.segments.chat.products.day", labels)
    floor = resolve_path("demand.segments.chat.min_quality", labels)
    assert elasticity.index == ((2, 3),) and share.index == ((0, 1), 0)
    got = apply_axes(numbers, [elasticity, share], [True, False], jnp.asarray([1.5, 0.25]))
    np.testing.assert_allclose(np.asarray(got.elasticity), [2.0, 2.0, 3.0, 3.0])
    np.testing.assert_allclose(np.asarray(got.volume_share)[:, 0], [0.25, 0.25, 1.0, 1.0])
    assert activated(labels, [floor]).has_min_quality == (True, True, False, False)
    with pytest.raises(ConfigError, match="unknown segment 'chat@peak'"):
        resolve_path("demand.segments.chat@peak.elasticity", labels)
