"""Results at a glance: one row per trick, computed from ``results/<card>/``.

The book's first page shows this table (``book/intro.md``). For each trick it takes
the headline case its chapter takes for its verdict, the fastest kernel of the
trick's family there, that kernel's fraction of its floor, its ratio to the
strongest baseline of the same run (the row's ``best_baseline`` where the harness
recorded one, else the fastest ok baseline of the same case, by the baselines its
``gpu/bench_<slug>.py`` grid declares), and where it pays over the chapter's sweep.
Nothing here needs CuPy or a GPU; a figure that is not recorded is ``DASH``.

    from gpu import glance
    rows = glance.rows("h200")        # list of dicts, one per trick
    print(glance.markdown(rows))      # a Markdown table
    pts = glance.roofline_points("h200")  # the intro's roofline: each headline
                                          # kernel and its baseline, FLOP/byte
                                          # and FLOP/s under glance.roofs("h200")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gpu import results

DASH = "—"  # what a missing figure shows
BENCH = {  # results name -> its grid module (the baselines each declares)
    "attention": "bench_attention",
    "slim_attention": "bench_slim_attention",
    "precompute": "bench_precompute",
    "deja_vu": "bench_deja_vu",
    "stagformer": "bench_stagformer",
    "ffn_approx": "bench_ffn_approx",
    "ffn_approx_experts": "bench_ffn_approx",
}


@dataclass(frozen=True)
class Trick:
    """One row of the table.

    head: the results file and a test on a row's shape for the headline case;
    family: a test on a kernel row's name (the fastest of the family there is the
    headline kernel); sweep: the results file over which "where it pays" counts
    the headline kernel's cases, ``unit`` naming them; risk: the chapter's finding
    on accuracy, as fixed text."""

    key: str
    label: str
    chapter: str  # the chapter's label, for {ref}
    head: str
    at: Callable[[dict], bool]
    family: Callable[[str], bool]
    case: str  # the headline case, in words
    sweep: str
    unit: str
    risk: str


def _starts(prefix: str) -> Callable[[str], bool]:
    return lambda n: n.startswith(prefix)


def _at(**shape) -> Callable[[dict], bool]:
    return lambda r: all(r.get(k) == v for k, v in shape.items())


TRICKS = (
    Trick(
        key="attention",
        label="Decode attention (the baseline)",
        chapter="ch-measuring",
        head="attention",
        at=_at(B=8, S=16384),
        family=_starts("v"),
        case="B = 8, S = 16K",
        sweep="attention",
        unit="sizes",
        risk="none added: the standard computation, float32 sums over a float16 "
        "cache, checked against float64",
    ),
    Trick(
        key="precompute",
        label="Precomputing the first layer",
        chapter="ch-precompute",
        head="precompute",
        at=_at(model="mistral-7b", B=1024),
        family=_starts("v"),
        case="Mistral-7B, B = 1024 tokens",
        sweep="precompute",
        unit="cases",
        risk="exact: a table lookup of what layer 1 computes (RoPE models only; "
        "the table must be rebuilt after any weight update)",
    ),
    Trick(
        key="slim_k",
        label="Slim attention, K-only cache",
        chapter="ch-slim-attention",
        head="slim_attention",
        at=_at(B=8, S=16384),
        family=_starts("slim_"),
        case="B = 8, S = 16K",
        sweep="slim_attention",
        unit="sizes",
        risk="exact rewrite (MHA only), but a float16 K-only cache is unsafe on an "
        "ill-conditioned W_K: its error grows as u·κ(W_K)",
    ),
    Trick(
        key="slim_x",
        label="Slim attention, X cache",
        chapter="ch-slim-attention",
        head="slim_attention",
        at=_at(B=8, S=16384),
        family=_starts("x_"),
        case="B = 8, S = 16K",
        sweep="slim_attention",
        unit="sizes",
        risk="exact rewrite, stable in float16 (it matches the K+V cache); "
        "cannot carry RoPE",
    ),
    Trick(
        key="deja_vu",
        label="Deja Vu",
        chapter="ch-deja-vu",
        head="deja_vu",
        at=lambda r: r.get("B") == 1 and abs(r.get("kept", 0) - 0.1) < 2e-3,
        family=_starts("v"),
        case="B = 1, 10 % of neurons kept",
        sweep="deja_vu",
        unit="kept fractions",
        risk="approximation: exact only for ReLU with a perfect predictor; every "
        "missed neuron drops a term, and a batch needs the union of its sets",
    ),
    Trick(
        key="stagformer",
        label="StagFormer",
        chapter="ch-stagformer",
        head="stagformer",
        at=_at(B=1),
        family=lambda n: n == "plain_24",
        case="B = 1, 24 layers, C = 2048",
        sweep="stagformer",
        unit="batches",
        risk="a different model, which needs training; its staggered decode is "
        "exact for that model",
    ),
    Trick(
        key="ffn_approx",
        label="σ-MoE",
        chapter="ch-ffn-approx",
        head="ffn_approx",
        at=_at(E=32),
        family=_starts("moe_"),
        case="E = 32, K = 4, T = 4096",
        sweep="ffn_approx_experts",
        unit="expert counts",
        risk="a different model, which needs training; routing is discontinuous "
        "(a near-tie can flip under rounding)",
    ),
)


def ok_rows(doc: dict | None) -> list[dict]:
    return [r for r in (doc or {}).get("rows", []) if r.get("status") == "ok"]


def baselines_of(name: str) -> dict[str, tuple[str, ...]]:
    """The baselines the grid of results ``name`` declares: row name -> the shape
    fields a baseline row shares with a kernel row of its case."""
    import importlib

    mod = importlib.import_module(f"gpu.{BENCH[name]}")
    return dict(mod.GRID.baselines)


def strongest(rows: list[dict], r: dict, baselines: dict) -> tuple[str, float] | None:
    """(name, median us) of the strongest baseline of row r's case: the row's
    recorded ``best_baseline``, else the fastest ok baseline row of its case."""
    if r.get("best_baseline") and r.get("vs_best_baseline"):
        return r["best_baseline"], r["median_us"] * r["vs_best_baseline"]
    same = [
        b
        for b in rows
        if b["name"] in baselines
        and all(b.get(k) == r.get(k) for k in baselines[b["name"]])
    ]
    if not same:
        return None
    b = min(same, key=lambda b: b["median_us"])
    return b["name"], b["median_us"]


def versus(t: float, t_base: float, name: str) -> str:
    """'1.92× faster than name', '1.01× slower than name', or 'level with name'
    where the ratio rounds to 1.00 either way."""
    q = t_base / t
    if q >= 1.005:
        return f"{q:.2f}× faster than {name}"
    if 1 / q >= 1.005:
        return f"{1 / q:.2f}× slower than {name}"
    return f"level with {name} ({t / t_base:.3f}× its time)"


def _fmt_case(r: dict) -> str:
    return r["name"] + (f" v{r['version']}" if "version" in r else "")


def _pays(trick: Trick, best: dict, sweep: list[dict], base: dict) -> str:
    """Over the sweep: at how many cases the headline kernel beats its case's
    strongest baseline (for StagFormer: its fastest version at each batch)."""
    mine = [r for r in sweep if r["name"] == best["name"]]
    if trick.key == "stagformer":  # the fastest GEMV version at each B
        by_b: dict = {}
        for r in mine:
            if r["B"] not in by_b or r["median_us"] < by_b[r["B"]]["median_us"]:
                by_b[r["B"]] = r
        mine = list(by_b.values())
    pairs = [(r, strongest(sweep, r, base)) for r in mine]
    pairs = [(r, s) for r, s in pairs if s]
    if not pairs:
        return DASH
    won = sum(s[1] > r["median_us"] for r, s in pairs)
    names = sorted({s[0] for _, s in pairs})
    what = names[0] if len(names) == 1 else "the strongest baseline"
    out = f"faster than {what} at {won} of {len(pairs)} {trick.unit}"
    if trick.key == "stagformer":
        par = [r for r in sweep if r["name"] == "shared_parallel" and r["B"] == 1]
        seq = [r for r in sweep if r["name"] == "shared_sequential" and r["B"] == 1]
        if par and seq:
            p = min(par, key=lambda r: r["median_us"])["median_us"]
            s = min(seq, key=lambda r: r["median_us"])["median_us"]
            out += (
                f"; at B = 1 the shared-weight parallel step is "
                f"{s / p:.2f}× the speed of the sequential one"
            )
    return out


def _best(trick: Trick, head: list[dict], base: dict) -> dict | None:
    """The headline kernel's row: the fastest of the trick's family at its
    headline case, or None where the case has no kernel row."""
    cands = [
        r
        for r in head
        if trick.at(r) and r["name"] not in base and trick.family(r["name"])
    ]
    return min(cands, key=lambda r: r["median_us"]) if cands else None


def row(trick: Trick, card: str | None = None, root=results.RESULTS) -> dict:
    """One trick's figures on ``card`` (default: ``results.default_card()``), as
    display strings; DASH for each that is not recorded."""
    out = dict(
        key=trick.key, trick=trick.label, chapter=trick.chapter, risk=trick.risk,
        kernel=DASH, of_floor=DASH, vs_baseline=DASH, pays=DASH,
    )  # fmt: skip
    head = ok_rows(results.load(trick.head, card, root))
    base = baselines_of(trick.head)
    best = _best(trick, head, base)
    if best is None:
        return out
    out["kernel"] = f"{_fmt_case(best)} at {trick.case}"
    if best.get("of_floor"):
        out["of_floor"] = f"{best['of_floor']:.2f}"
    s = strongest(head, best, base)
    if s:
        out["vs_baseline"] = versus(best["median_us"], s[1], s[0])
    sweep = ok_rows(results.load(trick.sweep, card, root))
    out["pays"] = _pays(trick, best, sweep, baselines_of(trick.sweep))
    return out


def rows(card: str | None = None, root=results.RESULTS) -> list[dict]:
    """Every trick's row on ``card``."""
    return [row(t, card, root) for t in TRICKS]


