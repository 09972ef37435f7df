"""The benchmark harness's bookkeeping, on the CPU (gpu/bench.py).

No GPU here: what is tested is what decides a run's verdict and its records without
timing anything: the floor check in ``finish`` (a row faster than a floor fails the
run), the one table printer with declared columns (failed and skipped rows too),
the ceilings as the maximum over methods, the ceilings a run may use (this card's
only), the strongest-baseline bookkeeping, ``run_trick``'s exit status, ``all``
running each slug in its own process, and that every chapter module declares GRID,
COLUMNS and run and reaches no other module's private names.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import math
import sys
import types
from pathlib import Path

import pytest

from gpu import bench
from gpu import runtime as rt

ROOT = Path(__file__).resolve().parent.parent


def timing(median=10.0, p10=9.0, p90=11.0):
    return bench.Timing(median, p10, p90, samples=30, calls_per_sample=16)


# --- finish: the floor check ----------------------------------------------------------


@pytest.mark.parametrize("floor", ["floor_us", "flop_floor_us", "bytes_floor_us"])
def test_a_row_faster_than_a_floor_is_floor_beaten(floor):
    row = bench.finish(dict(name="v9", bytes=1000, **{floor: 12.0}), timing(p90=11.0))
    assert row["status"].startswith("FLOOR BEATEN")
    assert floor in row["status"]
    assert not bench.is_ok(row) and not bench.is_skipped(row)
    assert row["median_us"] == 10.0  # the figures stay, for the post-mortem


def test_noise_around_the_floor_does_not_trip_the_check():
    # median below the floor (of_floor 1.01), p90 above it: a kernel at the floor
    row = bench.finish(dict(name="v7", bytes=1000, floor_us=10.1), timing(p90=10.2))
    assert row["status"] == "ok"
    assert row["of_floor"] == pytest.approx(1.01)
    # 0.99 of the floor at the median
    row = bench.finish(dict(name="v7", bytes=1000, floor_us=9.9), timing(p90=11.0))
    assert row["status"] == "ok"
    assert row["of_floor"] == pytest.approx(0.99)


def test_finish_fills_the_figures():
    row = bench.finish(dict(name="v1", bytes=2e6, floor_us=5.0), timing())
    assert row["gb_per_s"] == pytest.approx(2e6 / 10e-6 / 1e9)
    assert row["of_floor"] == pytest.approx(0.5)
    assert (row["p10_us"], row["p90_us"], row["samples"]) == (9.0, 11.0, 30)
    assert "of_floor" not in bench.finish(dict(name="v1", bytes=1), timing())


def test_summarise_reports_median_and_spread():
    t = bench.summarise(list(range(1, 102)), calls=16)
    assert (t.median_us, t.p10_us, t.p90_us, t.samples) == (51.0, 11.0, 91.0, 101)


# --- the baselines --------------------------------------------------------------------


def ok(name, median, **kw):
    return dict(name=name, median_us=median, status="ok", **kw)


BASELINES = {"torch_sdpa": ("B", "S"), "cublas": ("B",)}


def test_best_baseline_is_the_fastest_ok_one_of_the_same_case():
    rows = [
        ok("v7", 10.0, B=1, S=1024),
        ok("torch_sdpa", 20.0, B=1, S=1024),
        ok("torch_sdpa", 5.0, B=1, S=4096),  # another case: not compared
        ok("cublas", 30.0, B=1, S=0),  # matches on B only
        ok("v7", 40.0, B=8, S=1024),  # no baseline at B = 8
    ]
    bench.mark_baselines(rows, BASELINES)
    assert rows[0]["best_baseline"] == "torch_sdpa"
    assert rows[0]["vs_best_baseline"] == pytest.approx(2.0)
    assert "best_baseline" not in rows[1]  # baselines are not compared
    assert "vs_best_baseline" not in rows[4]


def test_best_baseline_ignores_failed_skipped_and_floor_beaten_rows():
    rows = [
        ok("v7", 10.0, B=1, S=1024),
        dict(name="torch_sdpa", B=1, S=1024, status="FAILED validation: x"),
        dict(name="torch_sdpa", B=1, S=1024, status=bench.TORCH_SKIP),
        dict(name="torch_sdpa", B=1, S=1024, median_us=1.0, status="FLOOR BEATEN: x"),
        ok("cublas", 25.0, B=1),
        dict(name="v8", B=1, S=1024, status="FAILED validation: y"),
    ]
    bench.mark_baselines(rows, BASELINES)
    assert rows[0]["best_baseline"] == "cublas"
    assert rows[0]["vs_best_baseline"] == pytest.approx(2.5)
    assert "vs_best_baseline" not in rows[5]


def test_only_the_declared_kernel_rows_are_compared():
    rows = [ok("moe_v3", 10.0, E=32), ok("v3_up", 2.0, E=32), ok("cublas", 30.0, E=32)]
    bench.mark_baselines(rows, {"cublas": ("E",)}, kernels=("moe_",))
    assert rows[0]["vs_best_baseline"] == pytest.approx(3.0)
    assert "vs_best_baseline" not in rows[1]


def test_a_torch_row_without_torch_is_skipped_not_dropped():
    row = bench.torch_skipped("torch_dense", dict(name="other", B=1, K=4))
    assert list(row)[0] == "name" and row["name"] == "torch_dense"
    assert row["B"] == 1 and bench.is_skipped(row) and not bench.is_ok(row)


# --- the table printer ----------------------------------------------------------------

COLUMNS = (
    ("case", "name", "<10"),
    ("B", "B", ">4"),
    ("median us", "median_us", ">11.2f"),
    ("TFLOP/s", lambda r: r["flops"] / r["median_us"] / 1e6, ">9.1f"),
    ("floor us", "floor_us", ">10.2f"),
)


def test_print_table_with_declared_columns(capsys):
    rows = [
        ok("v3", 12.5, B=8, flops=25e6, floor_us=6.25),
        ok("v4", 10.0, B=8, flops=1e6),  # no floor: "-"
        dict(name="v1", B=8, status="FAILED validation: 3/4 out of tolerance"),
        dict(name="torch_x", B=8, status=bench.TORCH_SKIP),
        dict(ok("v5", 1.0, B=8, flops=1e6, floor_us=2.0), status="FLOOR BEATEN: p90"),
    ]
    bench.print_table(rows, COLUMNS)
    head, v3, v4, v1, tx, v5 = capsys.readouterr().out.splitlines()
    assert head.split() == ["case", "B", "median", "us", "TFLOP/s", "floor", "us"]
    assert len(head) == 10 + 4 + 11 + 9 + 10
    assert v3.split() == ["v3", "8", "12.50", "2.0", "6.25"]
    assert v4.split() == ["v4", "8", "10.00", "0.1", "-"]
    assert v1.split()[:2] == ["v1", "8"] and v1.endswith("3/4 out of tolerance")
    assert "-" not in v1.split()  # a failed row stops at its first missing column
    assert tx.split()[:2] == ["torch_x", "8"] and tx.endswith(bench.TORCH_SKIP)
    assert v5.split()[:5] == ["v5", "8", "1.00", "1.0", "2.00"]
    assert v5.endswith("FLOOR BEATEN: p90")


def test_print_table_defaults_to_the_attention_columns(capsys):
    bench.print_table([ok("v7", 3.0, B=1, S=1024, p10_us=2.5, p90_us=3.5)])
    head, line = capsys.readouterr().out.splitlines()
    assert head.split()[:3] == ["case", "B", "S"]
    assert line.split()[:5] == ["v7", "1", "1024", "3.00", "2.5-3.5"]


# --- ceilings -------------------------------------------------------------------------


def test_ceilings_are_the_maximum_over_each_kinds_methods():
    methods = {
        "copy/cudaMemcpy": 3.9e12,
        "copy/cupy_copyto": 4.2e12,
        "copy/kernel_v1_g8": 3.8e12,
        "read/kernel_v3_g8": 4.4e12,
        "read/torch_sum": 4.5e12,
        "gemm_fp16/cupy_8192": 7.0e14,
        "gemm_fp16/torch_16384": 7.4e14,
        "gemm_bf16/torch_8192": float("nan"),  # not measured: left out
        "gemm_fp32/cupy_8192": None,
    }
    c = bench.ceiling_maxima(methods)
    assert c["copy_bytes_per_s"] == 4.2e12
    assert c["read_bytes_per_s"] == 4.5e12
    assert c["gemm_fp16_flop_per_s"] == 7.4e14
    assert "gemm_bf16_flop_per_s" not in c and "gemm_fp32_flop_per_s" not in c
    assert c["best"] == {
        "copy_bytes_per_s": "copy/cupy_copyto",
        "read_bytes_per_s": "read/torch_sum",
        "gemm_fp16_flop_per_s": "gemm_fp16/torch_16384",
    }
    with pytest.raises(ValueError, match="kind"):
        bench.ceiling_maxima({"flops/x": 1.0})


def _write_ceilings(root: Path, card: str, ceil: dict) -> None:
    (root / card).mkdir(parents=True)
    doc = {"benchmark": "ceilings", "provenance": {"date": "2026-12-02"}}
    (root / card / "ceilings.json").write_text(json.dumps(doc | {"ceilings": ceil}))


def test_a_run_uses_this_cards_recorded_ceilings_only(tmp_path, monkeypatch):
    monkeypatch.setattr(rt, "available", lambda: True)
    monkeypatch.setattr(rt, "device_info", lambda: {"card": "NVIDIA H200"})
    measured = {"read_bytes_per_s": 1.0, "methods": {}, "measured": True}
    monkeypatch.setattr(bench, "ceilings", lambda quick=False: measured)
    _write_ceilings(tmp_path, "h100", {"read_bytes_per_s": 3.1e12, "methods": {}})
    # another card's ceilings are never used: measured, or none
    assert bench.ceilings_or_recorded(root=tmp_path) is measured
    assert bench.ceilings_or_recorded(False, root=tmp_path) == {}
    _write_ceilings(tmp_path, "h200", {"read_bytes_per_s": 4.5e12})  # old harness
    assert bench.ceilings_or_recorded(root=tmp_path) is measured
    (tmp_path / "h200" / "ceilings.json").unlink()
    (tmp_path / "h200").rmdir()
    _write_ceilings(tmp_path, "h200", {"read_bytes_per_s": 4.5e12, "methods": {}})
    assert bench.ceilings_or_recorded(root=tmp_path)["read_bytes_per_s"] == 4.5e12


# --- run_trick, all -------------------------------------------------------------------


@pytest.fixture
def fake_chapter(monkeypatch):
    """gpu.bench_fake: a chapter whose run() returns the rows the test sets."""
    mod = types.ModuleType("gpu.bench_fake")
    mod.GRID = bench.Grid(axes=dict(B=(1,)), baselines={"base": ("B",)})
    mod.COLUMNS = (bench.NAME, bench.MEDIAN, bench.VS_BEST)
    mod.ROWS = []
    mod.run = lambda quick=False, ceil=None: {"fake": mod.ROWS}
    monkeypatch.setitem(sys.modules, "gpu.bench_fake", mod)
    return mod


def test_run_trick_fails_on_a_beaten_floor_not_on_a_skip(fake_chapter, capsys):
    fake_chapter.ROWS[:] = [
        ok("v1", 5.0, B=1),
        ok("base", 10.0, B=1),
        dict(name="torch_base", B=1, status=bench.TORCH_SKIP),
    ]
    assert bench.run_trick("fake", False, {"read_bytes_per_s": 1.0}, None) == 0
    assert fake_chapter.ROWS[0]["vs_best_baseline"] == pytest.approx(2.0)
    fake_chapter.ROWS.append(dict(ok("v2", 1.0, B=1), status="FLOOR BEATEN: p90"))
    assert bench.run_trick("fake", False, {"read_bytes_per_s": 1.0}, None) == 1
    assert "v2: FLOOR BEATEN" in capsys.readouterr().err


def test_all_runs_ceilings_then_each_slug_in_its_own_process(monkeypatch, capsys):
    ran = []

    def fake_run(cmd):
        ran.append(cmd)
        return types.SimpleNamespace(returncode=1 if cmd[3] == "deja_vu" else 0)

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    assert bench.main(["all", "--quick", "--out", "results"]) == 1
    assert [c[3] for c in ran] == ["ceilings", *bench.TRICKS]
    assert all(c[:3] == [sys.executable, "-m", "gpu.bench"] for c in ran)
    assert all(c[4:] == ["--quick", "--out", "results"] for c in ran)
    assert "deja_vu" in capsys.readouterr().out


def test_list_names_every_chapter(capsys):
    assert bench.main(["list"]) == 0
    assert capsys.readouterr().out.split() == list(bench.TRICKS)
    assert {"attention", "precompute", "slim_attention", "deja_vu"} <= set(bench.TRICKS)
    assert {"stagformer", "stagformer_multi", "ffn_approx"} <= set(bench.TRICKS)


# --- every chapter module -------------------------------------------------------------


@pytest.mark.parametrize("slug", bench.TRICKS)
def test_every_chapter_declares_grid_columns_and_run(slug, capsys):
    mod = importlib.import_module(f"gpu.bench_{slug}")
    assert isinstance(mod.GRID, bench.Grid)
    for axis, values in mod.GRID.axes.items():
        assert len(mod.GRID.values(axis)) == len(values) > 0
        assert set(mod.GRID.values(axis, quick=True)) <= set(values) or (
            axis not in mod.GRID.quick
        )
    assert {"quick", "ceil"} <= set(inspect.signature(mod.run).parameters)
    cols = mod.COLUMNS
    assert cols and all(len(c) == 3 and isinstance(c[0], str) for c in cols)
    row = {"name": "x", "status": "ok", "median_us": 1.0, "p10_us": 1.0}
    bench.print_table([row, dict(row, status="FAILED validation: z")], cols)
    assert capsys.readouterr().out.count("\n") == 3


def _is_bench(module: str) -> bool:
    return module.split(".")[-1].startswith("bench")


def _private_uses(path: Path) -> list[str]:
    """Every place path reaches a private name of the harness (gpu.bench) or of a
    chapter's bench module (gpu.bench_<slug>): ``from gpu.bench_x import _y``, or
    ``m._y`` where m is such a module (``from gpu import bench as m``,
    ``import gpu.bench_x as m``)."""
    tree = ast.parse(path.read_text(), str(path))
    mods, bad = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gpu"):
            for a in node.names:
                if a.name.startswith("_") and _is_bench(node.module):
                    bad.append(f"{path.name}:{node.lineno}: {node.module}.{a.name}")
                if node.module == "gpu" and _is_bench(a.name):
                    mods.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("gpu.") and _is_bench(a.name) and a.asname:
                    mods.add(a.asname)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in mods
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            bad.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    return bad


def test_no_module_reaches_the_harness_private_names():
    files = [
        *sorted((ROOT / "gpu").glob("*.py")),
        *sorted((ROOT / "tools").glob("*.py")),
        *sorted((ROOT / "tests").glob("*.py")),
    ]
    bad = [b for f in files for b in _private_uses(f)]
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_the_private_name_check_catches_one(tmp_path):
    f = tmp_path / "x.py"
    f.write_text(
        "from gpu import bench, runtime\n"
        "from gpu.bench_stagformer import _fill\n"
        "bench._free([])\n"
        "runtime._probe()\n"  # not the harness: outside this check
    )
    assert len(_private_uses(f)) == 2


def test_no_chapter_prints_its_own_table():
    """One printer: a chapter may bind print_table to its COLUMNS, no more."""
    for p in sorted((ROOT / "gpu").glob("bench_*.py")):
        tree = ast.parse(p.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == "print_table":
                calls = [n for n in ast.walk(node) if isinstance(n, ast.Call)]
                assert len(calls) == 1, f"{p.name}: print_table prints by itself"
                assert ast.unparse(calls[0].func) == "bench.print_table", p.name


def test_recorded_ceilings_keys_are_the_floors_keys():
    # the chapters read these keys from ceil; ceiling_maxima must give them
    keys = set(bench.CEILING_KEYS.values())
    assert keys == {
        "copy_bytes_per_s",
        "read_bytes_per_s",
        "gemm_fp16_flop_per_s",
        "gemm_bf16_flop_per_s",
        "gemm_tf32_flop_per_s",
        "gemm_fp32_flop_per_s",
    }
    assert math.isclose(bench.CEILING_BYTES, 2 * 2**30)


def test_guarded_turns_a_broken_baseline_into_a_failed_row():
    def broken(x):
        raise AttributeError(f"no attribute {x}")

    row = bench.guarded("torch_x", {"B": 1}, broken, "y")
    assert row["name"] == "torch_x" and row["B"] == 1
    assert row["status"].startswith("FAILED: AttributeError: no attribute y")
    assert not bench.is_ok(row) and not bench.is_skipped(row)
    ok = bench.guarded("torch_x", {"B": 1}, lambda: {"name": "torch_x", "status": "ok"})
    assert ok == {"name": "torch_x", "status": "ok"}


def test_every_subset_names_a_table_its_chapter_makes():
    """python -m gpu.bench split | tiles | slim_crossover runs one table of one
    chapter: each maps to a slug whose run() takes ``tables`` and whose module
    declares that table (as its main table or a GRID sweep)."""
    import importlib
    import inspect

    from gpu import bench

    for sub, (slug, table) in bench.SUBSETS.items():
        mod = importlib.import_module(f"gpu.bench_{slug}")
        assert "tables" in inspect.signature(mod.run).parameters, sub
        assert table in (slug, *mod.GRID.sweeps), (sub, table)
