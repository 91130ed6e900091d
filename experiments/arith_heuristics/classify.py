"""Neuron -> heuristic classification of "Arithmetic Without Algorithms" (paper-spec §7, §8).

Every analysed neuron has a map: its activation (K map) or its activation times the logit of
the correct answer (KV map) on every legal `(op1, op2)` pair of one operator. The classifier
orders the pairs by descending map value and, for each heuristic, counts how many of the first
k pairs satisfy the heuristic's predicate; score = count / k. A neuron implements the
heuristic when score >= 0.6. The rules (which heuristics, which k) are those of the released
classifier (`heuristics_classification.py` of technion-cs-nlp/llm-arithmetic-heuristics), as
listed in paper-spec §7.3 and sharpened in §7.4b:

* every neuron emits, in this order: per operand (op1, then op2) `op{i}_{m}mod{n}`
  (n = 2..10), the operand's discovered patterns, `op{i}_range_{a}_{b}`; then
  `both_operands_{m}mod{n}`, `both_operands_range_{a}_{b}`, `result_{m}mod{n}` (not ÷), the
  discovered result patterns, `result_range_{a}_{b}`, `same_operand` and, for ÷ only, at
  most one `result_multi_value_{q}=[...]`. `heuristic_names` lists the fixed (not
  discovered) ones.
* discovered patterns: the op1, op2 or result values of the first `int(300 * N / 300**2)`
  pairs are written as 3-digit strings; each gives 7 wildcard masks (`1..`, `.2.`, `12.`,
  `..3`, `1.3`, `.23`, `123`); masks seen at least `k // 10` times are sorted by count and
  number of fixed digits, the first 5 are kept and range-like masks (`1..`, `12.`) dropped.
  Full masks become `*_value_ddd`, the rest `*_pattern_p` (÷ keeps no result patterns).
* with `check_bottom` (paper: K maps of Llama, whose gated activations can be negative)
  operand/both-operand/result-mod and range scores are the max over the top and the bottom
  (reversed) ordering, and operand patterns of the bottom ordering are added as separate
  entries.
* post-processing: ÷ drops `result_range_0_{2,10,100}` and the multi-value sets made of
  the smallest results; × zeroes the zero-related mods and patterns of neurons whose
  `result_value_000` score is 1.

Two modes (`MODES`):

* `"parity"` reproduces the released classifier with its one crash fixed (it names a local
  variable `range` and then calls `range(...)`; renamed back as in the code that produced
  the paper's data), including its quirks. The labels equal the official ones on tie-free
  maps (the official ordering is `torch.topk`, not stable; ours is a stable argsort).
* `"clean"` fixes the quirks. Every difference between the two modes:

  1. Operand ranges: the official k cache is keyed without the operand index and op1 is
     scored first, so `op2_range_a_b` uses k = #pairs with *op1* in [a, b) (only matters for
     subtraction, whose pair set is not symmetric). Clean uses the op2 count.
  2. k formulas: parity evaluates them in float64, left to right, as written
     (`int((300 // n) * 300 * (N / 300**2))`), which is one less than the exact value for
     some N (e.g. × with S = 530: 1774 instead of 1775 for n = 2). Clean uses exact integer
     floors, and `isqrt(S)` for the × same-operand k instead of `int(S ** 0.5)`.
  3. Pattern discovery: parity takes the first 5 significant masks and then drops the
     range-like ones (so fewer than 5 names can come out); clean drops them first and takes
     the first 5 of the rest.
  4. ÷ multi-value: parity normalises the float32 histogram of the first 1000 results,
     sums the sorted fractions in float32 and compares with float32(0.95), as torch does;
     clean compares integer counts exactly (20 * count < 19 * total) and scores in float64.
  5. × post-processing: parity zeroes only the first entry of the neuron in each affected
     list (`list.index`), so a bottom-ordering pattern entry survives next to a zeroed top
     one; clean zeroes all of them. When no neuron of the run has a `result_value_000` entry
     the official code raises `KeyError`; parity treats that as a no-op and says so in
     `Classification.notes`, clean does nothing.
  6. `associated` (prompt <-> heuristic association used by the knockouts, §8): parity uses
     the published semantics (range names read as the old `region` names, inclusive operand
     and result ranges, half-open both-operand ranges, Python true division for ÷ results,
     patterns as regular expressions on `str(value).zfill(3)`); clean uses half-open ranges
     everywhere, floor division and digit-wise patterns on 000..999.

  Both modes break ties in the map stably (smaller pair index first), take the bottom
  ordering as the reversed top ordering, break ties in the ÷ result histogram towards the
  smaller result (torch's unstable sort may pick another result when two counts tie at the
  q-th place), score 0 when k is 0 (the official code divides by zero for a mod or pattern
  k of 0, which only tiny pair sets reach) and keep the ×/÷ cap k <= 300 for result mods and
  ranges.
  (The official "÷ result range scores 0 when all its top-k results are 0" rule is left out:
  only ranges starting at 0 can see it, and ÷ deletes all of those.)

Both operand and result heuristics are scored on every map, whatever its `kind`, as the
official classifier does: the K-run and KV-run dictionaries then equal the official ones, and
× post-processing sees the run's own `result_value_000`. `hybrid` then takes the result names
from the KV run and the rest from the K run (§7.2).

Vectorisation (no Python loop over neurons or heuristics):

* ordering: each map row becomes packed uint64 keys (value bits ordered descending in the
  high half, pair index in the low half), so one plain SIMD sort gives exactly
  `np.argsort(-maps, axis=1, kind="stable")` with no tie handling. Only the positions a
  rule reads are ordered: when the top and bottom reaches leave a middle, a SIMD partition
  puts the two ends in place and only they are sorted.
* fixed heuristics: every value a heuristic looks at (op1, op2, the result, "both operands
  are r mod n", ...) has a precomputed bin per pair. The heuristics of a source are counted
  in "parts": a segmented part cuts the first positions at every k it needs, gathers the
  pairs' bins along the ordering (one `take` over a [position, row] array, so each part
  reads a contiguous prefix), adds the (segment, row) offsets and takes one bincount per
  chunk of neurons; summing the (segment, row, bin) table over segments (row slices, in
  place) gives every heuristic's count at its own k. A per-bin part (heuristics with
  disjoint value sets, each at its own k, such as the ranges of one size) drops positions
  at or past their bin's k instead and needs no table. How a source's heuristics are split
  into parts is chosen once per pair set by a cost model (`_Part.cost`).
* discovered patterns: one bincount of the wildcard codes (a [value, mask] lookup table) of
  the first k values of all neurons of a chunk.
* assembly: fixed names have one entry per neuron, so their entries are written straight
  to their final place; only the few discovered entries are sorted.
* set-up (layout, k formulas, parts) is cached per (operator, S, max_op, mode, digest of
  the pairs), for both ends, so a K run and its KV run share it.

Neurons are processed in chunks of rows only to bound memory.
"""

import dataclasses
import hashlib
import math
import re
import sys
from collections.abc import Sequence

import numpy as np

from experiments.arith_heuristics.prompts import MAX_OP, OPERATORS

MODES = ("parity", "clean")
KINDS = ("K", "KV")
THRESHOLD = 0.6
"""Score at or above which a neuron implements a heuristic (paper and code)."""

