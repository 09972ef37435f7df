"""The catalogue of known-wrong variants (tests/known_wrong.py): every chapter's
property check must reject every realistic mistake listed for its trick, and accept
the right computation on the same inputs. The counts per trick are printed (and
``known_wrong.caught_per_trick()`` returns them for a chapter)."""

from __future__ import annotations

import known_wrong as kw
import pytest


@pytest.mark.parametrize("trick", kw.TRICKS)
def test_every_known_wrong_variant_is_rejected(trick):
    outcomes = kw.run(trick)  # raises if a check rejects the right computation
    missed = [f"{o.case}: {o.variant}" for o in outcomes if not o.caught]
    caught, total = kw.caught_per_trick(outcomes)[trick]
    print(f"{trick}: {caught}/{total} known-wrong variants caught")
    assert total >= 1, f"{trick} has no known-wrong variant"
    assert not missed, f"{trick}: accepted {missed}"


def test_catalogue_covers_every_trick_and_the_shared_attention():
    assert set(kw.TRICKS) == {
        "attention", "precompute", "slim_attention", "deja_vu", "stagformer",
        "ffn_approx",
    }  # fmt: skip
    names = [(c.trick, v) for c in kw.CASES for v in c.variants]
    assert len(names) == len(set(names)), "a variant is listed twice"
