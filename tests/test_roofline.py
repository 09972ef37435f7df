"""gpu.glance.roofline_points, the intro's roofline, on the recorded sets (CPU only).

Every trick gives its headline kernel (the table's kernel) and the strongest
baseline of the same run as points at their recorded FLOPs per byte; no point sits
above the card's roof by more than the ceilings' spread, and a row whose counts or
time are wrong by a factor is caught.
"""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest

from gpu import glance, results

RECORDED = [c for c in results.cards() if results.load("ceilings", c)]


def _by(points, role):
    return {p["key"]: p for p in points if p["role"] == role}


@pytest.mark.parametrize("card", RECORDED)
def test_one_kernel_and_one_baseline_point_per_trick(card):
    points = glance.roofline_points(card)
    table = {r["key"]: r for r in glance.rows(card)}
    kernels, bases = _by(points, "kernel"), _by(points, "baseline")
    assert len(points) == len(kernels) + len(bases)
    for t in glance.TRICKS:
        if table[t.key]["kernel"] == glance.DASH:
            assert t.key not in kernels
            continue
        k = kernels[t.key]
        # the table's headline kernel, and the baseline the table compares it with
        assert table[t.key]["kernel"].startswith(k["name"] + " at"), (card, k)
        if table[t.key]["vs_baseline"] != glance.DASH:
            name = re.escape(bases[t.key]["name"])
            assert re.search(rf"than {name}$|with {name} ", table[t.key]["vs_baseline"])
        assert k["family"] == glance.FAMILY[t.key]


@pytest.mark.parametrize("card", RECORDED)
def test_intensities_and_rates_are_positive_and_finite(card):
    for p in glance.roofline_points(card):
        for f in ("intensity", "flop_per_s", "roof_flop_per_s", "of_roof"):
            assert p[f] is not None and math.isfinite(p[f]) and p[f] > 0, (card, p)
        assert p["intensity"] == pytest.approx(p["flops"] / p["bytes"])
        assert not p["note"]


@pytest.mark.parametrize("card", RECORDED)
def test_no_point_above_the_roof(card):
    points = glance.roofline_points(card)
    assert glance.above_roof(points) == [], card
    ceil = glance.roofs(card)
    assert ceil["ridge"] == pytest.approx(ceil["flop_per_s"] / ceil["bytes_per_s"])
    for p in points:  # the roof is the lower of the two lines
        lines = (ceil["bytes_per_s"] * p["intensity"], ceil["flop_per_s"])
        assert p["roof_flop_per_s"] == pytest.approx(min(lines))


@pytest.mark.parametrize("card", RECORDED)
def test_gemm_like_points_sit_at_their_real_intensity(card):
    """σ-MoE's kernel and its dense baseline are GEMMs: far right of 1 FLOP/byte
    (the decode GEMVs and the gather sit near or below 1)."""
    points = glance.roofline_points(card)
    kernels, bases = _by(points, "kernel"), _by(points, "baseline")
    assert kernels["ffn_approx"]["intensity"] > 50
    assert bases["ffn_approx"]["intensity"] > 50
    assert kernels["attention"]["intensity"] == pytest.approx(1.0, rel=0.01)
    assert kernels["precompute"]["intensity"] < 1


@pytest.mark.parametrize("card", RECORDED)
def test_of_roof_is_of_floor_where_the_floor_is_the_same_roof(card):
    """Decode attention's floor is bytes over the read ceiling, the roof's slope:
    its fraction of the roof is its fraction of the floor."""
    p = _by(glance.roofline_points(card), "kernel")["attention"]
    row = next(r for r in glance.rows(card) if r["key"] == "attention")
    assert p["of_roof"] == pytest.approx(float(row["of_floor"]), abs=0.01)


def _copy(card, tmp_path):
    root = tmp_path / "results"
    shutil.copytree(results.RESULTS / card, root / card)
    return root


def _edit(root, card, name, row_name, **scale):
    """Scale fields of every row called row_name in results name of card."""
    p = root / card / f"{name}.json"
    doc = json.loads(p.read_text())
    for r in doc["rows"]:
        if r["name"] == row_name:
            for k, f in scale.items():
                r[k] *= f
    p.write_text(json.dumps(doc))


@pytest.mark.skipif(not RECORDED, reason="no set recorded")
@pytest.mark.parametrize(
    "key,row_name,scale",
    [
        # decode attention sits on the bandwidth slope: bytes counted tenfold
        # (traffic it cannot have moved in its time) put it far above the roof
        ("attention", "v7", {"bytes": 10}),
        # the same with the time cut tenfold (a timing that lost its work)
        ("attention", "v7", {"median_us": 0.1}),
        # σ-MoE's dense baseline is near the GEMM rate: FLOPs counted tenfold
        ("ffn_approx", "torch_param_equal", {"flops": 10}),
    ],
)
def test_a_count_wrong_by_a_factor_lands_above_the_roof(tmp_path, key, row_name, scale):
    card = RECORDED[-1]
    root = _copy(card, tmp_path)
    trick = next(t for t in glance.TRICKS if t.key == key)
    _edit(root, card, trick.head, row_name, **scale)
    bad = glance.above_roof(glance.roofline_points(card, root))
    assert [(p["key"], p["name"]) for p in bad] == [(key, row_name)], bad
    assert bad[0]["of_roof"] > 5


@pytest.mark.skipif(not RECORDED, reason="no set recorded")
def test_bytes_cut_tenfold_move_a_point_right_under_a_higher_roof(tmp_path):
    """Undercounted bytes are not caught by the roof: the point moves ten times to
    the right, where the slope is ten times higher (the floor check in gpu.bench
    cannot catch them either: the floor drops with the bytes)."""
    card = RECORDED[-1]
    before = _by(glance.roofline_points(card), "kernel")["attention"]
    root = _copy(card, tmp_path)
    _edit(root, card, "attention", "v7", bytes=0.1)
    after = _by(glance.roofline_points(card, root), "kernel")["attention"]
    assert after["intensity"] == pytest.approx(10 * before["intensity"])
    assert after["of_roof"] == pytest.approx(before["of_roof"] / 10)
    assert glance.above_roof([after]) == []


@pytest.mark.skipif(not RECORDED, reason="no set recorded")
def test_missing_counts_or_ceilings_give_notes_not_nan(tmp_path):
    card = RECORDED[-1]
    root = _copy(card, tmp_path)
    p = root / card / "deja_vu.json"
    doc = json.loads(p.read_text())
    for r in doc["rows"]:
        r.pop("flops", None)
    p.write_text(json.dumps(doc))
    points = glance.roofline_points(card, root)
    dv = [q for q in points if q["key"] == "deja_vu"]
    assert len(dv) == 2 and all(q["intensity"] is None and q["note"] for q in dv)
    assert glance.above_roof(points) == []
    (root / card / "ceilings.json").unlink()
    assert glance.roofs(card, root) is None
    points = glance.roofline_points(card, root)
    assert all(q["of_roof"] is None for q in points)
    assert glance.above_roof(points) == []
