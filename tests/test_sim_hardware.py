"""Hardware profiles: presets, TOML round trip, bad files, curves, and the cost model built on them."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from sim.costs import CostModel
from sim.hardware import CopyCurve, OpCurve, load_profile, preset_names
from sim.testing import tiny_hardware, tiny_shape
from traces.fileio import InputError
from traces.shapes import KNOWN_SHAPES


def test_presets_load_and_say_where_their_numbers_come_from() -> None:
    assert {"h200", "a100-pcie-gen4", "rtx4090", "v100-gen3", "t4-gen3"} <= set(preset_names())
    h200 = load_profile("h200")
    assert h200.meta.source.startswith("measured")
    assert h200.copy.serial and h200.copy.engines == 2  # copies ran one at a time; two kept committed
    for name in ("a100-pcie-gen4", "rtx4090", "v100-gen3", "t4-gen3"):
        profile = load_profile(name)
        assert profile.meta.source == "datasheet" and "assum" in profile.meta.notes


def test_h200_preset_reproduces_the_measured_copy_times() -> None:
    copy = load_profile("h200").copy
    curve = copy.curve
    i = curve.sizes_bytes.index(9437184)
    assert copy.transfer_s(9437184) == curve.pinned_s[i]
    assert 9437184 / copy.transfer_s(9437184) == pytest.approx(52e9, rel=0.1)  # PCIe Gen5 x16
    last = curve.sizes_bytes[-1]
    wire = curve.pinned_s[-1] - copy.latency_s  # beyond the curve: the measured rate of its last point
    assert copy.transfer_s(2 * last) == pytest.approx(copy.latency_s + 2 * wire, rel=1e-9)
    assert copy.transfer_s(9437184, pinned=False) > 2.5 * copy.transfer_s(9437184)


def test_profiles_round_trip_through_toml(tmp_path: Path) -> None:
    profile = load_profile("h200")
    path = tmp_path / "p.toml"
    profile.save(path)
    assert load_profile(path) == profile
    attention = OpCurve("attention", "x", (1, 2), ((1e-5, 2e-5), (1.5e-5, 3e-5)), (1, 100))
    richer = dataclasses.replace(profile, compute=dataclasses.replace(profile.compute, curves=(attention,)))
    richer.save(path)
    assert load_profile(path) == richer
    delayed = profile.with_copy(gate_delay_s=7e-6, gap_s=1.3e-6, landing_delay_s=4e-6)
    delayed.save(path)
    assert load_profile(path) == delayed
    assert "gap_s" not in profile.with_copy(gap_s=0.0).to_dict()["copy"]  # absent when 0, like issue_s


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[meta\n", "not valid TOML"),
        ("[meta]\nname='x'\nsource='y'\n[copy]\n", "no [compute] table"),
        (
            "[meta]\nname='x'\nsource='y'\n[copy]\nlatency_s=0\npinned_gbps=1\npageable_gbps=1\nengines=0\n"
            "link_gbps=1\n[compute]\nlaunch_overhead_s=0\npeak_tflops=1\nhbm_gbps=1\n",
            "engines must be >= 1",
        ),
        (
            "[meta]\nname='x'\nsource='y'\n[copy]\nlatency_s=0\npinned_gbps=1\npageable_gbps=1\nengines=1\n"
            "link_gbps=1\ngap_s=-1e-6\n[compute]\nlaunch_overhead_s=0\npeak_tflops=1\nhbm_gbps=1\n",
            "gap_s must be >= 0",
        ),
    ],
)
def test_bad_profiles_are_refused_with_the_file_name(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=re.escape(message)) as info:
        load_profile(path)
    assert str(path) in str(info.value)


def test_missing_profile_lists_the_presets() -> None:
    with pytest.raises(InputError, match="h200"):
        load_profile("nowhere.toml")


def test_curves_interpolate_and_extrapolate() -> None:
    curve = OpCurve("expert", "s", (1, 3), (10.0, 30.0))
    assert curve.at(2) == 20.0 and curve.at(5) == 50.0
    grid = OpCurve("attention", "s", (1, 2), ((1.0, 3.0), (2.0, 6.0)), (0, 10))
    assert grid.at(1.5, 5) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        CopyCurve((2, 1), (1.0, 2.0))


def test_cost_model_prefers_measured_curves_for_its_shape() -> None:
    shape = KNOWN_SHAPES["qwen3-30b-a3b"]
    h200 = load_profile("h200")
    costs = CostModel(shape, h200)
    measured = h200.compute.curve("expert", shape.name).at(1)
    assert costs.expert_s(1) == pytest.approx(measured)
    other = dataclasses.replace(shape, name="not-measured")
    roofline = CostModel(other, h200).expert_s(1)
    assert roofline == pytest.approx(5 * h200.compute.launch_overhead_s)  # launch-bound at one token
    assert CostModel(shape, h200, compute_scale=2.0).expert_s(1) == pytest.approx(2 * measured)


def test_roofline_grows_with_work_and_predictor_runs_where_asked() -> None:
    costs = CostModel(tiny_shape(), tiny_hardware())
    assert costs.attention_s(1, 100_000) > costs.attention_s(1, 10)
    assert costs.predictor_s(None, 1) == 0.0
    assert costs.predictor_s("gate", 1) == costs.router_s(1)
    assert costs.predictor_s("mlp", 1, "cpu") != costs.predictor_s("mlp", 1, "gpu")