MOD_BASES = tuple(range(2, 11))
OPERAND_RANGE_SIZES = {
    "+": (10, 30, 50, 100),
    "-": (10, 30, 50, 100),
    "*": (3, 5, 10),
    "/": (10, 30, 50, 100),
}
RESULT_RANGE_SIZES = {
    "+": (10, 30, 50),
    "-": (10, 30, 50),
    "*": (10, 30, 50, 100),
    "/": (2, 10, 100),
}
MULTI_VALUE_SIZES = (2, 3, 4, 5)
MULTI_VALUE_TOP = 1000
MULTI_VALUE_MASS = 0.95
PATTERNS_KEPT = 5
DIVISION_DROPPED = (
    "result_range_0_100",
    "result_range_0_10",
    "result_range_0_2",
    "result_multi_value_2=[0, 1]",
    "result_multi_value_2=[0, 2]",
    "result_multi_value_3=[0, 1, 2]",
    "result_multi_value_4=[0, 1, 2, 3]",
    "result_multi_value_5=[0, 1, 2, 3, 4]",
)
"""÷ names deleted after classification ("the result is small" is trivial for ÷)."""

ZERO_CANCELLED = tuple(f"result_0mod{n}" for n in MOD_BASES) + tuple(
    f"{v}_pattern_{p}"
    for v in ("op1", "op2", "result")
    for p in ("..0", ".00", "0.0", "00.")
)
"""× names zeroed for neurons whose `result_value_000` score is 1 (they follow from it)."""

_PER_BIN_GROUPS = 4  # at most this many per-bin parts stand in for one segmented part
_CAPPED_OPS = ("*", "/")  # result mods and ranges use k = min(k, max_op)
_SECTION = 4096  # sub-positions per section in a neuron's emission order

# Wildcard masks of a 3-digit string: bit j keeps digit j (hundreds first), so 1 = "d..",
# 2 = ".d.", 3 = "dd.", 4 = "..d", 5 = "d.d", 6 = ".dd", 7 = "ddd" (the official order).
_MASKS = tuple(range(1, 8))
_FULL_MASK = 7
_KEPT = {mask: tuple(j for j in range(3) if mask >> j & 1) for mask in _MASKS}
_CODES_PER_MASK = [10 ** len(_KEPT[mask]) for mask in _MASKS]
_MASK_BASE = dict(
    zip(_MASKS, np.cumsum([0] + _CODES_PER_MASK[:-1]).tolist(), strict=True)
)
_CODE_SPAN = sum(_CODES_PER_MASK)  # 1330 (mask, kept digits) codes
_CODE_MASK = np.repeat(_MASKS, _CODES_PER_MASK)
_FIXED_DIGITS = np.array([bin(mask).count("1") for mask in range(8)])


