"""Neuron -> heuristic classifier (paper-spec §7, §8) on planted maps with hand-counted scores.

Every map here is built by `ordered_map`: the listed pairs first, then all other pairs by
ascending index (pairs are enumerated op1-major, op2 ascending), then the `bottom` pairs, so
that the top-k of any k can be counted by hand. The expected numbers are derived in the
comments. With JAXINTERP_OFFICIAL_REPO set to a checkout or git mirror of
technion-cs-nlp/llm-arithmetic-heuristics, one more test runs the official classifier.
"""

import os

import numpy as np
import pytest

from experiments.arith_heuristics import classify as cl
from experiments.arith_heuristics.classify import (
    MODES,
    Classification,
    associated,
    classify,
    heuristic_names,
    hybrid,
)
from experiments.arith_heuristics.prompts import legal_prompts


def legal_pairs(op: str, max_single_token: int = 999, max_op: int = 300) -> np.ndarray:
    prompts = legal_prompts(op, max_single_token=max_single_token, max_op=max_op)
    return np.array([(p.op1, p.op2) for p in prompts], np.int64)


def pair_indices(pairs: np.ndarray, wanted) -> list[int]:
    index = {(a, b): i for i, (a, b) in enumerate(pairs.tolist())}
    return [index[p] for p in wanted]


def ordered_map(n_pairs: int, first=(), bottom=()) -> np.ndarray:
    """A tie-free float32 map ordering `first` (in order) on top, then every other pair by
    ascending index, then `bottom` reversed: the bottom (reversed) ordering starts with
    `bottom[0]`."""
    first, bottom = list(first), list(bottom)
    middle = np.setdiff1d(np.arange(n_pairs), first + bottom)  # ascending
    sequence = np.concatenate([first, middle, bottom[::-1]]).astype(np.int64)
    assert sorted(sequence.tolist()) == list(range(n_pairs))
    values = np.empty(n_pairs, np.float32)
    values[sequence] = np.arange(n_pairs, 0, -1, dtype=np.float32)  # exact, distinct
    return values


def scores(result: Classification, row: int = 0) -> dict[str, list[float]]:
    """name -> the scores of one neuron's entries (top before bottom), names without any
    entry of that neuron left out."""
    out = {}
    for name, entries in result.to_dict().items():
        mine = [s for n, s in entries if n == row]
        if mine:
            out[name] = mine
    return out


def run(maps, pairs, op, mode="parity", **kwargs) -> Classification:
    kwargs.setdefault("max_single_token", 999)
    kwargs.setdefault("kind", "K")
    return classify(np.atleast_2d(maps), pairs, op, mode=mode, **kwargs)


# --- fixed names ----------------------------------------------------------------------------


@pytest.mark.parametrize("op, count", [("+", 522), ("-", 443), ("*", 1081), ("/", 377)])
def test_fixed_name_counts(op, count):
    # paper-spec §7.3/7.4b: 2 * (54 mods + operand ranges) + 54 + both ranges + 54 (not ÷)
    # + result ranges + 1; ÷ drops result_range_0_{2,10,100}.
    names = heuristic_names(op, max_single_token=999, mode="parity")
    assert len(names) == len(set(names)) == count
    assert names == heuristic_names(op, max_single_token=999, mode="clean")


def test_fixed_name_order_and_division_drops():
    names = heuristic_names("+", max_single_token=999, mode="parity")
    assert names[:3] == ["op1_0mod2", "op1_1mod2", "op1_0mod3"]
    assert names[54:57] == ["op1_range_0_10", "op1_range_10_20", "op1_range_20_30"]
    assert names[103] == "op2_0mod2"  # 54 mods + 49 ranges per operand
    assert names[-1] == "same_operand"
    assert (
        "result_range_592_642" in names
    )  # + result ranges: size 50, stride 16, up to 600
    div = heuristic_names("/", max_single_token=999, mode="parity")
    assert "result_range_0_2" not in div and "result_range_10_12" in div
    assert not any(n.startswith("result_") and "mod" in n for n in div)


