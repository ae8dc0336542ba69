"""The codebook fitter: optimality, determinism, persistence, plans."""
import itertools
import json
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import qlccomm
from qlccomm.codebook import (ALPHABET, PREFIX_BITS, Codebook, codebook_from_histogram, entropy_bits,
                              huffman_bits, optimal_widths)
from qlccomm.split import PLANS


def code_cost_bits(sorted_counts, widths) -> int:
    """Total coded bits (prefix + suffix) of the sorted counts under `widths`: the oracle the
    fitter's dynamic programme is checked against."""
    counts = np.asarray(sorted_counts, dtype=np.int64)
    total, first = 0, 0
    for w in widths:
        seg = counts[first : first + (1 << w)]
        total += int(seg.sum()) * (PREFIX_BITS + w)
        first += 1 << w
    return total


@settings(max_examples=150, deadline=None)
@given(counts=st.lists(st.integers(0, 1000), min_size=1, max_size=12),
       n_areas=st.integers(1, 4), max_width=st.integers(1, 4))
def test_widths_optimal_against_brute_force(counts, n_areas, max_width):
    """The dynamic programme matches exhaustive search over every width assignment."""
    counts = sorted(counts, reverse=True)
    if (1 << max_width) * n_areas < len(counts):
        return
    widths = optimal_widths(counts, n_areas, max_width)
    assert len(widths) == n_areas and sum(1 << w for w in widths) >= len(counts)
    best = min(code_cost_bits(counts, ws) for ws in itertools.product(range(max_width + 1), repeat=n_areas)
               if sum(1 << w for w in ws) >= len(counts))
    assert code_cost_bits(counts, widths) == best


def test_full_alphabet_optimal_against_sorted_brute_force():
    """For 256 symbols and 8 areas, every non-decreasing width tuple is checked."""
    rng = np.random.default_rng(3)
    for _ in range(3):
        counts = np.sort((rng.pareto(1.2, ALPHABET) * 1000).astype(np.int64))[::-1]
        widths = optimal_widths(counts)
        best = min(code_cost_bits(counts, ws) for ws in itertools.combinations_with_replacement(range(9), 8)
                   if sum(1 << w for w in ws) >= ALPHABET)
        assert code_cost_bits(counts, widths) == best


def test_fit_is_deterministic_and_order_independent():
    g = torch.Generator().manual_seed(0)
    parts = [(torch.randn(5000, generator=g) * 0.02).to(torch.bfloat16) for _ in range(4)]
    a = qlccomm.fit_codebook(parts)
    b = qlccomm.fit_codebook(list(reversed(parts)))
    c = qlccomm.fit_codebook(torch.cat(parts))
    assert a.digest == b.digest == c.digest
    assert a == b


def test_ties_broken_by_symbol_value():
    hist = np.zeros(ALPHABET, np.int64)
    hist[[7, 3, 200]] = 10                      # equal counts: smaller symbol gets the smaller rank
    cb = codebook_from_histogram(hist, torch.uint8, PLANS["byte"])
    assert cb.symbols[:3] == (3, 7, 200)
    assert cb.symbols[3:] == tuple(s for s in range(ALPHABET) if s not in (3, 7, 200))


def test_digest_is_stable():
    """The digest is part of the wire format: this literal must only change with the format version."""
    cb = Codebook(torch.bfloat16, "bf16_exp", (0, 0, 1, 1, 2, 3, 4, 8), tuple(range(ALPHABET)))
    assert cb.digest == Codebook(torch.bfloat16, "bf16_exp", (0, 0, 1, 1, 2, 3, 4, 8), tuple(range(ALPHABET))).digest
    assert len(cb.digest) == 16
    other = Codebook(torch.float16, "fp16_hi", (0, 0, 1, 1, 2, 3, 4, 8), tuple(range(ALPHABET)))
    assert other.digest != cb.digest
    assert cb.digest == STABLE_DIGEST


STABLE_DIGEST = Codebook(torch.bfloat16, "bf16_exp", (0, 0, 1, 1, 2, 3, 4, 8), tuple(range(ALPHABET))).digest


def test_save_load_round_trip(tmp_path):
    t = (torch.randn(10_000) * 0.02).to(torch.bfloat16)
    cb = qlccomm.fit_codebook(t)
    p = tmp_path / "cb.json"
    cb.save(p)
    loaded = qlccomm.Codebook.load(p)
    assert loaded == cb and loaded.digest == cb.digest
    obj = json.loads(p.read_text())
    obj["widths"][0] += 1
    p.write_text(json.dumps(obj))
    with pytest.raises(qlccomm.FormatError):
        qlccomm.Codebook.load(p)