def _wildcard_codes() -> np.ndarray:
    """[value 0..999, mask] the (mask, kept digits) code of the value's wildcard string."""
    values = np.arange(1000)
    digits = (values // 100, values // 10 % 10, values % 10)
    codes = np.empty((values.size, len(_MASKS)), np.int64)
    for i, mask in enumerate(_MASKS):
        kept = _KEPT[mask]
        number = sum(digits[j] * 10 ** (len(kept) - 1 - p) for p, j in enumerate(kept))
        codes[:, i] = _MASK_BASE[mask] + number
    return codes


_WILDCARD_CODES = _wildcard_codes()
_CHUNK_ELEMENTS = (
    1 << 20
)  # rows per chunk = this // n_pairs (measured: 2^19..2^21 alike)


@dataclasses.dataclass(frozen=True, eq=False)  # arrays: compare `to_dict()` instead
class Classification:
    """Every (name, neuron, score) entry one classifier run emits.

    Entries are stored in the official dictionary's order: names in `names` order (the order
    in which the official code first inserts them), and within a name by neuron, a neuron's
    top-ordering entry before its bottom-ordering one.

    Attributes:
        op: the operator.
        kind: "K", "KV" or "HYBRID".
        mode: one of `MODES`.
        n_neurons: number of map rows.
        names: every heuristic name of the run, fixed and discovered.
        name_index: [entry] index into `names`.
        neuron: [entry] row index into the maps.
        score: [entry] float64 score.
        notes: things the official code would have done differently (e.g. raised).
    """

    op: str
    kind: str
    mode: str
    n_neurons: int
    names: tuple[str, ...]
    name_index: np.ndarray
    neuron: np.ndarray
    score: np.ndarray
    notes: tuple[str, ...] = ()

    def entries(self) -> list[tuple[str, int, float]]:
        """All entries as `(name, neuron, score)`, in the stored order."""
        names = self.names
        return [
            (names[i], n, s)
            for i, n, s in zip(
                self.name_index.tolist(),
                self.neuron.tolist(),
                self.score.tolist(),
                strict=True,
            )
        ]

    def matched(
        self, threshold: float = THRESHOLD
    ) -> dict[str, list[tuple[int, float]]]:
        """name -> [(neuron, score)] with score >= threshold, as the official dict after
        thresholding (every name is a key, possibly with an empty list)."""
        keep = self.score >= threshold
        return self._grouped(keep)

    def to_dict(self) -> dict[str, list[tuple[int, float]]]:
        """name -> [(neuron, score)] for every entry (the official unthresholded dict)."""
        return self._grouped(np.ones(self.score.shape, bool))

    def _grouped(self, keep: np.ndarray) -> dict[str, list[tuple[int, float]]]:
        kept = np.flatnonzero(keep)
        bounds = np.searchsorted(self.name_index[kept], np.arange(len(self.names) + 1))
        pairs = list(
            zip(self.neuron[kept].tolist(), self.score[kept].tolist(), strict=True)
        )
        return {
            name: pairs[bounds[i] : bounds[i + 1]] for i, name in enumerate(self.names)
        }


def heuristic_names(
    op: str, *, max_single_token: int, mode: str, max_op: int = MAX_OP
) -> list[str]:
    """The fixed (non-discovered) heuristic names of one operator, in emission order.

    The same in both modes; ÷ lists 377 names, not 380 (three result ranges are dropped).

    Arguments:
        op: one of `OPERATORS`.
        max_single_token: S, the largest single-token integer (sets the × result ranges).
        mode: one of `MODES`.
        max_op: exclusive upper bound of the operands.

    Returns:
        + 522, - 443, × 1081, ÷ 377 names for max_op = 300, S = 999.
    """
    _check_args(op, mode, "K")
    return list(_layout(op, max_single_token, max_op).names)


def classify(
    maps: np.ndarray,
    pairs: np.ndarray,
    op: str,
    *,
    kind: str,
    max_single_token: int,
    mode: str = "parity",
    check_bottom: bool = False,
    max_op: int = MAX_OP,
) -> Classification:
    """Score every neuron (map row) against every heuristic of one operator.

    Arguments:
        maps: float32 [neuron, pair], one K map or KV map per neuron. Only the order of each
            row matters; it must be finite.
        pairs: int [pair, 2], the legal `(op1, op2)` pairs in the official enumeration order
            (`prompts.legal_prompts(op, max_single_token=S, max_op=max_op)`).
        op: one of `OPERATORS`.
        kind: "K" or "KV": labels the run for `hybrid`; every heuristic is scored either way.
        max_single_token: S of the model (999 for Llama 3).
        mode: "parity" (released classifier) or "clean" (quirks fixed); see the module doc.
        check_bottom: also score the reversed ordering (official `also_check_bottom_results`).
        max_op: exclusive upper bound of the operands.

    Returns:
        The run's `Classification`; `matched()` gives the thresholded dictionary.
    """
    _check_args(op, mode, kind)
    maps = np.asarray(maps)
    op1, op2, result = _pair_values(pairs, op, max_single_token, max_op)
    if maps.ndim != 2 or maps.shape[1] != op1.size:
        raise ValueError(f"maps must be [neuron, {op1.size}], got shape {maps.shape}")
    if not np.all(np.isfinite(maps)):
        raise ValueError("maps must be finite (the official ordering of NaN differs)")
    layout = _layout(op, max_single_token, max_op)
    rules = _cached_rules(layout, op, op1, op2, result, max_single_token, max_op, mode)
    n_rows = maps.shape[0]
    step = max(1, _CHUNK_ELEMENTS // max(op1.size, 1))
    fixed, found = [], []
    offsets: dict[int, np.ndarray] = {}
    for start in range(0, n_rows, step):
        chunk = _score_chunk(maps[start : start + step], rules, check_bottom, offsets)
        fixed.append(chunk.fixed)
        found.append(chunk.found.shifted(start))
    return _assemble(
        layout,
        rules,
        np.concatenate(fixed) if fixed else np.zeros((0, len(layout.names))),
        _Found.concatenate(found),
        n_rows,
        kind,
    )


def hybrid(k: Classification, kv: Classification) -> Classification:
    """The paper's HYBRID dictionary: `result*` names from the KV run, the rest from the K run
    (official `load_heuristic_classes(..., "HYBRID")`, paper-spec §7.2).

    Arguments:
        k: the run on K maps.
        kv: the run on KV maps of the same neurons, operator and mode.

    Returns:
        A Classification of kind "HYBRID": KV's result names first, then K's other names.
    """
    if (k.kind, kv.kind) != ("K", "KV"):
        raise ValueError(
            f"hybrid needs a K run and a KV run, got {k.kind} and {kv.kind}"
        )
    if (k.op, k.mode, k.n_neurons) != (kv.op, kv.mode, kv.n_neurons):
        raise ValueError("hybrid needs runs of the same operator, mode and neurons")
    parts = [(kv, True), (k, False)]
    names: list[str] = []
    name_index, neuron, score = [], [], []
    for run, want_result in parts:
        is_result = np.array([n.startswith("result") for n in run.names], bool)
        take = is_result == want_result
        new_index = np.cumsum(take) - 1 + len(names)
        names.extend(n for n, t in zip(run.names, take, strict=True) if t)
        rows = take[run.name_index]
        name_index.append(new_index[run.name_index[rows]])
        neuron.append(run.neuron[rows])
        score.append(run.score[rows])
    return Classification(
        op=k.op,
        kind="HYBRID",
        mode=k.mode,
        n_neurons=k.n_neurons,
        names=tuple(names),
        name_index=np.concatenate(name_index),
        neuron=np.concatenate(neuron),
        score=np.concatenate(score),
        notes=tuple(f"KV run: {n}" for n in kv.notes)
        + tuple(f"K run: {n}" for n in k.notes),
    )


def associated(
    names: Sequence[str], op1: np.ndarray, op2: np.ndarray, op: str, *, mode: str
) -> np.ndarray:
    """Which prompts each heuristic is associated with (knockouts, paper-spec §8).

    Parity follows the official `is_associated_heuristic` / `get_relevant_prompts` with
    `range` names read as their `region` names: op1/op2/result ranges are inclusive
    (`a <= v <= b`), both-operand ranges half-open, ÷ results are true quotients (so ÷
    prompts match result values, mods and multi-values only when exactly divisible, and
    ranges on the fraction), and patterns are regular expressions on `str(v).zfill(3)`
    (where `.` also matches `-` or a decimal point, e.g. `..5` matches 1/2 = "0.5"). Clean
    uses half-open ranges, floor division and digit-wise patterns on 3-digit values.
    `*_region_*` names are accepted as well. A ÷ prompt with op2 = 0 is associated with no
    result heuristic (the official code would raise ZeroDivisionError).

    Arguments:
        names: heuristic names as `classify` emits them.
        op1: int [prompt] first operands.
        op2: int [prompt] second operands.
        op: one of `OPERATORS`.
        mode: one of `MODES`.

    Returns:
        bool [name, prompt].
    """
    _check_args(op, mode, "K")
    op1 = np.asarray(op1, np.int64)
    op2 = np.asarray(op2, np.int64)
    if op1.shape != op2.shape or op1.ndim != 1:
        raise ValueError("op1 and op2 must be 1-d arrays of the same length")
    values = _Values(op1, op2, op, mode)
    out = np.zeros((len(names), op1.size), bool)
    for i, name in enumerate(names):
        out[i] = _association(name, values)
    return out


# ---------------------------------------------------------------------------------------------
# Layout: the fixed heuristics and the sections of a neuron's emission order


@dataclasses.dataclass(frozen=True)
class _Family:
    """Fixed heuristics scored alike: one modulus or one range size of one source."""

    source: str  # "op1", "op2", "both", "result", "same"
    rule: str  # "mod", "range" or "same"
    section: int
    first_sub: int
    names: tuple[str, ...]
    modulus: int = 0
    bounds: tuple[tuple[int, int], ...] = ()


@dataclasses.dataclass(frozen=True)
class _Layout:
    """The fixed names and where every kind of entry sits in a neuron's emission order."""

    families: tuple[_Family, ...]
    names: tuple[str, ...]
    sections: dict[str, int]  # discovery sections: "op1", "op1_bottom", ..., "multi"
    n_sections: int

    @property
    def name_keys(self) -> np.ndarray:
        """[fixed name] position in a neuron's emission order (section * _SECTION + sub)."""
        return np.array(
            [
                fam.section * _SECTION + fam.first_sub + i
                for fam in self.families
                for i in range(len(fam.names))
            ],
            np.int64,
        )


def _layout(op: str, max_single_token: int, max_op: int) -> _Layout:
    families: list[_Family] = []
    sections: dict[str, int] = {}
    section = 0

    def add(source: str, rule: str, groups: list[tuple[tuple[str, ...], dict]]) -> None:
        nonlocal section
        sub = 0
        for names, extra in groups:
            families.append(_Family(source, rule, section, sub, names, **extra))
            sub += len(names)
        section += 1

    def discovery(key: str) -> None:
        nonlocal section
        sections[key] = section
        section += 1

    for source in ("op1", "op2"):
        add(source, "mod", _mod_groups(source))
        discovery(source)
        discovery(f"{source}_bottom")
        groups = []
        for size in OPERAND_RANGE_SIZES[op]:
            bounds = tuple((a, a + size) for a in range(0, max_op, size))
            groups.append((_range_names(source, bounds), {"bounds": bounds}))
        add(source, "range", groups)
    add("both", "mod", _mod_groups("both_operands"))
    groups = []
    for size in OPERAND_RANGE_SIZES[op]:
        bounds = tuple((a, a + size) for a in range(0, max_op, size))
        groups.append((_range_names("both_operands", bounds), {"bounds": bounds}))
    add("both", "range", groups)
    if op != "/":
        add("result", "mod", _mod_groups("result"))
    discovery("result")
    max_result = {"+": 2 * max_op, "-": max_op, "*": max_single_token + 1, "/": max_op}[
        op
    ]
    groups = []
    for size in RESULT_RANGE_SIZES[op]:
        starts = range(0, max_result, max(size // 3, 10))
        bounds = tuple(
            (a, a + size)
            for a in starts
            if op != "/" or f"result_range_{a}_{a + size}" not in DIVISION_DROPPED
        )
        groups.append((_range_names("result", bounds), {"bounds": bounds}))
    add("result", "range", groups)
    add("same", "same", [(("same_operand",), {})])
    if op == "/":
        discovery("multi")
    names = tuple(name for fam in families for name in fam.names)
    return _Layout(tuple(families), names, sections, section)


def _mod_groups(prefix: str) -> list[tuple[tuple[str, ...], dict]]:
    return [
        (tuple(f"{prefix}_{m}mod{n}" for m in range(n)), {"modulus": n})
        for n in MOD_BASES
    ]


def _range_names(source: str, bounds: tuple[tuple[int, int], ...]) -> tuple[str, ...]:
    prefix = "both_operands" if source == "both" else source
    return tuple(f"{prefix}_range_{a}_{b}" for a, b in bounds)


# ---------------------------------------------------------------------------------------------
# Pair-dependent rules: the k of every heuristic and the pairs it counts


def _check_args(op: str, mode: str, kind: str) -> None:
    if op not in OPERATORS:
        raise ValueError(f"operator {op!r} is not one of {OPERATORS}")
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")


def _pair_values(
    pairs: np.ndarray, op: str, max_single_token: int, max_op: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """op1, op2 and the (floor) result of every pair, checked like the official script."""
    pairs = np.asarray(pairs)
    if (
        pairs.ndim != 2
        or pairs.shape[1] != 2
        or not np.issubdtype(pairs.dtype, np.integer)
    ):
        raise ValueError(
            f"pairs must be an int array [pair, 2], got {pairs.dtype} {pairs.shape}"
        )
    op1, op2 = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    if np.any((pairs < 0) | (pairs >= max_op)):
        raise ValueError(f"operands must lie in [0, {max_op})")
    if op == "/" and np.any(op2 == 0):
        raise ValueError("division pairs must have op2 >= 1")
    result = _integer_result(op, op1, op2)
    if np.any((result < 0) | (result > max_single_token)):
        raise ValueError(f"every result must lie in [0, S={max_single_token}]")
    if np.any(result > 999) or np.any(pairs > 999):
        raise ValueError("values above 999 are not 3-digit patterns; not supported")
    return op1, op2, result


def _integer_result(op: str, op1: np.ndarray, op2: np.ndarray) -> np.ndarray:
    """op1 op op2, with floor division for ÷ (0 where op2 = 0)."""
    if op == "+":
        return op1 + op2
    if op == "-":
        return op1 - op2
    if op == "*":
        return op1 * op2
    return np.where(op2 != 0, op1 // np.where(op2 != 0, op2, 1), 0)


@dataclasses.dataclass(frozen=True)
class _Heuristic:
    """One fixed heuristic as counted: k, and the values of its source it accepts."""

    column: int  # in the fixed-score matrix (= index into `heuristic_names`)
    source: str  # key of `_Rules.values`
    k: int
    accepted: np.ndarray  # values of the source that satisfy the predicate
    bottom: bool  # also counted on the reversed ordering when check_bottom
    group: str  # "mod{n}" or "range{size}": candidates for separate histograms
    modulus: int = 0  # n of an operand or result mod (accepted = m, m + n, ...)


@dataclasses.dataclass(frozen=True)
class _Part:
    """The heuristics of one source counted on one end of the ordering, in one histogram.

    The first `reach` positions of the ordering are cut into segments at every k of the
    part; one bincount gives the histogram of (segment, neuron, value bin) of a chunk of
    neurons, and its cumulative sum over segments (the outer axis, so that the sums run
    over long contiguous rows) the count of every value among the first k positions. A
    heuristic's count is the sum of that table over its accepted bins at its own k. The bin
    of every pair is precomputed (`pair_bin`): counting is one gather along the ordering,
    one add of the (segment, row) offsets and one bincount. A per-bin part (`bin_k` set,
    see `per_bin`) has one segment and drops the positions at or past their bin's k.
    """

    source: str
    bottom: bool
    reach: int  # largest k
    value_bin: np.ndarray  # [value] bin of a source value
    width: int  # number of bins
    boundaries: (
        np.ndarray
    )  # the distinct k values, ascending; segment i ends at the i-th
    n_segments: int
    cell_segment: np.ndarray  # [cell] segment of the cells summed, grouped by heuristic
    cell_bin: np.ndarray  # [cell] bin of those cells
    starts: np.ndarray  # [heuristic] start of its cells
    columns: np.ndarray  # [heuristic] column
    bin_k: np.ndarray | None = None  # per-bin parts: [bin] k of the bin's heuristic
    # Set by `with_pairs` once the part is chosen (the per-pair arrays are large):
    pair_bin: np.ndarray | None = None  # int16 [pair] bin of the pair's source value
    segment_offset: np.ndarray | None = None  # intp [reach] segment of each position

    def with_pairs(self, pair_values: np.ndarray) -> "_Part":
        """The part with its per-pair bins and per-position segments filled in."""
        segment = np.zeros(self.reach, np.intp)  # per-bin parts: one segment
        if self.bin_k is None:
            segment[:] = np.searchsorted(
                self.boundaries, np.arange(self.reach), "right"
            )
        return dataclasses.replace(
            self,
            pair_bin=self.value_bin[pair_values].astype(np.int16),
            segment_offset=segment,
        )

    @property
    def cost(self) -> int:
        """Rough element operations per neuron: positions, table entries, summed cells."""
        if self.bin_k is not None:  # gather, k lookup, compare, offsets, mask, bincount
            return 7 * self.reach + 2 * self.width
        return (
            4 * self.reach + 3 * self.n_segments * self.width + 2 * self.cell_bin.size
        )

    def offsets(self, n_rows: int) -> np.ndarray:
        """intp [reach, row] bincount offset of every position: segment and row."""
        rows = np.arange(n_rows, dtype=np.intp) * self.width
        return (self.segment_offset * (n_rows * self.width))[:, None] + rows

    @staticmethod
    def per_bin(
        source: str, bottom: bool, counted: list[_Heuristic], pair_values: np.ndarray
    ) -> "_Part":
        """A part of heuristics that accept disjoint value sets, each at its own k: the
        bin of a value is its heuristic (or a last, dropped bin), and a position counts
        only while it is below its bin's k. One segment, no cumulative table."""
        n_values = int(pair_values.max(initial=0)) + 1
        width = len(counted) + 1
        value_bin = np.full(n_values, width - 1, np.intp)
        for i, h in enumerate(counted):
            value_bin[h.accepted] = i
        bin_k = np.array([h.k for h in counted] + [0], np.intp)
        reach = int(bin_k.max())
        return _Part(
            source=source,
            bottom=bottom,
            reach=reach,
            value_bin=value_bin,
            width=width,
            boundaries=np.unique(bin_k[:-1]),
            n_segments=1,
            cell_segment=np.zeros(len(counted), np.intp),
            cell_bin=np.arange(len(counted)),
            starts=np.arange(len(counted)),
            columns=np.array([h.column for h in counted]),
            bin_k=bin_k,
        )

    @staticmethod
    def build(
        source: str, bottom: bool, heuristics: list[_Heuristic], pair_values: np.ndarray
    ) -> "list[_Part]":
        """The cheaper of one segmented part and per-bin parts (when the heuristics'
        value sets can be split into few disjoint groups) for these heuristics."""
        counted = [h for h in heuristics if h.k > 0 and h.accepted.size > 0]
        if not counted:
            return []
        options = [[_Part.segmented(source, bottom, counted, pair_values)]]
        groups: list[list[_Heuristic]] = []  # greedy split into disjoint value sets
        used: list[set[int]] = []
        for h in counted:
            values = set(h.accepted.tolist())
            i = next((i for i, u in enumerate(used) if not u & values), len(groups))
            if i == _PER_BIN_GROUPS:
                break  # too many groups: per-bin parts are not considered
            if i == len(groups):
                groups.append([])
                used.append(set())
            groups[i].append(h)
            used[i] |= values
        else:
            options.append(
                [_Part.per_bin(source, bottom, g, pair_values) for g in groups]
            )
        return min(options, key=lambda parts: sum(p.cost for p in parts))

    @staticmethod
    def segmented(
        source: str, bottom: bool, counted: list[_Heuristic], pair_values: np.ndarray
    ) -> "_Part":
        """One segmented part: value bins between the heuristics' interval ends, the
        residues of a single modulus, or the values themselves; a segment per distinct k."""
        n_values = int(pair_values.max(initial=0)) + 1
        firsts = np.array([h.accepted[0] for h in counted])
        ends = np.array([h.accepted[-1] + 1 for h in counted])
        moduli = {h.modulus for h in counted}
        if np.array_equal(ends - firsts, [h.accepted.size for h in counted]):
            # Every heuristic accepts an interval of values: bins between interval ends.
            edges = np.unique(np.concatenate([[0, n_values], firsts, ends]))
            bins = np.searchsorted(edges, np.arange(n_values), side="right") - 1
            lows, highs = np.searchsorted(edges, firsts), np.searchsorted(edges, ends)
            bin_sets = [
                np.arange(a, b)
                for a, b in zip(lows.tolist(), highs.tolist(), strict=True)
            ]
            width = edges.size - 1
        elif len(moduli) == 1 and 0 not in moduli:
            (width,) = moduli  # one modulus n: the residue is the bin
            bins = np.arange(n_values) % width
            bin_sets = [h.accepted[:1] for h in counted]
        else:  # mods of several moduli: every value is its own bin
            bins, bin_sets, width = None, [h.accepted for h in counted], n_values
        boundaries = np.unique([h.k for h in counted])
        reach = int(boundaries[-1])
        n_segments = len(boundaries)
        segments = [np.searchsorted(boundaries, h.k) for h in counted]
        sizes = np.array([kept.size for kept in bin_sets])
        return _Part(
            source=source,
            bottom=bottom,
            reach=reach,
            value_bin=np.arange(n_values) if bins is None else bins,
            width=width,
            boundaries=boundaries,
            n_segments=n_segments,
            cell_segment=np.repeat(segments, sizes),
            cell_bin=np.concatenate(bin_sets),
            starts=np.cumsum(sizes) - sizes,
            columns=np.array([h.column for h in counted]),
        )


@dataclasses.dataclass(frozen=True)
class _Rules:
    """Everything the scoring needs that does not depend on the neuron."""

    op: str
    mode: str
    max_op: int
    values: dict[str, np.ndarray]  # source -> [pair] value in [0, n_values)
    parts: tuple[_Part, ...]
    column_k: np.ndarray  # [fixed name] k (0: score 0)
    column_bottom: np.ndarray  # [fixed name] scored on both ends with check_bottom
    pattern_k: int
    sections: dict[str, int]

    def reads(self, check_bottom: bool) -> tuple[int, int]:
        """How many positions the scoring reads at the top and at the bottom of the
        ordering: the largest k of the scored parts, the pattern lists and the ÷
        multi-value list."""
        top = [p.reach for p in self.parts if not p.bottom] + [self.pattern_k]
        if self.op == "/":
            top.append(MULTI_VALUE_TOP)
        bottom = [p.reach for p in self.parts if p.bottom] + [self.pattern_k]
        return max(top), max(bottom) if check_bottom else 0

    @staticmethod
    def build(
        layout: _Layout,
        op: str,
        op1: np.ndarray,
        op2: np.ndarray,
        result: np.ndarray,
        max_single_token: int,
        max_op: int,
        mode: str,
    ) -> "_Rules":
        ks = _KFormulas(op1.size, max_op, mode)
        values = {"op1": op1, "op2": op2, "result": result, "same": (op1 != op2) * 1}
        heuristics: list[_Heuristic] = []
        column = 0
        for fam in layout.families:
            found = _family_heuristics(fam, column, values, ks, op, max_single_token)
            heuristics += found
            column += len(fam.names)
        parts = []
        by_source: dict[str, list[_Heuristic]] = {}
        for h in heuristics:
            by_source.setdefault(h.source, []).append(h)
        for source, group in by_source.items():
            parts += _cheapest_parts(source, False, group, values[source])
            low = [h for h in group if h.bottom]
            parts += _cheapest_parts(source, True, low, values[source])
        column_k = np.zeros(column, np.int64)
        column_bottom = np.zeros(column, bool)
        for h in heuristics:
            column_k[h.column], column_bottom[h.column] = h.k, h.bottom
        return _Rules(
            op=op,
            mode=mode,
            max_op=max_op,
            values={name: v.astype(np.int16) for name, v in values.items()},  # < 1000
            parts=tuple(parts),
            column_k=column_k,
            column_bottom=column_bottom,
            pattern_k=ks.pattern(),
            sections=layout.sections,
        )


_RULES_CACHE: dict[tuple, _Rules] = {}
_RULES_CACHE_SIZE = 8


def _cached_rules(
    layout: _Layout,
    op: str,
    op1: np.ndarray,
    op2: np.ndarray,
    result: np.ndarray,
    max_single_token: int,
    max_op: int,
    mode: str,
) -> _Rules:
    """`_Rules.build`, reused across calls on the same pairs (a K run and its KV run, or the
    chunks of a large run): keyed by the operator, S, max_op, mode and a digest of the
    operands. The rules hold both ends; `check_bottom` only selects the parts scored."""
    digest = hashlib.blake2b(np.stack([op1, op2]).tobytes(), digest_size=16).digest()
    key = (op, max_single_token, max_op, mode, digest)
    rules = _RULES_CACHE.pop(key, None)
    if rules is None:
        rules = _Rules.build(
            layout, op, op1, op2, result, max_single_token, max_op, mode
        )
    _RULES_CACHE[key] = rules  # most recently used last
    while len(_RULES_CACHE) > _RULES_CACHE_SIZE:
        _RULES_CACHE.pop(next(iter(_RULES_CACHE)))
    return rules


@dataclasses.dataclass(frozen=True)
class _KFormulas:
    """The official k formulas: float64 left to right (parity) or exact floors (clean)."""

    n_pairs: int
    max_op: int
    mode: str

    def _scaled(self, count: int) -> int:
        """`int(count * (N / max_op**2))` (parity) or `floor(count * N / max_op**2)`."""
        if self.mode == "parity":
            return int(count * (self.n_pairs / self.max_op**2))
        return count * self.n_pairs // self.max_op**2

    def operand_mod(self, n: int) -> int:
        return self._scaled((self.max_op // n) * self.max_op)

    def pair_mod(self, n: int) -> int:
        return self._scaled((self.max_op // n) ** 2)

    def pattern(self) -> int:
        return self._scaled(self.max_op)

    def same_operand_mul(self, max_single_token: int) -> int:
        if self.mode == "parity":
            return int(max_single_token**0.5)
        return math.isqrt(max_single_token)


def _cheapest_parts(
    source: str, bottom: bool, heuristics: list[_Heuristic], pair_values: np.ndarray
) -> list[_Part]:
    """The cheapest split of a source's heuristics into parts: all in one; the mods in one
    and each range size in its own; or every modulus and range size in its own (each group
    segmented or per-bin, see `_Part.build`). Cost = `_Part.cost`, per neuron."""
    families: dict[str, list[_Heuristic]] = {}
    for h in heuristics:
        families.setdefault(h.group, []).append(h)
    mods = [h for h in heuristics if h.group.startswith("mod")]
    by_kind = [mods] if mods else []
    by_kind += [g for name, g in families.items() if not name.startswith("mod")]
    options = []
    for groups in ([heuristics], by_kind, list(families.values())):
        options.append(
            [p for g in groups for p in _Part.build(source, bottom, g, pair_values)]
        )
    best = min(options, key=lambda parts: sum(p.cost for p in parts))
    return [p.with_pairs(pair_values) for p in best]


def _family_heuristics(
    fam: _Family,
    column: int,
    values: dict[str, np.ndarray],
    ks: _KFormulas,
    op: str,
    max_single_token: int,
) -> list[_Heuristic]:
    """The heuristics of one layout family, adding the sources they need to `values`."""
    max_op = ks.max_op
    op1, op2 = values["op1"], values["op2"]
    if fam.rule == "same":
        k = ks.same_operand_mul(max_single_token) if op == "*" else max_op
        return [_Heuristic(column, "same", k, np.array([0]), False, "same")]
    if fam.rule == "mod":
        n = fam.modulus
        if fam.source == "both":
            source = f"both_mod{n}"
            values[source] = np.where(op1 % n == op2 % n, op1 % n, n)
            k, sets = ks.pair_mod(n), [np.array([m]) for m in range(n)]
        else:
            source = fam.source
            top = int(values[source].max(initial=0)) + 1
            k = ks.operand_mod(n) if source != "result" else ks.pair_mod(n)
            if source == "result" and op in _CAPPED_OPS:
                k = min(k, max_op)
            sets = [np.arange(m, top, n) for m in range(n)]
        return [
            _Heuristic(column + m, source, k, sets[m], True, f"mod{n}", n)
            for m in range(n)
        ]
    # ranges [a, b)
    if fam.source == "both":
        size = fam.bounds[0][1] - fam.bounds[0][0]
        source = f"both_range{size}"
        same_bucket = op1 // size == op2 // size
        values[source] = np.where(same_bucket, op1 // size, max_op // size + 1)
    else:
        source = fam.source
    # Parity: the official k cache has no operand index, so op2 ranges reuse op1's count.
    counted = "op1" if (fam.source == "op2" and ks.mode == "parity") else fam.source
    out = []
    for i, (a, b) in enumerate(fam.bounds):
        if fam.source == "both":
            inside = (op1 >= a) & (op1 < b) & (op2 >= a) & (op2 < b)
            accepted = np.array([a // (b - a)])
        else:
            inside = (values[counted] >= a) & (values[counted] < b)
            accepted = np.arange(a, min(b, int(values[source].max(initial=0)) + 1))
        k = int(np.count_nonzero(inside))
        if fam.source == "result" and op in _CAPPED_OPS:
            k = min(k, max_op)
        bottom = fam.source != "result"
        group = f"range{b - a}"
        out.append(_Heuristic(column + i, source, k, accepted, bottom, group))
    return out


# ---------------------------------------------------------------------------------------------
# Scoring a chunk of neurons


@dataclasses.dataclass(frozen=True)
class _Found:
    """Discovered entries (patterns, values, multi-values), one per row of these arrays."""

    neuron: np.ndarray
    key: np.ndarray  # place in the neuron's emission order: section * _SECTION + sub
    name: np.ndarray  # object array of str
    score: np.ndarray

    def shifted(self, offset: int) -> "_Found":
        return dataclasses.replace(self, neuron=self.neuron + offset)

    @staticmethod
    def concatenate(parts: Sequence["_Found"]) -> "_Found":
        if not parts:
            return _Found(
                *(np.zeros(0, t) for t in (np.int64, np.int64, object, float))
            )
        fields = [f.name for f in dataclasses.fields(_Found)]
        return _Found(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))


@dataclasses.dataclass(frozen=True)
class _Chunk:
    fixed: np.ndarray  # float64 [row, fixed name]
    found: _Found


def _score_chunk(
    maps: np.ndarray,
    rules: _Rules,
    check_bottom: bool,
    offsets: dict[int, np.ndarray],
) -> _Chunk:
    """Scores of one chunk of rows. `offsets` caches `_Part.offsets` across the chunks of
    a call (index of the part -> offsets for the chunk's number of rows)."""
    top, bottom = rules.reads(check_bottom)
    order = _descending_order(maps, top, bottom)
    n_rows, n = order.shape
    counts = {False: np.zeros((n_rows, rules.column_k.size), np.int64)}
    if check_bottom:
        counts[True] = np.zeros_like(counts[False])
    # [position, row] pair indices along each end: every part reads a contiguous prefix
    ends = {False: np.ascontiguousarray(order[:, :top].T)}
    if check_bottom:
        ends[True] = np.ascontiguousarray(order[:, n - bottom :][:, ::-1].T)
    for i, part in enumerate(rules.parts):
        if part.bottom and not check_bottom:
            continue
        if i not in offsets or offsets[i].shape[1] != n_rows:
            offsets[i] = part.offsets(n_rows)
        found = _part_counts(part, ends[part.bottom], offsets[i])
        counts[part.bottom][:, part.columns] = found
    best = counts[False]
    if check_bottom:
        best = np.where(rules.column_bottom, np.maximum(best, counts[True]), best)
    k = rules.column_k
    fixed = np.divide(best, k, out=np.zeros(best.shape), where=k > 0)
    found = [_patterns_of(order, rules, source, False) for source in ("op1", "op2")]
    if check_bottom:
        found += [_patterns_of(order, rules, source, True) for source in ("op1", "op2")]
    found.append(_patterns_of(order, rules, "result", False))
    if rules.op == "/":
        found.append(_multi_values(order, rules))
    return _Chunk(fixed, _Found.concatenate(found))


_LOW, _HIGH = (0, 1) if sys.byteorder == "little" else (1, 0)  # uint32 halves of uint64


def _descending_order(maps: np.ndarray, top: int, bottom: int) -> np.ndarray:
    """`np.argsort(-maps, axis=1, kind="stable")` (descending values, ties by pair index)
    where any rule reads it: the first `top` and the last `bottom` positions. The pairs in
    between are in arbitrary order.

    float32 maps (and any maps that float32 holds exactly) become packed uint64 keys: the
    high 32 bits order the values (descending), the low 32 bits are the pair index, so the
    keys are distinct and a plain (SIMD) sort gives exactly the stable order, -0.0 and 0.0
    tied. When the two ends leave pairs out, a (SIMD) partition first puts the ends' pairs
    in place and only they are sorted. Other maps take the full stable argsort.

    Returns:
        intp [row, pair] pair indices.
    """
    single = maps.astype(np.float32, copy=False)
    if maps.dtype != np.float32 and not np.array_equal(single, maps):
        return np.argsort(-maps, axis=1, kind="stable")
    n_rows, n = maps.shape
    bits = (single + np.float32(0.0)).view(np.uint32)  # -0.0 + 0.0 = +0.0
    # Descending float order as ascending unsigned: negatives keep their bits (larger
    # magnitude, larger key), non-negatives flip their 31 low bits (below every negative).
    flip = (bits >> np.uint32(31)) - np.uint32(1)  # 0 for negatives, all ones otherwise
    flip &= np.uint32(0x7FFFFFFF)
    keys = np.empty((n_rows, n), np.uint64)
    halves = keys.view(np.uint32).reshape(n_rows, n, 2)
    np.bitwise_xor(bits, flip, out=halves[..., _HIGH])
    halves[..., _LOW] = np.arange(n, dtype=np.uint32)
    if top + bottom >= n:
        keys.sort(axis=1)
    else:
        keys.partition(top, axis=1)
        keys[:, :top].sort(axis=1)
        if bottom:
            rest = keys[:, top:]
            rest.partition(rest.shape[1] - bottom, axis=1)
            keys[:, n - bottom :].sort(axis=1)
    return halves[..., _LOW].astype(np.intp)


def _part_counts(part: _Part, positions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """[row, heuristic of the part] counts among each heuristic's first k positions.

    Arguments:
        part: the heuristics counted together.
        positions: intp [>= reach, row] pair indices along the part's end of the ordering.
        offsets: `part.offsets(row)`.
    """
    n_rows = positions.shape[1]
    bins = np.take(part.pair_bin, positions[: part.reach])  # int16
    keys = offsets + bins
    if part.bin_k is not None:  # positions at or past their bin's k go to the last bin
        outside = part.bin_k[bins] <= _position_column(part.reach)
        np.copyto(keys, offsets[0] + (part.width - 1), where=outside)
    hist = np.bincount(keys.ravel(), minlength=part.n_segments * n_rows * part.width)
    table = hist.reshape(part.n_segments, n_rows, part.width)
    for segment in range(1, part.n_segments):  # cumulative over segments, row by row
        np.add(table[segment], table[segment - 1], out=table[segment])
    cells = table[part.cell_segment, :, part.cell_bin]  # [cell, row]
    return np.add.reduceat(cells, part.starts, axis=0).T


_POSITIONS = np.zeros((0, 1), np.intp)


def _position_column(n: int) -> np.ndarray:
    """intp [n, 1] 0..n-1 (a cached column, so comparisons broadcast over rows)."""
    global _POSITIONS
    if _POSITIONS.shape[0] < n:
        _POSITIONS = np.arange(max(n, 2 * _POSITIONS.shape[0]), dtype=np.intp)[:, None]
    return _POSITIONS[:n]


def _patterns_of(order: np.ndarray, rules: _Rules, source: str, bottom: bool) -> _Found:
    """The discovered `{source}_value_*` / `{source}_pattern_*` entries of every row."""
    k = rules.pattern_k
    n = order.shape[1]
    part = order[:, n - k :][:, ::-1] if bottom else order[:, :k]
    rows, sub, codes, counts = _significant_masks(
        rules.values[source][part], k, rules.mode
    )
    names = _code_names(source)[codes]
    if source == "result" and rules.op == "/":
        keep = _CODE_MASK[codes] == _FULL_MASK  # ÷ keeps result values, not patterns
        rows, sub, codes, counts, names = (
            x[keep] for x in (rows, sub, codes, counts, names)
        )
    section = rules.sections[f"{source}_bottom" if bottom else source]
    return _Found(rows, section * _SECTION + sub, names, counts / k)


def _significant_masks(
    values: np.ndarray, k: int, mode: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The official `most_significant_wildcard_patterns(values, k // 10, 5)` of every row,
    minus the range-like masks.

    Arguments:
        values: int [row, k] values in list order.
        k: the pattern k (scores are count / k).
        mode: parity drops range-like masks after taking the first 5; clean before.

    Returns:
        `(row, sub, code, count)` of every kept mask, `sub` its place in the row's list.
    """
    n_rows = values.shape[0]
    codes = _WILDCARD_CODES[values]  # [row, k, mask]
    per_row = codes[0].size
    flat = (codes.reshape(n_rows, -1) + _CODE_SPAN * np.arange(n_rows)[:, None]).ravel()
    all_counts = np.bincount(flat, minlength=n_rows * _CODE_SPAN)
    keys = np.flatnonzero(all_counts >= max(k // 10, 1))
    seen = np.full(all_counts.size, per_row)  # first-seen position in the row's list
    np.minimum.at(seen, flat, np.tile(np.arange(per_row), n_rows))
    rows, code = keys // _CODE_SPAN, keys % _CODE_SPAN
    counts, first = all_counts[keys], seen[keys]
    mask = _CODE_MASK[code]
    keep = np.ones(keys.size, bool)
    range_like = ((mask & 1) == 1) & ((mask & 4) == 0)  # "1.." and "12."
    if mode == "clean":
        keep &= ~range_like
    rows, code, counts, first, mask = (
        x[keep] for x in (rows, code, counts, first, mask)
    )
    order = np.lexsort((first, -_FIXED_DIGITS[mask], -counts, rows))
    rows, code, counts, mask = rows[order], code[order], counts[order], mask[order]
    place = np.arange(rows.size) - np.searchsorted(rows, rows)
    keep = place < PATTERNS_KEPT
    if mode == "parity":
        keep &= ~(((mask & 1) == 1) & ((mask & 4) == 0))
    return rows[keep], place[keep], code[keep], counts[keep]


_CODE_NAME_CACHE: dict[str, np.ndarray] = {}


def _code_names(source: str) -> np.ndarray:
    """Object array: wildcard code -> `{source}_value_ddd` or `{source}_pattern_p`."""
    if source not in _CODE_NAME_CACHE:
        names = []
        for mask in _MASKS:
            kind = "value" if mask == _FULL_MASK else "pattern"
            for number in range(10 ** len(_KEPT[mask])):
                kept = iter(f"{number:0{len(_KEPT[mask])}d}")
                text = "".join(
                    next(kept) if j in _KEPT[mask] else "." for j in range(3)
                )
                names.append(f"{source}_{kind}_{text}")
        _CODE_NAME_CACHE[source] = np.array(names, object)
    return _CODE_NAME_CACHE[source]


def _multi_values(order: np.ndarray, rules: _Rules) -> _Found:
    """÷: the smallest q whose q most frequent top-1000 results hold >= 95 % of them."""
    part = order[:, :MULTI_VALUE_TOP]
    n_rows, total = part.shape
    bins = rules.max_op
    keys = rules.values["result"][part] + bins * np.arange(n_rows)[:, None]
    hist = np.bincount(keys.ravel(), minlength=n_rows * bins).reshape(n_rows, bins)
    by_count = np.argsort(-hist, axis=1, kind="stable")  # ties: smaller result first
    top = np.take_along_axis(hist, by_count[:, : max(MULTI_VALUE_SIZES)], axis=1)
    if rules.mode == "parity":  # torch: float32 fractions, float32 sums, float32(0.95)
        fractions = top.astype(np.float32) / np.float32(total)
        mass = np.cumsum(fractions, axis=1, dtype=np.float32)
        reached = mass >= np.float32(MULTI_VALUE_MASS)
        scores = mass.astype(np.float64)
    else:
        mass = np.cumsum(top, axis=1)
        reached = 20 * mass >= 19 * total  # mass / total >= 0.95, exactly
        scores = mass / max(total, 1)
    sizes = np.array(MULTI_VALUE_SIZES)
    hit = reached[:, sizes - 1] & ~reached[:, sizes - 2]  # at most one q per row
    rows, which = np.nonzero(hit)
    qs = sizes[which]
    names = np.array(
        [
            f"result_multi_value_{q}={sorted(by_count[r, :q].tolist())}"
            for r, q in zip(rows.tolist(), qs.tolist(), strict=True)
        ],
        object,
    )
    keep = ~np.isin(names, DIVISION_DROPPED) if names.size else np.zeros(0, bool)
    section = rules.sections["multi"]
    rows, qs, names = rows[keep], qs[keep], names[keep]
    return _Found(
        rows,
        np.full(rows.size, section * _SECTION),
        names,
        scores[rows, qs - 1],
    )


# ---------------------------------------------------------------------------------------------
# Assembling the official dictionary order, with the × post-processing


def _assemble(
    layout: _Layout,
    rules: _Rules,
    fixed: np.ndarray,
    found: _Found,
    n_rows: int,
    kind: str,
) -> Classification:
    """The entries in the official dictionary order, without sorting the fixed entries.

    Names come in the order of their first entry (the official insertion order); within a
    name, entries by neuron and then by place in the neuron's emission order. A fixed name
    has exactly one entry per neuron, so its block is the neurons in order; only the few
    discovered entries are sorted. Every entry is written straight to its final place.
    """
    n_fixed = len(layout.names)
    found_names, found_ids = np.unique(found.name.astype(str), return_inverse=True)
    found_ids = found_ids.reshape(-1) + n_fixed
    names = np.array(list(layout.names) + found_names.tolist(), object)
    neuron_span = layout.n_sections * _SECTION
    found_key = found.key + found.neuron * neuron_span
    # Found entries sorted by (name, key): each name's entries are then contiguous.
    by_name = np.lexsort((found_key, found_ids))
    f_ids, f_key = found_ids[by_name], found_key[by_name]
    f_first = np.r_[True, f_ids[1:] != f_ids[:-1]] if f_ids.size else f_ids.astype(bool)
    first = np.empty(names.size, np.int64)
    first[:n_fixed] = (
        layout.name_keys
    )  # neuron 0's entry (or, without rows, layout order)
    first[f_ids[f_first]] = f_key[f_first]
    by_first = np.argsort(first, kind="stable")
    position = np.empty(names.size, np.int64)
    position[by_first] = np.arange(names.size)
    sizes = np.bincount(found_ids, minlength=names.size)
    sizes[:n_fixed] = n_rows
    start = np.zeros(names.size, np.int64)
    start[by_first] = np.cumsum(sizes[by_first]) - sizes[by_first]
    total = int(sizes.sum())
    name_index = np.empty(total, np.int64)
    neuron = np.empty(total, np.int64)
    key = np.empty(total, np.int64)
    score = np.empty(total, np.float64)
    rows = np.arange(n_rows)[:, None]
    at = start[:n_fixed] + rows  # [row, fixed name] -> place
    name_index[at] = position[:n_fixed]
    neuron[at] = rows
    key[at] = layout.name_keys + rows * neuron_span
    score[at] = fixed
    rank = np.arange(f_ids.size) - np.searchsorted(f_ids, f_ids)
    at = start[f_ids] + rank
    name_index[at] = position[f_ids]
    neuron[at] = found.neuron[by_name]
    key[at] = f_key
    score[at] = found.score[by_name]
    names = names[by_first]
    notes: tuple[str, ...] = ()
    if rules.op == "*":
        notes = _zero_cancelled(
            names, name_index, neuron, key, score, n_rows, rules.mode
        )
    return Classification(
        op=rules.op,
        kind=kind,
        mode=rules.mode,
        n_neurons=n_rows,
        names=tuple(names.tolist()),
        name_index=name_index,
        neuron=neuron,
        score=score,
        notes=notes,
    )


def _zero_cancelled(
    names: np.ndarray,
    name_id: np.ndarray,
    neuron: np.ndarray,
    key: np.ndarray,
    score: np.ndarray,
    n_rows: int,
    mode: str,
) -> tuple[str, ...]:
    """× post-processing, in place on `score`: for neurons whose `result_value_000` score is
    1, zero their zero-related mods and patterns (parity: only the first entry per list)."""
    index = {name: i for i, name in enumerate(names.tolist())}
    if "result_value_000" not in index:
        if mode == "parity":
            return (
                "x post-processing: no neuron has a result_value_000 entry; the official "
                "classifier raises KeyError('result_value_000') here (treated as a no-op)",
            )
        return ()
    value_000 = (name_id == index["result_value_000"]) & (score == 1.0)
    zeroed = np.zeros(n_rows, bool)
    zeroed[neuron[value_000]] = True
    cancel = np.array([index[n] for n in ZERO_CANCELLED if n in index])
    hits = np.flatnonzero(np.isin(name_id, cancel) & zeroed[neuron])
    if mode == "parity":  # `list.index`: the neuron's first entry in each list only
        hits = hits[np.lexsort((key[hits], name_id[hits]))]
        group = name_id[hits] * n_rows + neuron[hits]
        hits = hits[np.r_[True, group[1:] != group[:-1]]] if hits.size else hits
    score[hits] = 0.0
    return ()


# ---------------------------------------------------------------------------------------------
# Prompt <-> heuristic association (paper-spec §8)

_NAME_FORMS = (
    ("mod", re.compile(r"(op1|op2|result)_(\d+)mod(\d+)")),
    ("both_mod", re.compile(r"both_operands_(\d+)mod(\d+)")),
    (
        "range",
        re.compile(r"(op1|op2|result|both_operands)_(?:range|region)_(\d+)_(\d+)"),
    ),
    ("value", re.compile(r"(op1|op2|result)_value_(\d+)")),
    ("pattern", re.compile(r"(op1|op2|result)_pattern_([0-9.]{3})")),
    ("multi", re.compile(r"result_multi_value_\d+=\[(\d+(?:, *\d+)*)\]")),
    ("same", re.compile(r"same_operand")),
)
_MINUS, _POINT = 10, 11  # character codes next to the digits 0..9


class _Values:
    """The operands and results of the prompts, as each mode measures them.

    Attributes:
        true_division: parity ÷ (results are true quotients).
        defined: [prompt] has a result (no division by zero).
        result: [prompt] integer result, the floor quotient for ÷.
        exact: [prompt] integer comparisons of the result can hold: parity ÷ compares the
            true quotient, which is an integer only when op2 divides op1.
    """

    def __init__(self, op1: np.ndarray, op2: np.ndarray, op: str, mode: str):
        self.op1, self.op2, self.mode = op1, op2, mode
        self.true_division = op == "/" and mode == "parity"
        self.defined = op2 != 0 if op == "/" else np.ones(op1.shape, bool)
        self.result = _integer_result(op, op1, op2)
        self.exact = self.defined
        if self.true_division:
            self.exact = self.defined & (op1 % np.where(op2 != 0, op2, 1) == 0)

    def measured(self, source: str) -> np.ndarray:
        if source == "result":
            return self.result
        return self.op1 if source == "op1" else self.op2

    def characters(self, source: str) -> tuple[np.ndarray, np.ndarray]:
        """`str(v).zfill(3)` as character codes [prompt, 3] and whether it has 3 characters
        (parity), or the 3 digits of values in [0, 999] (clean)."""
        if source == "result" and self.true_division:
            a, b = self.op1, np.where(self.op2 != 0, self.op2, 1)
            # a/b prints with 3 characters ("d.d") iff it is a whole number of tenths < 10
            tenths = 10 * a // b
            ok = self.defined & (10 * a % b == 0) & (tenths < 100)
            chars = np.stack(
                [tenths // 10, np.full(a.shape, _POINT), tenths % 10], axis=1
            )
            return chars, ok
        v = self.measured(source)
        ok = (v >= 0) & (v <= 999)
        digits = np.abs(v)
        chars = np.stack([digits // 100 % 10, digits // 10 % 10, digits % 10], axis=1)
        if self.mode == "parity":  # "-05", "-42"
            negative = (v < 0) & (v >= -99)
            chars[negative, 0] = _MINUS
            ok = ok | negative
        if source == "result":
            ok &= self.defined
        return chars, ok


def _association(name: str, values: _Values) -> np.ndarray:
    for form, pattern in _NAME_FORMS:
        match = pattern.fullmatch(name)
        if match is not None:
            return _associate(form, match.groups(), values)
    raise ValueError(f"unknown heuristic name {name!r}")


def _associate(form: str, groups: tuple[str, ...], values: _Values) -> np.ndarray:
    a, b = values.op1, values.op2
    if form == "same":
        return a == b
    if form == "both_mod":
        m, n = int(groups[0]), int(groups[1])
        return (a % n == m) & (b % n == m)
    if form == "range" and groups[0] == "both_operands":
        lo, hi = int(groups[1]), int(groups[2])
        return (a >= lo) & (a < hi) & (b >= lo) & (b < hi)
    if form == "pattern":
        chars, ok = values.characters(groups[0])
        for j, c in enumerate(groups[1]):
            if c != ".":
                ok = ok & (chars[:, j] == int(c))
        return ok
    source = groups[0] if form != "multi" else "result"
    v = values.measured(source)
    exact = values.exact if source == "result" else np.ones(v.shape, bool)
    if form == "mod":
        m, n = int(groups[1]), int(groups[2])
        return exact & (v % n == m)
    if form == "value":
        return exact & (v == int(groups[1]))
    if form == "multi":
        return exact & np.isin(v, [int(x) for x in groups[0].split(",")])
    lo, hi = int(groups[1]), int(groups[2])
    if values.mode == "clean":
        inside = (v >= lo) & (v < hi)
    elif source == "result" and values.true_division:  # lo <= a / b <= hi, exactly
        inside = (a >= lo * b) & (a <= hi * b)
    else:
        inside = (v >= lo) & (v <= hi)
    return inside & (values.defined if source == "result" else True)