# --- operand heuristics ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_operand_mod_neuron_and_its_patterns(mode):
    pairs = legal_pairs("+")  # 90000 pairs: f = 1
    op1 = pairs[:, 0]
    got = scores(
        run(ordered_map(len(pairs), np.flatnonzero(op1 % 5 == 2)), pairs, "+", mode)
    )
    # op1_2mod5: k = (300 // 5) * 300 = 18000 = the 60 planted op1 values x 300 op2.
    assert got["op1_2mod5"] == [1.0]
    # op1_2mod10: k = 9000 = op1 in {2, 7, ..., 147} x 300; 15 of those 30 end in 2.
    assert got["op1_2mod10"] == [0.5]
    # op1_range_0_10: k = 3000 = op1 in {2, 7, ..., 47}; op1 in {2, 7} -> 600 / 3000.
    assert got["op1_range_0_10"] == [0.2]
    # same_operand: k = 300 = (2, 0..299); one of them is (2, 2).
    assert got["same_operand"] == [1 / 300]
    # Patterns use the top int(300 * 1) = 300 pairs: op1 = 2 throughout, so all 7 masks of
    # "002" count 300. Sorted by fixed digits then first seen: 002, 00., 0.2, .02, 0.., .0.,
    # ..2. Parity takes 5 and drops the range-like 00. and 0..; clean drops them first.
    op1_found = {
        n: s for n, s in got.items() if n.startswith(("op1_value", "op1_pattern"))
    }
    expected = {
        "op1_value_002": [1.0],
        "op1_pattern_0.2": [1.0],
        "op1_pattern_.02": [1.0],
    }
    if mode == "clean":
        expected |= {"op1_pattern_.0.": [1.0], "op1_pattern_..2": [1.0]}
    assert op1_found == expected
    # op2 = 0..299 in those pairs: 0.., 1.., 2.. count 100; every .d. and ..d 30 (>= 300 // 10);
    # the 30s in first-seen order: .0. (000), ..0 (000), ..1 (001), ..2, ..3, ...
    op2_found = {
        n: s for n, s in got.items() if n.startswith(("op2_value", "op2_pattern"))
    }
    tail = ("..1", "..2", "..3") if mode == "clean" else ()
    assert op2_found == {f"op2_pattern_{p}": [0.1] for p in (".0.", "..0") + tail}


def test_bottom_ordering_is_scored_only_with_check_bottom():
    pairs = legal_pairs("+")
    planted = np.flatnonzero(pairs[:, 0] % 5 == 2)
    maps = ordered_map(len(pairs), bottom=planted)
    # Top 18000 = the first 60 op1 values not = 2 mod 5: none satisfies op1 % 5 == 2.
    assert scores(run(maps, pairs, "+"))["op1_2mod5"] == [0.0]
    # Bottom 18000 = the planted pairs: max(0, 1) = 1.
    assert scores(run(maps, pairs, "+", check_bottom=True))["op1_2mod5"] == [1.0]


def test_identical_operands():
    pairs = legal_pairs("/")  # op1, op2 in 1..299: 299 diagonal pairs, k = 300
    maps = ordered_map(len(pairs), np.flatnonzero(pairs[:, 0] == pairs[:, 1]))
    assert scores(run(maps, pairs, "/"))["same_operand"] == [299 / 300]
    pairs = legal_pairs(
        "*"
    )  # k = int(999 ** 0.5) = 31; diagonal op1 * op1 <= 999: 0..31
    maps = ordered_map(len(pairs), np.flatnonzero(pairs[:, 0] == pairs[:, 1]))
    assert scores(run(maps, pairs, "*"))["same_operand"] == [1.0]


@pytest.mark.parametrize("mode", MODES)
def test_subtraction_op2_range_uses_the_op1_count_in_parity(mode):
    pairs = legal_pairs("-")  # op1 >= op2: op1 = a has a + 1 pairs, op2 = b has 300 - b
    maps = ordered_map(len(pairs), np.flatnonzero(pairs[:, 1] >= 250))
    got = scores(run(maps, pairs, "-", mode))
    # 1275 = sum(1..50) pairs have op2 >= 250; they are on top. Parity k = #pairs with
    # op1 in [250, 300) = sum(251..300) = 13775; clean k = 1275.
    assert got["op2_range_250_300"] == [1275 / 13775 if mode == "parity" else 1.0]
    # op1_range_250_300 has k = 13775 in both: the 1275 planted pairs (op1 >= 250) and the
    # next 12500 by index (op1 0..157) -> 1275 / 13775.
    assert got["op1_range_250_300"] == [1275 / 13775]


