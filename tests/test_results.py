"""gpu.glance, the intro's table at a glance, on the recorded sets (CPU only)."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from gpu import bench, glance, results

# The headline kernel of each trick, as its chapter's verdict names it, per card:
# the fastest version of the family on that card's recorded set.
HEADLINE = {
    "h100": {
        "attention": "v7 at",
        "precompute": "v3 at",
        "slim_k": "slim_v6 at",
        "slim_x": "x_v5 at",
        "deja_vu": "v3_det at",
        "stagformer": "plain_24 v3 at",
        "ffn_approx": "moe_v5 at",
    },
}
HEADLINE["h200"] = dict(HEADLINE["h100"])
HEADLINE["h100"]["deja_vu"] = "v7_det at"  # the H100's deja_vu set of 2026-12-06
HEADLINE["h100"]["slim_k"] = "slim_v11 at"  # the H100 slim_attention set, 2026-12-06
HEADLINE["h200"]["deja_vu"] = "v7_det at"  # the H200 deja_vu set, 2026-12-06
HEADLINE["h200"]["slim_k"] = "slim_v12 at"  # the H200 slim_attention set, 2026-12-06
RECORDED = [c for c in ("h100", "h200") if c in results.cards()]


@pytest.mark.parametrize("card", RECORDED)
def test_every_trick_has_its_headline_kernel_and_figures(card):
    table = glance.rows(card)
    assert [r["key"] for r in table] == [t.key for t in glance.TRICKS]
    for r in table:
        assert r["kernel"].startswith(HEADLINE[card][r["key"]]), (card, r)
        assert 0 < float(r["of_floor"]) <= 1.0, (card, r)
        assert " than " in r["vs_baseline"] or "level with" in r["vs_baseline"]
        assert " of " in r["pays"], (card, r)
    md = glance.markdown(table)
    assert not re.search(r"\bnan\b|\| None \|", md, re.I)
    assert md.count("\n") == len(table) + 1


def test_h200_names_the_baselines_the_harness_recorded():
    if "h200" not in RECORDED:
        pytest.skip("no H200 set recorded")
    by = {r["key"]: r for r in glance.rows("h200")}
    assert by["attention"]["vs_baseline"].endswith("torch_sdpa")
    assert by["slim_k"]["vs_baseline"].endswith("torch_sdpa")
    assert by["precompute"]["vs_baseline"].endswith("torch_index_select_rope")
    assert by["stagformer"]["vs_baseline"].endswith("torch_plain_24")
    assert by["ffn_approx"]["vs_baseline"].endswith("torch_param_equal")


@pytest.mark.parametrize("card", RECORDED)
def test_the_computed_strongest_baseline_is_the_harness_choice(card):
    """Where a file lacks best_baseline (the H100 set), the fallback picks what
    gpu.bench.mark_baselines would have recorded."""
    for t in glance.TRICKS:
        rows = glance.ok_rows(results.load(t.head, card))
        base = glance.baselines_of(t.head)
        bare = [{k: v for k, v in r.items() if "baseline" not in k} for r in rows]
        marked = bench.mark_baselines([dict(r) for r in bare], base)
        for r, m in zip(bare, marked, strict=True):
            if m.get("best_baseline"):
                name, us = glance.strongest(bare, r, base)
                assert name == m["best_baseline"]
                assert us == pytest.approx(m["median_us"] * m["vs_best_baseline"])


def _copy(card, tmp_path):
    root = tmp_path / "results"
    shutil.copytree(results.RESULTS / card, root / card)
    return root


def test_a_missing_file_gives_dashes_not_nan(tmp_path):
    if not RECORDED:
        pytest.skip("no set recorded")
    root = _copy(RECORDED[-1], tmp_path)
    (root / RECORDED[-1] / "deja_vu.json").unlink()
    table = glance.rows(RECORDED[-1], root)
    dv = next(r for r in table if r["key"] == "deja_vu")
    for k in ("kernel", "of_floor", "vs_baseline", "pays"):
        assert dv[k] == glance.DASH
    assert dv["risk"] != glance.DASH
    md = glance.markdown(table)
    assert "nan" not in md.lower()
    assert "deja_vu: not recorded" in glance.sources(RECORDED[-1], root)


def test_a_missing_headline_row_or_baseline_gives_a_dash(tmp_path):
    if not RECORDED:
        pytest.skip("no set recorded")
    card = RECORDED[-1]
    root = _copy(card, tmp_path)
    p = root / card / "attention.json"
    doc = json.loads(p.read_text())
    # no torch row at all, and no recorded best_baseline: nothing to compare with
    doc["rows"] = [
        {k: v for k, v in r.items() if "baseline" not in k}
        for r in doc["rows"]
        if r["name"] != "torch_sdpa"
    ]
    for r in doc["rows"]:
        r.pop("of_floor", None)
    p.write_text(json.dumps(doc))
    att = glance.rows(card, root)[0]
    assert att["kernel"].startswith("v7 at")
    assert att["of_floor"] == att["vs_baseline"] == att["pays"] == glance.DASH
    # and no headline case at all
    doc["rows"] = [r for r in doc["rows"] if (r["B"], r["S"]) != (8, 16384)]
    p.write_text(json.dumps(doc))
    att = glance.rows(card, root)[0]
    assert att["kernel"] == glance.DASH
    assert "nan" not in glance.markdown([att]).lower()


def test_markdown_links_each_chapter_and_escapes_pipes():
    r = dict.fromkeys((k for _, k in glance.COLUMNS), glance.DASH)
    r.update(trick="a | b", chapter="ch-measuring")
    md = glance.markdown([r])
    assert "{ref}`ch-measuring`" in md and "a \\| b" in md
    assert "{ref}" not in glance.markdown([r], ref=False)


def test_versus_wording():
    assert glance.versus(1.0, 2.0, "x") == "2.00× faster than x"
    assert glance.versus(2.0, 1.0, "x") == "2.00× slower than x"
    assert glance.versus(1.0, 1.001, "x").startswith("level with x")


def test_card_slug_names_one_folder_per_card_model():
    from gpu.results import card_slug

    assert card_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert card_slug("NVIDIA H200") == "h200"
    assert card_slug("NVIDIA A100-SXM4-80GB") == "a100"
    assert card_slug("NVIDIA GeForce RTX 4090") == "rtx4090"
    assert card_slug("NVIDIA RTX A6000") != card_slug("NVIDIA GeForce RTX 4090")
    with pytest.raises(ValueError, match="card"):
        card_slug("NVIDIA")


def test_risks_list_one_line_per_trick():
    table = glance.rows("h200")
    lines = glance.risks(table).splitlines()
    assert len(lines) == len(table) == len(glance.TRICKS)
    assert all(line.startswith("- **") and line.endswith(".") for line in lines)
    assert "u·κ(W_K)" in glance.risks(table)  # the K-only cache's caveat


def _set(root, card, dates):
    """A complete set for ``card`` under ``root``: one file per COMPLETE benchmark,
    dated as ``dates`` says (name -> date; the rest get the first date)."""
    first = next(iter(dates.values()))
    for n in results.COMPLETE:
        p = results.path(n, card, root)
        p.parent.mkdir(parents=True, exist_ok=True)
        doc = {"benchmark": n, "provenance": {"date": dates.get(n, first)}}
        p.write_text(json.dumps(doc))


def test_default_card_is_the_newest_whole_set_not_the_newest_file(
    tmp_path, monkeypatch
):
    """A chapter re-run on the older card (a newer file there) does not move the
    book to that card's set; re-measuring all of it does. An incomplete card is
    never the default while a complete one exists."""
    monkeypatch.delenv("TT_CARD", raising=False)
    root = tmp_path / "results"
    _set(root, "old", {"ceilings": "2026-11-25T00:00:00Z"})
    _set(root, "new", {"ceilings": "2026-12-04T00:00:00Z"})
    assert results.default_card(root) == "new"
    _set(root, "old", {"ceilings": "2026-11-25T00:00:00Z",
                       "ffn_approx": "2026-12-06T00:00:00Z"})  # fmt: skip
    assert results.newest_date("old", root) > results.newest_date("new", root)
    assert results.default_card(root) == "new"
    _set(root, "old", {"ceilings": "2026-12-06T00:00:00Z"})
    assert results.default_card(root) == "old"
    (root / "newer").mkdir()
    (root / "newer" / "ceilings.json").write_text(
        json.dumps({"provenance": {"date": "2027-01-01T00:00:00Z"}})
    )
    assert results.default_card(root) == "old"
