"""Which kernel versions run on which cards: the minimum compute capability of every
launcher version, found by compiling, not typed by hand.

CuPy compiles a whole ``gpu/<file>.cu`` with NVRTC for the card in use. A version that
needs a newer card than the rest of its file is compiled only for it (``#if
__CUDA_ARCH__ >= 900`` around its entry points), so the file still loads on an older
card with its other versions, and a version's kernels exist exactly on the
architectures it can run on. The table ``gpu/capability.json`` records, for each
architecture in ``ARCHS``, what NVRTC compiled there:

- ``files``: the lowest compute capability (major * 10 + minor) for which the file
  compiles (and for every architecture above it), or null: not even for the newest;
- ``versions``: per launcher family (``FAMILIES``), the lowest compute capability for
  which every kernel of that version is compiled (all the kernels the newest
  architecture has for it).

It is written by the compile gate and checked against it::

    python -m gpu.capability --write    # compile every gpu/*.cu for each of ARCHS
    python -m gpu.capability            # print the table; exit 1 if the file is stale

``tests/test_capability.py`` recompiles and fails when the file disagrees with NVRTC;
``make check-cu`` (``gpu.check_kernels --arch ...``) checks each architecture it builds
for against it. ``gpu.runtime.pick_version`` reads it to fall back on older cards.
Importing this module needs neither CuPy nor NVRTC.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from pathlib import Path

GPU_DIR = Path(__file__).resolve().parent
TABLE_PATH = GPU_DIR / "capability.json"

# NVRTC 13.0 accepts nothing below sm_75. sm_80 and sm_89 (A100, RTX 4090 / L4) are
# the cards below Hopper that readers have; sm_90 has clusters and distributed shared
# memory. A card between two of them (sm_86) gets what the lower one compiles.
ARCHS = ("sm_75", "sm_80", "sm_89", "sm_90")

# launcher family -> (the .cu file's stem, a pattern of the kernel symbols of one
# version; group 1 is the launcher's version number). A version runs where every
# symbol of it that the newest architecture compiles is compiled too.
FAMILIES = {
    "attention": ("attention", r"attention_decode_v(\d+)_"),
    "precompute": ("precompute", r"precompute_gather_v(\d+)_"),
    "slim_attention": ("slim_attention", r"slim_attention_attend_v(\d+)_"),
    "slim_attention_x": ("slim_attention", r"slim_attention_attend_xv(\d+)_"),
    "stagformer": ("stagformer", r"stag_gemv_v(\d+)_"),
    "deja_vu": ("deja_vu", r"deja_vu_(?:up|down|fused)_v(\d+)_"),
    "deja_vu_predict": (
        "deja_vu_predict",
        r"deja_vu_predict_(?:proj|scores|topk|union)_v(\d+)_",
    ),
    "ffn_approx": ("ffn_approx", r"ffn_approx_(?:up|down)_v(\d+)_"),
    "ffn_approx_router": ("ffn_approx", r"ffn_approx_router_v(\d+)_"),
    "ffn_approx_sort": ("ffn_approx", r"ffn_approx_(?:sort|count|scatter|hist)_v(\d+)"),
    "ceilings_read": ("ceilings", r"ceilings_read_v(\d+)"),
    "ceilings_copy": ("ceilings", r"ceilings_copy_v(\d+)"),
}


def cc_of(arch: str) -> int:
    """'sm_89' -> 89."""
    m = re.fullmatch(r"sm_(\d+)a?", arch)
    if not m:
        raise ValueError(f"not an architecture: {arch!r} (e.g. sm_80)")
    return int(m[1])


def cc_text(cc: int) -> str:
    """89 -> '8.9 (sm_89)'."""
    return f"{cc // 10}.{cc % 10} (sm_{cc})"


# --- the table --------------------------------------------------------------------


@functools.cache
def load(path: Path = TABLE_PATH) -> dict:
    """gpu/capability.json as written by ``write``."""
    return json.loads(Path(path).read_text())


def min_cc(family: str, version) -> int | None:
    """The lowest compute capability (80 for 8.0) a version runs on; None when not
    even the newest architecture in ARCHS compiles it. KeyError for a family or a
    version the table does not know (a new version: rerun --write)."""
    fam = load()["versions"].get(family)
    if fam is None:
        raise KeyError(f"no family {family!r} in {TABLE_PATH.name}: {sorted(FAMILIES)}")
    if str(version) not in fam:
        raise KeyError(
            f"{family} v{version} is not in {TABLE_PATH.name} (its versions: "
            f"{sorted(fam, key=int)}); rerun python -m gpu.capability --write"
        )
    return fam[str(version)]


def file_min_cc(stem: str) -> int | None:
    """The lowest compute capability gpu/<stem>.cu compiles for (None: none in
    ARCHS); KeyError for a file the table does not know."""
    files = load()["files"]
    if stem not in files:
        raise KeyError(f"gpu/{stem}.cu is not in {TABLE_PATH.name}; rerun --write")
    return files[stem]


# --- deriving it from the compile gate ----------------------------------------------


def _versions(names, pattern: str) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for n in names:
        if m := re.match(pattern, n):
            out.setdefault(int(m[1]), set()).add(n)
    return out


def _lowest(ok: dict[str, bool], archs) -> int | None:
    """The lowest arch from which on every arch is ok; None if the newest is not."""
    low = None
    for a in sorted(archs, key=cc_of, reverse=True):
        if not ok[a]:
            break
        low = cc_of(a)
    return low


def compiled(paths, archs=ARCHS) -> dict[str, dict[str, set[str] | None]]:
    """{stem: {arch: the kernel names NVRTC compiled, or None on a compile error}}."""
    from gpu.check_kernels import CompileError, compile_report

    out: dict[str, dict[str, set[str] | None]] = {}
    for p in paths:
        p = Path(p)
        out[p.stem] = {}
        for a in archs:
            try:
                names = {r.name for r in compile_report(p, a)}
            except CompileError:
                names = None
            out[p.stem][a] = names
    return out


def table_from(built: dict, archs=ARCHS, families=None) -> dict:
    """The table from what compiled(...) found: files and versions (see the module
    docstring). Families whose file is not in ``built`` are left out."""
    families = FAMILIES if families is None else families
    files = {
        stem: _lowest({a: built[stem][a] is not None for a in archs}, archs)
        for stem in sorted(built)
    }
    versions: dict[str, dict[str, int | None]] = {}
    for fam, (stem, pattern) in sorted(families.items()):
        if stem not in built:
            continue
        every = set().union(*(n for n in built[stem].values() if n))
        fam_table = {}
        for v, syms in sorted(_versions(every, pattern).items()):
            ok = {a: bool(built[stem][a]) and syms <= built[stem][a] for a in archs}
            fam_table[str(v)] = _lowest(ok, archs)
        versions[fam] = fam_table
    return {"files": files, "versions": versions}


def derive(paths=None, archs=ARCHS, families=None) -> dict:
    """Compile ``paths`` (default: every gpu/*.cu) for each of ``archs`` and return
    the table, with the NVRTC version and the architectures it was found on."""
    from gpu.check_kernels import nvrtc_version

    paths = sorted(GPU_DIR.glob("*.cu")) if paths is None else paths
    table = table_from(compiled(paths, archs), archs, families)
    return {"nvrtc": nvrtc_version(), "archs": list(archs), **table}


def expected_kernels(stem: str, arch: str, names) -> list[str]:
    """What the table says of gpu/<stem>.cu at ``arch`` that the compiled ``names``
    (None: it did not compile) contradict, one line each; [] when they agree. The
    compile gate runs this for each architecture it builds for."""
    built = {stem: {arch: None if names is None else set(names)}}
    tab = load()
    if stem not in tab["files"]:
        return [f"gpu/{stem}.cu is not in {TABLE_PATH.name}: rerun --write"]
    found = table_from(built, (arch,))
    cc, problems = cc_of(arch), []
    want_file = tab["files"][stem] is not None and tab["files"][stem] <= cc
    if want_file != (names is not None):
        problems.append(
            f"gpu/{stem}.cu {'did not compile' if names is None else 'compiled'} for "
            f"{arch}, but {TABLE_PATH.name} says its minimum is "
            f"{tab['files'][stem]}"
        )
    if names is None:
        return problems
    for fam, got in found["versions"].items():
        for v, want in tab["versions"].get(fam, {}).items():
            runs = want is not None and want <= cc
            if runs and got.get(v) is None:
                problems.append(
                    f"{fam} v{v}: {TABLE_PATH.name} says it runs on {arch} "
                    f"(minimum {want}), but its kernels are not all compiled there"
                )
            elif not runs and got.get(v) is not None:
                problems.append(
                    f"{fam} v{v}: compiled for {arch}, but {TABLE_PATH.name} says "
                    f"it needs {want}"
                )
        for v in got.keys() - tab["versions"].get(fam, {}).keys():
            problems.append(f"{fam} v{v} is not in {TABLE_PATH.name}: rerun --write")
    return problems


def write(table: dict, path: Path = TABLE_PATH) -> None:
    Path(path).write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    load.cache_clear()


def rows(table: dict | None = None) -> list[tuple[str, str, str]]:
    """(family, version, minimum) for the book: one row per version."""
    table = load() if table is None else table
    out = []
    for fam, vs in sorted(table["versions"].items()):
        for v, cc in sorted(vs.items(), key=lambda kv: int(kv[0])):
            out.append((fam, v, "none" if cc is None else f"sm_{cc}"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help=f"rewrite {TABLE_PATH.name}")
    args = ap.parse_args(argv)
    table = derive()
    for fam, v, cc in rows(table):
        print(f"{fam:18s} v{v:3s} {cc}")
    if args.write:
        write(table)
        print(f"wrote {TABLE_PATH}")
        return 0
    same = TABLE_PATH.is_file() and load() == table
    print(f"{TABLE_PATH.name}: {'up to date' if same else 'STALE: rerun --write'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