def files() -> list[str]:
    """The results names the table reads, in the order of ``TRICKS``."""
    return list(dict.fromkeys(n for t in TRICKS for n in (t.head, t.sweep)))


def sources(card: str | None = None, root=results.RESULTS) -> str:
    """Where the table's figures come from: the files read, grouped by the card,
    driver, CuPy and commit of their runs, with the dates of each group."""
    groups: dict[tuple, list] = {}
    for n in files():
        doc = results.load(n, card, root)
        if not doc:
            groups.setdefault(("not recorded",), []).append((n, ""))
            continue
        p = doc.get("provenance", {})
        key = tuple(p.get(k, "?") for k in ("card", "driver", "cupy", "commit"))
        groups.setdefault(key, []).append((n, p.get("date", "?")))
    out = []
    for key, named in groups.items():
        names = ", ".join(n for n, _ in named)
        if key == ("not recorded",):
            out.append(f"{names}: not recorded")
            continue
        dates = sorted(d for _, d in named)
        when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
        out.append(
            f"{names}: {key[0]}, driver {key[1]}, CuPy {key[2]}, commit {key[3]}, "
            f"{when}"
        )
    return "; ".join(out)


COLUMNS = (
    ("trick", "trick"),
    ("kernel, case", "kernel"),
    ("of floor", "of_floor"),
    ("vs the strongest baseline", "vs_baseline"),
    ("where it pays", "pays"),
    ("chapter", "chapter"),
)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ") or DASH