@pytest.mark.parametrize("mode", MODES)
def test_float64_k_formula(mode):
    pairs = legal_pairs("*", max_single_token=530)  # 3550 pairs
    even = np.flatnonzero(pairs[:, 0] % 2 == 0)[:1774]  # 1857 exist
    odd = pair_indices(pairs, [(1, 0)])
    got = scores(
        run(
            ordered_map(len(pairs), list(even) + odd),
            pairs,
            "*",
            mode,
            max_single_token=530,
        )
    )
    # k = (300 // 2) * 300 * 3550 / 300**2 = 1775 exactly, but 45000 * (3550 / 90000) is
    # 1774.9999999999998 in float64, so the official k is 1774 (all even); clean sees (1, 0).
    assert got["op1_0mod2"] == [1.0 if mode == "parity" else 1774 / 1775]
    assert got["op1_1mod2"] == [0.0 if mode == "parity" else 1 / 1775]


# --- result heuristics ----------------------------------------------------------------------


def test_result_range_neuron():
    pairs = legal_pairs("-")  # result r has 300 - r pairs
    r = pairs[:, 0] - pairs[:, 1]
    got = scores(
        run(
            ordered_map(len(pairs), np.flatnonzero((r >= 150) & (r < 180))),
            pairs,
            "-",
            kind="KV",
        )
    )
    # k = sum over r = 150..179 of (300 - r) = sum(121..150) = 4065 = all planted pairs.
    assert got["result_range_150_180"] == [1.0]
    # k = sum(131..160) = 4365: the 4065 planted + 300 pairs with op1 = 0..23 (results
    # <= 23). Planted results in 150..169: sum(131..150) = 2810.
    assert got["result_range_140_170"] == [2810 / 4365]
    # Result ranges are never scored on the bottom ordering: planted at the bottom, the top
    # 4065 pairs by index have op1 <= 89, so results <= 89.
    bottom = ordered_map(len(pairs), bottom=np.flatnonzero((r >= 150) & (r < 180)))
    got = scores(run(bottom, pairs, "-", kind="KV", check_bottom=True))
    assert got["result_range_150_180"] == [0.0]


@pytest.mark.parametrize("mode", MODES)
def test_division_multi_value(mode):
    pairs = legal_pairs("/")
    r = pairs[:, 0] // pairs[:, 1]
    distinct = pair_indices(
        pairs, [(v, 1) for v in range(3, 43)]
    )  # results 3..42, once
    first_a = list(np.flatnonzero(r == 1)[:700]) + list(np.flatnonzero(r == 2)[:260])
    first_b = list(np.flatnonzero(r == 0)[:700]) + list(np.flatnonzero(r == 1)[:260])
    maps = np.stack(
        [
            ordered_map(len(pairs), first_a + distinct),
            ordered_map(len(pairs), first_b + distinct),
        ]
    )
    result = run(maps, pairs, "/", mode, kind="KV")
    # Top 1000 results: 700 x 1, 260 x 2, 40 singletons. Top-1 mass 0.70 < 0.95 <= 0.96.
    multi = {n: e for n, e in result.to_dict().items() if "multi" in n}
    assert list(multi) == ["result_multi_value_2=[1, 2]"]
    ((row, score),) = multi["result_multi_value_2=[1, 2]"]
    assert row == 0
    # parity: float32(0.7) + float32(0.26) in float32; clean: 960 / 1000.
    assert score == (pytest.approx(0.96, abs=1e-6) if mode == "parity" else 0.96)
    # Row 1 has the same masses on {0, 1}, a set the official code deletes for ÷.
    assert "result_multi_value_2=[0, 1]" not in result.names
    # k = int(300 * 89401 / 90000) = 298 results of 1: a value, and ÷ keeps no patterns.
    assert scores(result)["result_value_001"] == [1.0]
    assert not any(n.startswith("result_pattern") for n in result.names)


def _zero_result_map(pairs: np.ndarray) -> np.ndarray:
    # × (S = 999): 5784 pairs, pattern k = int(300 * 5784 / 90000) = 19.
    top = pair_indices(pairs, [(0, b) for b in range(19)])  # op1 = 0, result 0
    bottom = pair_indices(
        pairs,
        [(100, b) for b in range(10)]
        + [(200, b) for b in range(5)]
        + [(0, b) for b in (299, 298, 297, 296)],
    )
    return ordered_map(len(pairs), top, bottom)