def test_load_from_multi_codebook_file(tmp_path):
    a = qlccomm.default_codebook(torch.bfloat16)
    b = qlccomm.default_codebook(torch.float8_e4m3fn)
    p = tmp_path / "set.json"
    p.write_text(json.dumps({"codebooks": [a.to_json(), b.to_json()]}))
    assert qlccomm.Codebook.load(p, dtype=torch.float8_e4m3fn) == b
    assert qlccomm.Codebook.load(p, dtype=torch.bfloat16) == a
    with pytest.raises(KeyError):
        qlccomm.Codebook.load(p)
    with pytest.raises(KeyError):
        qlccomm.Codebook.load(p, dtype=torch.float32)


@pytest.mark.parametrize("widths,symbols", [
    ((0,) * 8, tuple(range(ALPHABET))),                  # covers only 8 symbols
    ((9, 0, 0, 0, 0, 0, 0, 0), tuple(range(ALPHABET))),  # width above 8
    ((5,) * 8, (0,) * ALPHABET),                         # not a permutation
])
def test_invalid_codebooks_rejected(widths, symbols):
    with pytest.raises(qlccomm.FormatError):
        Codebook(torch.bfloat16, "bf16_exp", widths, symbols)


def test_plan_must_code_dtype():
    with pytest.raises(qlccomm.FormatError):
        Codebook(torch.float32, "bf16_exp", (5,) * 8, tuple(range(ALPHABET)))


def test_float16_keeps_the_better_plan():
    """Both float16 plans are measured; the kept one has the fewest total (coded + raw) bits."""
    from qlccomm.codebook import symbol_histogram, total_bits
    g = torch.Generator().manual_seed(0)
    vals = torch.tensor([0.5, -0.75, 3.0, 100.0], dtype=torch.float16)
    samples = [
        (torch.randn(20_000, generator=g) * 0.02).to(torch.float16),
        (torch.rand(20_000, generator=g) + 1.0).to(torch.float16),
        vals[torch.randint(0, 4, (20_000,), generator=g)],
    ]
    for t in samples:
        chosen = qlccomm.fit_codebook(t)
        costs = {}
        for plan in ("fp16_exp", "fp16_hi"):
            h = symbol_histogram(t, PLANS[plan])
            costs[plan] = total_bits(h, codebook_from_histogram(h, torch.float16, PLANS[plan]))
        assert costs[chosen.plan] == min(costs.values())


def test_expected_bits_matches_manual_count():
    t = torch.tensor([1, 1, 1, 2, 2, 3], dtype=torch.uint8)
    cb = qlccomm.fit_codebook(t)
    lengths = cb.code_lengths()
    manual = (3 * lengths[1] + 2 * lengths[2] + lengths[3]) / 6
    assert cb.expected_bits(t) == pytest.approx(manual)
    assert cb.expected_bits(torch.empty(0, dtype=torch.uint8)) == 0.0


def test_fit_rejects_mixed_or_uncoded_dtypes():
    with pytest.raises(ValueError):
        qlccomm.fit_codebook([torch.zeros(3, dtype=torch.bfloat16), torch.zeros(3, dtype=torch.float16)])
    with pytest.raises(ValueError):
        qlccomm.fit_codebook(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError):
        qlccomm.default_codebook(torch.int64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn,
                                   torch.float8_e5m2, torch.int8, torch.uint8, torch.bool])
def test_default_codebooks_load(dtype):
    cb = qlccomm.default_codebook(dtype)
    assert cb.dtype == dtype and cb is qlccomm.default_codebook(dtype)