def risks(table: list[dict]) -> str:
    """The accuracy risk of each trick, as a Markdown list under the table (a
    column of sentences made the table wider than the page)."""
    return "\n".join(f"- **{r['trick']}**: {r.get('risk') or DASH}." for r in table)


def markdown(table: list[dict], ref: bool = True) -> str:
    """A Markdown (MyST) table of ``rows``; the chapter column is a {ref} role
    (ref=False: the bare label)."""
    head = "| " + " | ".join(h for h, _ in COLUMNS) + " |"
    rule = "|" + "|".join(":--" for _ in COLUMNS) + "|"
    lines = [head, rule]
    for r in table:
        cells = []
        for _, k in COLUMNS:
            v = r.get(k) or DASH
            if k == "chapter" and ref and v != DASH:
                v = f"{{ref}}`{v}`"
            cells.append(_cell(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- the book's roofline: every trick's headline kernel and its baseline ----------

# The colour family (gpu.bookplot.FAMILY) of each trick's kernels.
FAMILY = {
    "attention": "attention",
    "precompute": "precompute",
    "slim_k": "slim",
    "slim_x": "xcache",
    "deja_vu": "deja_vu",
    "stagformer": "stagformer",
    "ffn_approx": "moe",
}
# How far above the roof a point may sit before its FLOPs, bytes or time are
# suspect. The ceilings are the best of several methods measured once per card; a
# kernel measured in another run can beat them by the run-to-run spread of the
# card's clocks and memory (the recorded rows reach at most about 0.5 % above their
# floor at the median, a few % for a bare cuBLAS GEMM), so a few % is noise, and a
# count that is off by a factor shows as much more.
ROOF_SPREAD = 0.03


def roofs(card: str | None = None, root=results.RESULTS) -> dict | None:
    """The card's two roofs from ``results/<card>/ceilings.json``: the read
    bandwidth (bytes/s), the fp16 GEMM rate (FLOP/s) and the ridge point between
    them (FLOP per byte); None where the ceilings are not recorded."""
    doc = results.load("ceilings", card, root)
    c = (doc or {}).get("ceilings", {})
    bw, peak = c.get("read_bytes_per_s"), c.get("gemm_fp16_flop_per_s")
    if not bw or not peak:
        return None
    card_name = doc.get("provenance", {}).get("card", card or "?")
    return dict(bytes_per_s=bw, flop_per_s=peak, ridge=peak / bw, card=card_name)


def roof(intensity: float, ceil: dict) -> float:
    """The attainable FLOP/s at an arithmetic intensity (FLOP per byte):
    min(bandwidth × intensity, peak)."""
    return min(ceil["bytes_per_s"] * intensity, ceil["flop_per_s"])


def baseline_row(head: list[dict], best: dict, base: dict) -> dict | None:
    """The row of the strongest baseline of ``best``'s case (``strongest``'s
    choice) in the same run, or None where there is none."""
    s = strongest(head, best, base)
    if not s or s[0] not in base:
        return None
    same = [
        b
        for b in head
        if b["name"] == s[0] and all(b.get(k) == best.get(k) for k in base[s[0]])
    ]
    return min(same, key=lambda b: abs(b["median_us"] - s[1])) if same else None


def _point(trick: Trick, role: str, r: dict, ceil: dict | None) -> dict:
    """One point of the roofline: the row's recorded FLOPs and bytes (DRAM traffic
    the bench module counts for the row's case), its intensity, achieved FLOP/s
    and fraction of the roof; the figures it cannot have are None, with a note."""
    p = dict(
        key=trick.key, trick=trick.label, family=FAMILY[trick.key], role=role,
        name=_fmt_case(r), case=trick.case, flops=r.get("flops"),
        bytes=r.get("bytes"), median_us=r.get("median_us"), intensity=None,
        flop_per_s=None, roof_flop_per_s=None, of_roof=None, note="",
    )  # fmt: skip
    if not p["flops"] or not p["bytes"] or not p["median_us"]:
        p["note"] = f"{p['name']}: FLOPs or bytes not recorded"
        return p
    p["intensity"] = p["flops"] / p["bytes"]
    p["flop_per_s"] = p["flops"] / (p["median_us"] * 1e-6)
    if ceil:
        p["roof_flop_per_s"] = roof(p["intensity"], ceil)
        p["of_roof"] = p["flop_per_s"] / p["roof_flop_per_s"]
    return p


def roofline_points(card: str | None = None, root=results.RESULTS) -> list[dict]:
    """Every trick's headline kernel (the table's kernel) and the strongest baseline
    of the same run at the same case, as points of the card's roofline: dicts with
    key, trick, family, role ("kernel" or "baseline"), name, flops, bytes,
    median_us, intensity (FLOP/byte), flop_per_s, roof_flop_per_s, of_roof
    (achieved over attainable) and note. A row without recorded FLOPs or bytes
    gives a point with intensity None and a note saying so; a trick with no
    headline row gives no point."""
    ceil = roofs(card, root)
    out = []
    for t in TRICKS:
        head = ok_rows(results.load(t.head, card, root))
        base = baselines_of(t.head)
        best = _best(t, head, base)
        if best is None:
            continue
        out.append(_point(t, "kernel", best, ceil))
        b = baseline_row(head, best, base)
        if b is not None:
            out.append(_point(t, "baseline", b, ceil))
    return out


def above_roof(points: list[dict], spread: float = ROOF_SPREAD) -> list[dict]:
    """The points that sit above the roof by more than ``spread``: each says that
    its FLOPs are overcounted, its bytes overcounted or its time too short (or the
    ceilings too low)."""
    return [p for p in points if p["of_roof"] and p["of_roof"] > 1 + spread]