@pytest.mark.parametrize("mode", MODES)
def test_multiplication_zero_post_processing(mode):
    pairs = legal_pairs("*")
    control = ordered_map(
        len(pairs), pair_indices(pairs, [(1, b) for b in range(1, 300)])
    )
    result = run(
        np.stack([_zero_result_map(pairs), control]),
        pairs,
        "*",
        mode,
        check_bottom=True,
    )
    got = scores(result)
    # Top 19 results are all 0: result_value_000 = 19 / 19, so the zero-related names of
    # this neuron are zeroed.
    assert got["result_value_000"] == [1.0]
    assert all(got[f"result_0mod{n}"] == [0.0] for n in range(2, 11))
    assert got["result_pattern_0.0"] == [0.0] and got["result_pattern_.00"] == [0.0]
    # op1 top: 19 x 0 -> value 000, patterns 0.0 and .00 (+ .0. and ..0 in clean).
    # op1 bottom: 10 x 100, 5 x 200, 4 x 0: .00 (19, 2 fixed), .0. and ..0 (19), 100 (10),
    # then 10. before 1.0 (10 each, first seen) -> parity drops 10., clean adds 1.0.
    assert got["op1_value_000"] == [1.0]
    assert got["op1_value_100"] == [10 / 19]
    assert got["op1_pattern_0.0"] == [0.0]
    if mode == "parity":  # `list.index`: only the neuron's first entry is zeroed
        assert got["op1_pattern_.00"] == [0.0, 1.0]
        assert got["op1_pattern_..0"] == [0.0]  # bottom entry only, so it is the first
        assert got["op1_pattern_.0."] == [1.0]  # not a cancelled name
        assert "op1_pattern_1.0" not in got
    else:
        assert got["op1_pattern_.00"] == [0.0, 0.0]
        assert got["op1_pattern_..0"] == [0.0, 0.0]
        assert got["op1_pattern_.0."] == [1.0, 1.0]
        assert got["op1_pattern_1.0"] == [10 / 19]
    # The control neuron (results 1..299 on top) keeps its result mods.
    assert scores(result, 1)["result_0mod2"][0] > 0
    assert result.notes == ()


@pytest.mark.parametrize("mode", MODES)
def test_multiplication_without_result_value_000(mode):
    pairs = legal_pairs("*")
    maps = ordered_map(len(pairs), pair_indices(pairs, [(1, b) for b in range(1, 300)]))
    result = run(maps, pairs, "*", mode)
    assert "result_value_000" not in result.names
    if mode == "parity":  # the official code raises KeyError('result_value_000') here
        assert len(result.notes) == 1 and "KeyError" in result.notes[0]
    else:
        assert result.notes == ()


# --- HYBRID and the result dictionary -------------------------------------------------------


def test_hybrid_takes_result_names_from_kv():
    pairs = legal_pairs("-")
    r = pairs[:, 0] - pairs[:, 1]
    k_map = ordered_map(len(pairs), np.flatnonzero(pairs[:, 1] >= 250))
    kv_map = ordered_map(len(pairs), np.flatnonzero((r >= 150) & (r < 180)))
    k = run(k_map, pairs, "-", kind="K")
    kv = run(kv_map, pairs, "-", kind="KV")
    both = hybrid(k, kv)
    assert both.kind == "HYBRID"
    n_result = sum(n.startswith("result") for n in kv.names)
    assert all(n.startswith("result") for n in both.names[:n_result])
    assert not any(n.startswith("result") for n in both.names[n_result:])
    full, k_full, kv_full = both.to_dict(), k.to_dict(), kv.to_dict()
    for name in both.names:
        assert full[name] == (kv_full if name.startswith("result") else k_full)[name]
    matched = both.matched()
    assert matched["result_range_150_180"] == [(0, 1.0)]  # from KV
    assert k.matched()["result_range_150_180"] == []  # the K map is not a result neuron
    # From K: the 1275 pairs with op2 >= 250 are exactly those with both in [250, 300).
    assert matched["both_operands_range_250_300"] == [(0, 1.0)]
    assert kv.matched()["both_operands_range_250_300"] == []
    assert set(matched) == set(both.names)
    with pytest.raises(ValueError, match="K run and a KV run"):
        hybrid(kv, k)


def test_matched_thresholds_like_the_official_dict():
    pairs = legal_pairs("*")
    result = run(_zero_result_map(pairs), pairs, "*", check_bottom=True)
    matched = result.matched(0.6)
    assert set(matched) == set(result.names)  # empty lists kept
    assert matched["op1_pattern_.00"] == [(0, 1.0)]  # the zeroed top entry is gone
    assert matched["op1_value_100"] == []  # 10 / 19 < 0.6
    assert result.matched(0.5)["op1_value_100"] == [(0, 10 / 19)]