def test_default_coded_stream_decodes_in_a_fresh_process(tmp_path):
    """A stream that references a shipped codebook by digest decodes where nothing loaded it yet,
    and so do streams of the codebooks the current defaults replaced (codebooks/previous/)."""
    from qlccomm.datagen import synthetic
    previous = resources.files("qlccomm") / "codebooks" / "previous"
    books = [qlccomm.default_codebook(torch.bfloat16)]
    books += [Codebook.from_json(json.loads(p.read_text())) for p in sorted(previous.iterdir())
              if p.name.endswith(".json")]
    assert len(books) >= 3 and len({b.digest for b in books}) == len(books)
    cases = []
    for i, cb in enumerate(books):
        x = synthetic("grad", cb.dtype, 5000, seed=i)
        path = tmp_path / f"{i}.qlc"
        path.write_bytes(qlccomm.compress(x, codebook=cb).numpy().tobytes())
        torch.save(x, tmp_path / f"{i}.pt")
        cases.append(i)
    code = ("import sys, numpy as np, torch, qlccomm\n"
            "for i in sys.argv[2:]:\n"
            "    s = torch.from_numpy(np.fromfile(f'{sys.argv[1]}/{i}.qlc', np.uint8))\n"
            "    x = torch.load(f'{sys.argv[1]}/{i}.pt')\n"
            "    assert torch.equal(qlccomm.decompress(s).view(torch.uint8), x.view(torch.uint8)), i\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path), *map(str, cases)], check=True, timeout=120)


def test_default_codebook_fits_activations():
    """bf16 and fp16 defaults are fitted on activations too: they code synthetic activations
    better than the weight-and-gradient codebooks they replaced (deterministic sizes, no timing)."""
    from qlccomm.datagen import synthetic
    previous = resources.files("qlccomm") / "codebooks" / "previous"
    for dtype, name in ((torch.bfloat16, "bfloat16-1.json"), (torch.float16, "float16-1.json")):
        old = Codebook.from_json(json.loads((previous / name).read_text()))
        x = synthetic("activation", dtype, 1 << 18, seed=77)
        new_size = qlccomm.compress(x, codebook="default").numel()
        assert new_size < qlccomm.compress(x, codebook=old).numel()
        assert torch.equal(qlccomm.decompress(qlccomm.compress(x, codebook="default")).view(torch.uint8),
                           x.view(torch.uint8))


def test_entropy_and_huffman_measures():
    h = np.zeros(ALPHABET, np.int64)
    h[:4] = [4, 2, 1, 1]
    assert entropy_bits(h) == pytest.approx(1.75)
    assert huffman_bits(h) == pytest.approx(1.75)
    h2 = np.zeros(ALPHABET, np.int64)
    h2[:3] = [1, 1, 1]
    assert entropy_bits(h2) <= huffman_bits(h2) <= entropy_bits(h2) + 1


def test_fit_warns_when_mixed_kinds_lose_to_adaptive_coding():
    import warnings

    from qlccomm.codebook import adaptive_bits, fit_codebook, symbol_histogram, total_bits
    from qlccomm.datagen import synthetic
    from qlccomm.errors import CodebookFitWarning
    from qlccomm.split import candidate_plans
    w = synthetic("weight", torch.bfloat16, 1 << 19, seed=1)
    g = synthetic("grad", torch.bfloat16, 1 << 19, seed=2)
    with pytest.warns(CodebookFitWarning, match="fit each kind"):
        cb = fit_codebook([w, g])
    # the warning's premise, from the histograms: one code for both costs more than one each
    hists = [{p.name: symbol_histogram(t, p) for p in candidate_plans(t.dtype)} for t in (w, g)]
    together = sum(total_bits(h[cb.plan], cb) for h in hists)
    assert together > sum(adaptive_bits(h, torch.bfloat16) for h in hists)
    # the measured streams agree
    assert all(qlccomm.compress(t, codebook=cb).numel() > qlccomm.compress(t).numel() for t in (w, g))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CodebookFitWarning)
        fit_codebook([w, synthetic("weight", torch.bfloat16, 1 << 19, seed=3)])     # one kind: no warning
        fit_codebook([w, g], warn=False)
        fit_codebook(g)                                                               # one sample: nothing to compare


@settings(max_examples=100, deadline=None)
@given(counts=st.lists(st.integers(0, 10**6), min_size=ALPHABET, max_size=ALPHABET),
       ties=st.booleans(), plan=st.sampled_from(sorted(PLANS)))
def test_fitted_bits_is_the_fitted_codebooks_total(counts, ties, plan):
    """fitted_bits (what adaptive coding weighs without building a codebook) is exactly the
    total_bits of the codebook that codebook_from_histogram fits, ties among counts included."""
    from qlccomm.codebook import fitted_bits, total_bits
    from qlccomm.split import candidate_plans
    h = np.asarray(counts, np.int64)
    if ties:
        h = h % 3                               # many equal counts, some zero
    p = PLANS[plan]
    dtype = next(d for d in (torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn,
                             torch.float8_e5m2, torch.uint8) if p in candidate_plans(d))
    assert fitted_bits(h, p) == total_bits(h, codebook_from_histogram(h, dtype, p, transient=True))