def test_chunking_does_not_change_results(monkeypatch):
    pairs = legal_pairs("*")
    rng = np.random.default_rng(0)
    maps = np.stack(
        [ordered_map(len(pairs), rng.permutation(len(pairs))) for _ in range(5)]
    )
    whole = run(maps, pairs, "*", check_bottom=True)
    monkeypatch.setattr(cl, "_CHUNK_ELEMENTS", 2 * len(pairs))  # 2 rows per chunk
    monkeypatch.setattr(cl, "_CHUNK_MIN_ROWS", 1)
    assert cl._chunk_rows(len(pairs)) == 2
    chunked = run(maps, pairs, "*", check_bottom=True)
    assert chunked.names == whole.names
    assert chunked.to_dict() == whole.to_dict()


@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
def test_counting_plans_agree(monkeypatch, op):
    # The cost model only chooses how the counts are taken: position parts only, or rank
    # parts wherever they apply (ranges by rank intervals, one-k mods by value blocks),
    # must give the same dictionaries as the default choice, in both modes and at both ends.
    pairs = legal_pairs(op, max_op=60)
    rng = np.random.default_rng(3)
    maps = np.round(rng.standard_normal((6, len(pairs))), 2).astype(np.float32)
    expected = {}
    for mode in MODES:
        for bottom in (False, True):
            result = run(maps, pairs, op, mode, check_bottom=bottom, max_op=60)
            expected[mode, bottom] = (result.names, result.to_dict())
    forced = {
        "positions": {"_NS_RANK_PAIR": 1e9},
        "ranks": {"_NS_POSITION": 1e9, "_NS_PER_BIN_POSITION": 1e9, "_NS_RANK": 0.0},
    }
    for plan, costs in forced.items():
        with monkeypatch.context() as patch:
            patch.setattr(cl, "_RULES_CACHE", {})
            for name, value in costs.items():
                patch.setattr(cl, name, value)
            for (mode, bottom), want in expected.items():
                rules = cl._cached_rules(
                    cl._layout(op, 999, 60),
                    op,
                    *cl._pair_values(pairs, op, 999, 60),
                    999,
                    60,
                    mode,
                )
                ranked = rules.plans[bottom].ranked
                assert ranked == (plan == "ranks"), (plan, mode, bottom)
                result = run(maps, pairs, op, mode, check_bottom=bottom, max_op=60)
                assert (result.names, result.to_dict()) == want, (plan, mode, bottom)


def test_pattern_counts_by_runs_and_by_table_agree():
    # Wildcard codes counted by sorted runs (short lists) or in a [row, code] table (long
    # lists): the same (row, code, count, first place) of every code seen often enough.
    rng = np.random.default_rng(4)
    for length, least in ((19, 1), (150, 15), (300, 30)):
        values = rng.integers(0, 60, (7, length)) * rng.choice([1, 10, 11], (7, 1))
        codes = cl._WILDCARD_CODES[values].reshape(7, -1)
        runs = cl._code_runs(codes, least)
        table = cl._code_table(codes, least)
        by_runs = sorted(zip(*(x.tolist() for x in runs), strict=True))
        by_table = sorted(zip(*(x.tolist() for x in table), strict=True))
        assert by_runs == by_table and by_runs


def test_work_arrays_are_reused_safely():
    # Calls of different shapes share the per-thread work arrays: a result never depends
    # on what ran before.
    rng = np.random.default_rng(5)
    runs = []
    for op, max_op in (("*", 300), ("-", 60), ("*", 300)):
        pairs = legal_pairs(op, max_op=max_op)
        maps = rng.standard_normal((3, len(pairs))).astype(np.float32)
        runs.append((op, max_op, pairs, maps))
    first = [
        run(m, p, op, check_bottom=True, max_op=mo).to_dict() for op, mo, p, m in runs
    ]
    again = [
        run(m, p, op, check_bottom=True, max_op=mo).to_dict()
        for op, mo, p, m in reversed(runs)
    ]
    assert first == again[::-1]


def test_ties_are_broken_by_pair_index():
    pairs = legal_pairs("*")
    first = pair_indices(pairs, [(3, 5), (0, 7)])
    tied = np.zeros(len(pairs), np.float32)  # all other pairs tie: enumeration order
    tied[first] = [2.0, 1.0]
    tied[pair_indices(pairs, [(1, 1)])] = -0.0  # equal to 0.0
    with_ties = run(tied, pairs, "*", check_bottom=True)
    untied = run(ordered_map(len(pairs), first), pairs, "*", check_bottom=True)
    assert with_ties.to_dict() == untied.to_dict()
    # Many ties (3 decimals): the same as the tie-free map in stable argsort order.
    rng = np.random.default_rng(1)
    coarse = np.round(rng.standard_normal((4, len(pairs))), 3).astype(np.float32)
    stable = [ordered_map(len(pairs), np.argsort(-m, kind="stable")) for m in coarse]
    for mode in MODES:
        expected = run(np.stack(stable), pairs, "*", mode, check_bottom=True).to_dict()
        assert run(coarse, pairs, "*", mode, check_bottom=True).to_dict() == expected


def test_descending_order_is_the_stable_argsort_at_both_ends():
    # Packed-key sort / partition: the first `top` and last `bottom` positions equal the
    # stable descending argsort (ties by pair index, -0.0 == 0.0); the middle holds the
    # remaining pairs in any order. float64 maps that float32 cannot hold take argsort.
    rng = np.random.default_rng(2)
    maps = np.round(rng.standard_normal((5, 3000)), 1).astype(np.float32)
    maps[:, :50] = -0.0
    maps[:, 50:100] = 0.0
    expected = np.argsort(-maps, axis=1, kind="stable")
    for top, bottom in ((3000, 0), (400, 0), (400, 700), (1500, 1500)):
        order = cl._descending_order(maps, top, bottom)
        assert np.array_equal(order[:, :top], expected[:, :top])
        assert np.array_equal(order[:, 3000 - bottom :], expected[:, 3000 - bottom :])
        assert np.array_equal(np.sort(order, axis=1), np.sort(expected, axis=1))
    fine = maps.astype(np.float64) + 1e-12 * np.arange(3000)
    assert np.array_equal(
        cl._descending_order(fine, 10, 0), np.argsort(-fine, axis=1, kind="stable")
    )


def test_order_steps_give_every_cut_and_the_read_order():
    # `_order_steps` partitions where a rule reads a set of positions and sorts where it
    # reads them in order: before every cut lie the pairs of the stable argsort, and the
    # first `sorted_reads` positions of each end are in its order (ties by pair index).
    rng = np.random.default_rng(6)
    n = 3000
    maps = np.round(rng.standard_normal((4, n)), 2).astype(np.float32)  # many ties
    expected = np.argsort(-maps, axis=1, kind="stable")
    cases = [
        ({1500, 1000, 700, 40, 39, 20}, set(), (20, 0)),  # the top end only
        ({1500, 900, 30}, {1500, 1200, 10}, (30, 10)),  # the ends meet
        ({800, 50}, {600, 400, 5}, (50, 5)),  # a middle left out
        (set(range(1, 200, 3)) | {2500}, {2999, 500, 400}, (7, 3)),  # ends overlap
        ({2995}, {10}, (5, 10)),  # the bottom reads in order inside the top end
    ]
    for top_cuts, bottom_cuts, reads in cases:
        steps = cl._order_steps(n, top_cuts, bottom_cuts, reads)
        keys = np.empty(maps.shape, np.uint64)
        cl._order_keys(maps, keys, steps)
        order = (keys & np.uint64(0xFFFFFFFF)).astype(np.intp)
        assert np.array_equal(np.sort(order, axis=1), np.sort(expected, axis=1))
        for k in top_cuts:
            assert np.array_equal(
                np.sort(order[:, :k], axis=1), np.sort(expected[:, :k], axis=1)
            ), (top_cuts, k)
        for k in bottom_cuts:
            assert np.array_equal(
                np.sort(order[:, n - k :], axis=1),
                np.sort(expected[:, n - k :], axis=1),
            ), (bottom_cuts, k)
        assert np.array_equal(order[:, : reads[0]], expected[:, : reads[0]])
        assert np.array_equal(order[:, n - reads[1] :], expected[:, n - reads[1] :])


def test_byte_blocks_count_the_entries_of_every_block():
    # Rank parts count 8 entries per uint64 word: blocks of any length and alignment,
    # several starting in one word, and blocks too long for one byte lane (split).
    rng = np.random.default_rng(7)
    n = 6001
    inside = np.zeros((3, 8 * -(-n // 8)), bool)
    inside[:, :n] = rng.random((3, n)) < 0.9
    starts = np.array([0, 1, 2, 3, 9, 17, 18, 40, 41, 2100, 4500, 6000])
    got = cl._ByteBlocks.build(starts, n).count(inside.view(np.uint64))
    ends = np.append(starts[1:], n)
    want = [inside[:, a:b].sum(axis=1) for a, b in zip(starts, ends, strict=True)]
    assert np.array_equal(got, np.stack(want, axis=1))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan, -np.nan])
def test_rejects_maps_that_are_not_finite(bad):
    # float32 maps are checked on their ordering keys, others before the argsort.
    pairs = legal_pairs("*")
    maps = np.stack([ordered_map(len(pairs))] * 2)
    maps[1, 7] = bad
    with pytest.raises(ValueError, match="finite"):
        run(maps, pairs, "*", kind="KV")
    with pytest.raises(ValueError, match="finite"):
        run(maps.astype(np.float64) + 1e-9, pairs, "*", kind="KV")


def test_rejects_bad_input():
    pairs = legal_pairs("*")
    maps = ordered_map(len(pairs))
    with pytest.raises(ValueError, match="finite"):
        run(np.where(np.arange(len(pairs)) == 3, np.nan, maps), pairs, "*")
    with pytest.raises(ValueError, match="maps must be"):
        run(maps[:-1], pairs, "*")
    with pytest.raises(ValueError, match="kind"):
        run(maps, pairs, "*", kind="HYBRID")
    with pytest.raises(ValueError, match="result"):
        run(maps, pairs, "*", max_single_token=500)  # pairs with products up to 999


# --- prompt association (paper-spec §8) -----------------------------------------------------


def _assoc(name, prompts, op, mode):
    op1, op2 = np.array(prompts).T
    return associated([name], op1, op2, op, mode=mode)[0].tolist()


@pytest.mark.parametrize(
    "name, op, prompts, parity, clean",
    [
        # inclusive single-value ranges in parity: op1 = 10 is in [0, 10]
        ("op1_range_0_10", "+", [(9, 1), (10, 1), (11, 1)], [1, 1, 0], [1, 0, 0]),
        ("op1_region_0_10", "+", [(10, 1)], [1], [0]),
        # both-operand ranges are half-open in both modes
        ("both_operands_range_0_10", "+", [(9, 9), (10, 5)], [1, 0], [1, 0]),
        # ÷: 45/4 = 11.25, 80/4 = 20.0, 83/4 = 20.75, 39/2 = 19.5 (floors 11, 20, 20, 19)
        (
            "result_range_10_20",
            "/",
            [(45, 4), (80, 4), (83, 4), (39, 2)],
            [1, 1, 0, 1],
            [1, 0, 0, 1],
        ),
        ("result_value_011", "/", [(45, 4), (44, 4)], [0, 1], [1, 1]),
        ("result_1mod2", "/", [(45, 4), (44, 4), (46, 2)], [0, 1, 1], [1, 1, 1]),
        (
            "result_multi_value_2=[1, 2]",
            "/",
            [(3, 2), (4, 2), (7, 2)],
            [0, 1, 0],
            [1, 1, 0],
        ),
        # patterns are regexes on str(v).zfill(3) in parity: 1/2 = "0.5", 15/1 = "15.0",
        # 5/1 = "5.0"; clean: "000", "015", "005". And 0 - 5 = "-05" (an illegal prompt).
        ("result_pattern_..5", "/", [(1, 2), (15, 1), (5, 1)], [1, 0, 0], [0, 1, 1]),
        ("result_pattern_..5", "-", [(5, 0), (0, 5), (20, 5)], [1, 1, 1], [1, 0, 1]),
        (
            "result_pattern_.1.",
            "+",
            [(10, 5), (100, 5), (5, 200)],
            [1, 0, 0],
            [1, 0, 0],
        ),
        ("op2_5mod7", "*", [(0, 12), (0, 5), (0, 6)], [1, 1, 0], [1, 1, 0]),
        ("both_operands_2mod5", "+", [(2, 7), (2, 8)], [1, 0], [1, 0]),
        ("same_operand", "-", [(3, 3), (3, 2)], [1, 0], [1, 0]),
        ("op1_value_007", "+", [(7, 0), (70, 0)], [1, 0], [1, 0]),
        # division by zero: no result heuristic, operand ones still apply
        ("result_range_0_2", "/", [(1, 0)], [0], [0]),
        ("op2_0mod2", "/", [(1, 0)], [1], [1]),
    ],
)
def test_associated(name, op, prompts, parity, clean):
    assert _assoc(name, prompts, op, "parity") == [bool(x) for x in parity]
    assert _assoc(name, prompts, op, "clean") == [bool(x) for x in clean]


def test_associated_shape_and_unknown_names():
    out = associated(
        ["same_operand", "op1_0mod2"], np.arange(4), np.arange(4), "+", mode="clean"
    )
    assert out.shape == (2, 4) and out.dtype == bool
    assert out[0].all() and out[1].tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="unknown heuristic"):
        associated(["op3_0mod2"], np.arange(2), np.arange(2), "+", mode="parity")


# --- the official classifier ----------------------------------------------------------------

OFFICIAL = os.environ.get("JAXINTERP_OFFICIAL_REPO")


@pytest.mark.skipif(
    not OFFICIAL,
    reason="set JAXINTERP_OFFICIAL_REPO to a checkout or git mirror of "
    "technion-cs-nlp/llm-arithmetic-heuristics to compare with the official classifier",
)
@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
def test_matches_the_official_classifier(op):
    from benchmarks.bench_classify import (
        load_official,
        official_matched,
        planted_maps,
        run_official,
    )

    official = load_official(OFFICIAL)
    max_op = 50  # the notebook's fast setting: 2500 pairs for + instead of 90000
    pairs = legal_pairs(op, max_op=max_op)
    for kind, bottom, seed in (("K", True, 1), ("KV", False, 2)):
        maps = planted_maps(pairs, op, 4, seed)
        ours = run(maps, pairs, op, kind=kind, check_bottom=bottom, max_op=max_op)
        theirs, *_ = run_official(
            official,
            maps,
            pairs,
            op,
            max_single_token=999,
            check_bottom=bottom,
            max_op=max_op,
        )
        assert ours.notes == ()
        assert ours.matched(0.6) == official_matched(theirs)
        assert ours.to_dict() == {
            n: [(r, s) for _, r, s in e] for n, e in theirs.items()
        }
        assert list(ours.names) == list(theirs)
    if (
        op == "*"
    ):  # no result_value_000 anywhere: the official code raises, we take a note
        maps = ordered_map(
            len(pairs), pair_indices(pairs, [(1, b) for b in range(1, 50)])
        )
        assert "KeyError" in run(maps, pairs, op, max_op=max_op).notes[0]
        with pytest.raises(KeyError, match="result_value_000"):
            run_official(
                official,
                maps[None],
                pairs,
                op,
                max_single_token=999,
                check_bottom=False,
                max_op=max_op,
            )


@pytest.mark.skipif(not OFFICIAL, reason="set JAXINTERP_OFFICIAL_REPO (see above)")
@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
def test_associated_matches_the_official_function(op):
    from benchmarks.bench_classify import load_official_association

    official = load_official_association(OFFICIAL)
    names = (
        heuristic_names(op, max_single_token=999, mode="parity")
        + [
            f"{source}_{kind}_{p}"
            for source in ("op1", "op2", "result")
            for kind, ps in (
                ("pattern", ("..5", ".0.", "0.5", "1.0", "00.")),
                ("value", ("005", "011", "100")),
            )
            for p in ps
        ]
        + ["result_multi_value_2=[1, 2]", "result_multi_value_3=[0, 3, 7]"]
    )
    rng = np.random.default_rng(0)
    lo = 1 if op == "/" else 0  # the official function divides by zero
    op1 = np.concatenate([rng.integers(lo, 20, 40), rng.integers(lo, 300, 160)])
    op2 = np.concatenate([rng.integers(max(lo, 1), 5, 40), rng.integers(lo, 300, 160)])
    ours = associated(names, op1, op2, op, mode="parity")
    prompts = [f"{a}{op}{b}=" for a, b in zip(op1.tolist(), op2.tolist(), strict=True)]
    for name, row in zip(names, ours.tolist(), strict=True):
        # the published results used "region" where the released classifier says "range"
        theirs = [bool(official(name.replace("range", "region"), p)) for p in prompts]
        assert row == theirs, name
