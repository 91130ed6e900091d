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
  `np.argsort(-maps, axis=1, kind="stable")` with no tie handling. Only what a rule reads
  is ordered (`_order_steps`): a rule counting the first k positions needs only the set
  of pairs before k, so the keys are SIMD-partitioned at those "cuts" where they are
  sparse (far from the ends) and sorted where they are dense or read in order (the
  pattern lists). Keys are built and ordered a few rows at a time, while they stay in
  cache, then transposed into [position, row] arrays. Where rank parts are used, one
  scatter gives every pair its rank.
* fixed heuristics: every value a heuristic looks at (op1, op2, the result, "both operands
  are r mod n", ...) has a precomputed bin per pair. The heuristics of a source are counted
  in "parts" of two kinds. A position part (`_Part`) reads the ordering: a segmented one
  cuts the first positions at every k it needs, gathers the pairs' bins (one `take` over a
  [position, row] array, so each part reads a contiguous prefix), adds the (segment, row)
  offsets and takes one bincount per chunk of neurons; summing the (segment, row, bin)
  table over segments gives every heuristic's count at its own k. A per-bin one
  (heuristics with disjoint value sets, each at its own k) drops positions at or past
  their bin's k instead (sends them to a bin no heuristic reads, with integer arithmetic
  on the gathered per-pair k). A rank part (`_RankPart`) reads the ranks instead, laid
  out by the source's values: one comparison with a per-pair rank bound and one sum over
  contiguous blocks, 8 pairs per uint64 word (`_ByteBlocks`), count disjoint intervals
  (the ranges of one size) or the values of one k (the mods of one modulus); it costs n
  per neuron whatever the ks, so it wins when the ks are large. How a source's heuristics
  are split into parts, and of which kind, is chosen once per pair set and `check_bottom`
  by a cost model (`_NS_*`, `_Plan.choose`; a source keeps rank parts only if they save
  more than laying out its ranks costs).
* discovered patterns: per row, the (wildcard code, list place) keys of the first k values
  are sorted into runs (or, for very long lists, counted in a [row, code] table), which
  give every code's count and first place; one rank key per code then orders them as the
  official sort does and a row-wise partition keeps the first 5.
* assembly: fixed names have one entry per neuron and come in layout order, so their
  entries are copied run by run from the [name, row] score matrix; only the few discovered
  entries (integer name ids until the end) are sorted. The × post-processing edits the
  matrix and the discovered scores before that.
* set-up (layout, k formulas, parts, plans) is cached per (operator, S, max_op, mode,
  digest of the pairs), for both ends, so a K run and its KV run share it; large work
  arrays, the [name, row] score matrix included, are reused across chunks and calls
  (`_Scratch`), and the result's entry arrays are one allocation: fresh memory costs a
  page fault per 4 kB.

Neurons are processed in chunks of rows only to bound memory.
"""

import dataclasses
import functools
import hashlib
import math
import re
import sys
import threading
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

_PER_BIN_GROUPS = 4  # at most this many per-bin or rank parts stand in for one part
# Cost model of the counting (`_Part.cost`, `_RankPart.cost`, `_Plan.choose`): nanoseconds
# per neuron, fitted to timings of the parts of all four operators (one CPU core).
_NS_POSITION = 4.5  # segmented part, per position: gather, add the offset, bincount
_NS_PER_BIN_POSITION = 6.0  # per-bin part, per position (also the pair's k, the mask)
_NS_TABLE = 3.0  # per (segment, bin) table entry: zeroing, cumulative sum
_NS_CELL = 2.0  # per table cell summed one by one (fancy gather and reduceat)
_NS_PRODUCT = 0.2  # per (bin, heuristic) of a membership product of a table
_NS_RANK_PAIR = 0.3  # rank part, per pair: compare with the bound, sum 8 at a time
_NS_BLOCK = 17.0  # rank part, per block: its words' lanes and edges, membership
_NS_RANK = 3.5  # per ranked position: the rank scatter (once per chunk)
_NS_LAYOUT = 1.5  # per pair: the ranks laid out by one source's values (once per chunk)
_NS_CALLS = 20000.0  # per part (or product) and chunk: the numpy calls themselves
_NS_PARTITION = 0.9  # per key of a region partitioned (ordering, `_order_steps`)
_NS_SORT = 0.42  # per key and log2(region size) of a region sorted
_NS_STEP = 2500.0  # per partition or sort call (on the rows ordered together)
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
    codes = np.empty((values.size, len(_MASKS)), np.int32)
    for i, mask in enumerate(_MASKS):
        kept = _KEPT[mask]
        number = sum(digits[j] * 10 ** (len(kept) - 1 - p) for p, j in enumerate(kept))
        codes[:, i] = _MASK_BASE[mask] + number
    return codes


_WILDCARD_CODES = _wildcard_codes()
# Lists of at least this many places are counted by `_code_table`, shorter ones by
# `_code_runs`; the (SIMD) sort of the runs was measured faster up to k = 1000 values
# (7000 places), the longest lists 3-digit operands give.
_TABLE_PLACES = 7001
_ORDER_ELEMENTS = 1 << 17  # keys ordered together (their 8-byte keys stay in cache),
_ORDER_MIN_ROWS = 16  # but at least this many rows (fewer make the transposes slow)
_CHUNK_ELEMENTS = 1 << 19  # rows per chunk = this // n_pairs, but at least:
_CHUNK_MIN_ROWS = 16  # every chunk costs about a thousand numpy calls


def _chunk_rows(n_pairs: int) -> int:
    """Neurons (map rows) scored together."""
    return max(_CHUNK_MIN_ROWS, _CHUNK_ELEMENTS // max(n_pairs, 1))


class _Scratch(threading.local):
    """Work arrays reused across the chunks and calls of one thread.

    A fresh array of a few MB is not free: the allocator returns large blocks to the system
    and every page is faulted in again on first use, which cost up to a third of the run time
    of the steps below. The arrays here are about ten per chunk, of at most 8 bytes per map
    entry (`_chunk_rows`): 30-60 MB in all, kept while the thread lives.
    """

    def __init__(self):
        self.buffers: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An uninitialised array of this shape and dtype, valid until the next request
        of the same name."""
        size = math.prod(shape) * np.dtype(dtype).itemsize
        buffer = self.buffers.get(name)
        if buffer is None or buffer.size < size:
            buffer = self.buffers[name] = np.empty(size, np.uint8)
        return buffer[:size].view(dtype).reshape(shape)


_SCRATCH = _Scratch()


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
        name_index: int32 [entry] index into `names`.
        neuron: int32 [entry] row index into the maps.
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
    layout = _layout(op, max_single_token, max_op)
    rules = _cached_rules(layout, op, op1, op2, result, max_single_token, max_op, mode)
    n_rows = maps.shape[0]
    most = _chunk_rows(op1.size)  # rows per chunk, at most
    step = -(-n_rows // -(-n_rows // most)) if n_rows else 1  # equal chunks
    # [fixed name, row] scores, a work array: `_assemble` copies them into the result
    fixed = _SCRATCH.array("fixed", (len(layout.names), n_rows), np.float64)
    found = []
    for start in range(0, n_rows, step):
        rows = maps[start : start + step]  # checked finite as they are ordered
        chunk = _score_chunk(rows, rules, check_bottom, fixed[:, start : start + step])
        found.append(chunk.shifted(start))
    return _assemble(layout, rules, fixed, _Found.concatenate(found), n_rows, kind)


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
        new_index = (np.cumsum(take) - 1 + len(names)).astype(np.int32)
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

    @functools.cached_property
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

    @functools.cached_property
    def name_array(self) -> np.ndarray:
        """object [fixed name] the names, for gathering them in one step."""
        return np.array(self.names, object)

    @functools.cached_property
    def zero_cancelled(self) -> np.ndarray:
        """[column] the fixed names of `ZERO_CANCELLED` (× post-processing)."""
        return np.array(
            [i for i, name in enumerate(self.names) if name in ZERO_CANCELLED], np.intp
        )


@functools.lru_cache(maxsize=16)
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

    @property
    def is_interval(self) -> bool:
        """Whether the accepted values are one run of consecutive integers."""
        return self.accepted[-1] - self.accepted[0] + 1 == self.accepted.size


@dataclasses.dataclass(frozen=True)
class _Part:
    """The heuristics of one source counted on one end of the ordering, in one histogram.

    The first `reach` positions of the ordering are cut into segments at every k of the
    part; one bincount of (segment, row, value bin) keys gives the histogram of a chunk of
    neurons, and its cumulative sum over segments the count of every bin among the first k
    positions. The bin of every pair is precomputed (`pair_bin`): counting is one gather
    along the ordering (a contiguous [position, row] prefix), one add of the (segment, row)
    offsets per segment and one bincount. A heuristic's count is then the sum of the table
    over its accepted bins at its own k: cell by cell (`cell_*`), or, for heuristics of
    many bins (mods), one membership matrix product per segment (`sums`). A per-bin part
    (`bin_k` set, see `per_bin`) has one segment and sends the positions at or past their
    bin's k to its bin 0, which no heuristic reads.
    """

    source: str
    bottom: bool
    reach: int  # largest k
    n_pairs: int
    value_bin: np.ndarray  # [value] bin of a source value
    width: int  # number of bins per (row, segment)
    n_segments: int
    cell_segment: np.ndarray  # [cell] segment of the cells summed, grouped by heuristic
    cell_bin: np.ndarray  # [cell] bin of those cells
    starts: np.ndarray  # [cell-summed heuristic] start of its cells
    columns: np.ndarray  # [cell-summed heuristic] column
    segment_ends: np.ndarray  # [segment] its end: the distinct k values, ascending
    # (segment, float64 [bin, heuristic] membership, columns): heuristics of many bins
    sums: tuple[tuple[int, np.ndarray, np.ndarray], ...] = ()
    bin_k: np.ndarray | None = None  # per-bin parts: [bin] k of the bin's heuristic
    # Set by `with_pairs` once the part is chosen (the per-pair arrays are large):
    pair_bin: np.ndarray | None = None  # int16 / int32 [pair] bin of the source value
    pair_k: np.ndarray | None = None  # per-bin parts: [pair] k of the pair's bin

    def with_pairs(self, pair_values: np.ndarray, layouts: "_Layouts") -> "_Part":
        """The part with its per-pair bins (and, per-bin, per-pair ks) filled in, in the
        smallest signed type that holds every bin, k and position (`_small_int`)."""
        del layouts  # position parts read the ordering itself
        small = _small_int(max(self.reach, self.width))
        pair_bin = self.value_bin[pair_values]
        return dataclasses.replace(
            self,
            pair_bin=pair_bin.astype(small),
            pair_k=None if self.bin_k is None else self.bin_k[pair_bin].astype(small),
        )

    @property
    def cuts(self) -> set[int]:
        """The ks at which the ordering is read as a set (see `_order_steps`)."""
        if self.bin_k is not None:
            return set(self.bin_k[1:].tolist())
        return set(self.segment_ends.tolist())

    @property
    def one_cell_each(self) -> bool:
        """Whether every cell-summed heuristic has exactly one cell (no reduceat)."""
        return self.starts.size == self.cell_bin.size

    @property
    def cost(self) -> float:
        """Rough nanoseconds per neuron (see `_NS_*`)."""
        calls = _NS_CALLS / _chunk_rows(self.n_pairs)
        if self.bin_k is not None:
            return (
                calls + _NS_PER_BIN_POSITION * self.reach + 2 * _NS_TABLE * self.width
            )
        summed = sum(matrix.size for _, matrix, _ in self.sums)
        return (
            calls * (1 + len(self.sums))
            + _NS_POSITION * self.reach
            + _NS_TABLE * self.n_segments * self.width
            + _NS_CELL * self.cell_bin.size
            + _NS_PRODUCT * summed
        )

    @staticmethod
    def per_bin(
        source: str, bottom: bool, counted: list[_Heuristic], pair_values: np.ndarray
    ) -> "_Part":
        """A part of heuristics that accept disjoint value sets, each at its own k: the
        bin of a value is its heuristic + 1 (or 0, dropped), and a position counts only
        while it is below its bin's k. One segment, no cumulative table."""
        n_values = int(pair_values.max(initial=0)) + 1
        width = len(counted) + 1
        value_bin = np.zeros(n_values, np.intp)  # bin 0: no heuristic, never read
        for i, h in enumerate(counted):
            value_bin[h.accepted] = i + 1
        bin_k = np.array([0] + [h.k for h in counted], np.intp)
        reach = int(bin_k.max())
        return _Part(
            source=source,
            bottom=bottom,
            reach=reach,
            n_pairs=pair_values.size,
            value_bin=value_bin,
            width=width,
            n_segments=1,
            cell_segment=np.zeros(len(counted), np.intp),
            cell_bin=np.arange(1, width),
            starts=np.arange(len(counted)),
            columns=np.array([h.column for h in counted]),
            segment_ends=np.array([reach]),
            bin_k=bin_k,
        )

    @staticmethod
    def segmented(
        source: str, bottom: bool, counted: list[_Heuristic], pair_values: np.ndarray
    ) -> "_Part":
        """One segmented part, with a segment per distinct k and as value bins either the
        pieces between the heuristics' interval ends, or (mods among them) the classes of
        values that every heuristic accepts or rejects alike: the residues mod the lcm of
        the moduli, or the values themselves."""
        n_values = int(pair_values.max(initial=0)) + 1
        by_matrix: list[_Heuristic] = []
        if all(h.is_interval for h in counted):
            firsts = np.array([h.accepted[0] for h in counted])
            ends = np.array([h.accepted[-1] + 1 for h in counted])
            edges = np.unique(np.concatenate([[0, n_values], firsts, ends]))
            bins = np.searchsorted(edges, np.arange(n_values), side="right") - 1
            lows, highs = np.searchsorted(edges, firsts), np.searchsorted(edges, ends)
            by_cell = counted
            bin_sets = [
                np.arange(a, b)
                for a, b in zip(lows.tolist(), highs.tolist(), strict=True)
            ]
            width = edges.size - 1
        else:
            member = np.zeros((n_values, len(counted)), bool)
            for i, h in enumerate(counted):
                member[h.accepted, i] = True
            packed = np.packbits(member, axis=1)  # one row of bytes per value
            _, first, bins = np.unique(
                packed, axis=0, return_index=True, return_inverse=True
            )
            classes = member[first]
            bins, width = bins.reshape(-1), classes.shape[0]
            matrix_of = {h.column: classes[:, i] for i, h in enumerate(counted)}
            by_matrix = _summed_by_product(counted, matrix_of, width, pair_values.size)
            summed = {h.column for h in by_matrix}
            by_cell = [h for h in counted if h.column not in summed]
            bin_sets = [np.flatnonzero(matrix_of[h.column]) for h in by_cell]
        segment_ends = np.unique([h.k for h in counted])
        segment_of = {k: i for i, k in enumerate(segment_ends.tolist())}
        sizes = np.array([kept.size for kept in bin_sets], np.intp)
        cell_segment = np.repeat([segment_of[h.k] for h in by_cell], sizes)
        by_segment: dict[int, list[_Heuristic]] = {}
        for h in by_matrix:
            by_segment.setdefault(segment_of[h.k], []).append(h)
        return _Part(
            source=source,
            bottom=bottom,
            reach=int(segment_ends[-1]),
            n_pairs=pair_values.size,
            value_bin=bins,
            width=int(width),
            n_segments=segment_ends.size,
            cell_segment=cell_segment.astype(np.intp),
            cell_bin=np.concatenate(bin_sets) if bin_sets else np.zeros(0, np.intp),
            starts=np.cumsum(sizes) - sizes,
            columns=np.array([h.column for h in by_cell], np.intp),
            segment_ends=segment_ends,
            sums=tuple(
                (
                    segment,
                    np.stack([matrix_of[h.column] for h in group], 1).astype(float),
                    np.array([h.column for h in group], np.intp),
                )
                for segment, group in by_segment.items()
            ),
        )


def _summed_by_product(
    counted: list[_Heuristic], member: dict[int, np.ndarray], width: int, n_pairs: int
) -> list[_Heuristic]:
    """The heuristics of a segmented part better summed by one membership product per k
    (the mods of one modulus share a k and cover every bin) than cell by cell."""
    by_k: dict[int, list[_Heuristic]] = {}
    for h in counted:
        by_k.setdefault(h.k, []).append(h)
    chosen = []
    for group in by_k.values():
        cells = sum(int(member[h.column].sum()) for h in group)
        product = _NS_PRODUCT * width * len(group) + _NS_CALLS / _chunk_rows(n_pairs)
        if product < _NS_CELL * cells:
            chosen += group
    return chosen


_BYTES = np.uint64(0x0101010101010101)  # times a word: byte sum in the top byte
_BYTE_PAIRS = np.uint64(0x00FF00FF00FF00FF)
_SHORTS = np.uint64(0x0001000100010001)  # times a word: 16-bit sum in the top 16 bits
_PIECE_WORDS = 250  # at most this many words summed per byte lane (< 256)


@dataclasses.dataclass(frozen=True)
class _ByteBlocks:
    """Counts of True entries of bool rows in contiguous blocks, eight at a time.

    A bool row is read as uint64 words of 8 entries. One `add.reduceat` over the words
    adds each byte lane separately (no carry while a piece spans < 256 words), so a sum
    of lanes counts the entries of whole words; the entries of the first and last word
    that lie outside the piece are counted from those words and subtracted or added.
    Blocks longer than `_PIECE_WORDS` words are split into pieces, summed at the end.
    """

    n_words: int  # words per row: the row length rounded up to 8, / 8
    first_word: np.ndarray  # intp [piece] the word its sum starts at (its edge's word)
    edge_word: np.ndarray  # intp [piece + 1] the word holding each piece edge (clipped)
    edge_mask: np.ndarray  # uint64 [piece + 1] the bytes of that word before the edge
    shared: np.ndarray  # bool [piece] the next edge lies in the same word
    block_piece: np.ndarray | None  # intp [block] first piece; None: one piece each

    @staticmethod
    def build(starts: np.ndarray, n: int) -> "_ByteBlocks":
        """Blocks [starts[i], starts[i + 1]) (the last one to n) of rows of n entries."""
        n_words = -(-n // 8)
        ends = np.append(starts[1:], n)
        pieces = [
            np.arange(start, end, 8 * _PIECE_WORDS)
            for start, end in zip(starts.tolist(), ends.tolist(), strict=True)
        ]
        sizes = np.array([p.size for p in pieces])
        edges = np.append(np.concatenate(pieces), 8 * n_words).astype(np.intp)
        word, byte = np.divmod(edges, 8)
        mask = (np.uint64(1) << (np.uint64(8) * byte.astype(np.uint64))) - np.uint64(1)
        return _ByteBlocks(
            n_words=n_words,
            first_word=word[:-1],
            edge_word=np.minimum(word, n_words - 1),
            edge_mask=np.where(byte > 0, mask, np.uint64(0)),
            shared=word[:-1] == word[1:],
            block_piece=None if np.all(sizes == 1) else np.cumsum(sizes) - sizes,
        )

    def count(self, words: np.ndarray) -> np.ndarray:
        """int64 [row, block] True entries per block of `words` uint64 [row, n_words]
        (the bool rows, padded with False to whole words)."""
        lanes = np.add.reduceat(words, self.first_word, axis=1)  # [row, piece]
        lanes = (lanes & _BYTE_PAIRS) + ((lanes >> np.uint64(8)) & _BYTE_PAIRS)
        lanes *= _SHORTS
        lanes >>= np.uint64(48)  # the piece's whole words' count
        lanes[:, self.shared] = 0
        edge = np.take(words, self.edge_word, axis=1)  # [row, piece + 1]
        edge &= self.edge_mask
        edge *= _BYTES
        edge >>= np.uint64(56)  # the entries before the edge in its word
        found = lanes.view(np.int64)
        found -= edge[:, :-1].view(np.int64)
        found += edge[:, 1:].view(np.int64)
        if self.block_piece is not None:
            found = np.add.reduceat(found, self.block_piece, axis=1)
        return found


@dataclasses.dataclass(frozen=True)
class _RankPart:
    """Heuristics of one source counted on the ranks of the pairs instead of along the
    ordering.

    The pairs are laid out by ascending source value (`_Layouts`), so that the pairs of
    every value, and of every interval of values, form one contiguous block. A pair counts
    for a heuristic with k when its rank is below k (among the first k positions), or at
    least n - k (among the last k): one comparison of the laid-out ranks with a per-pair
    bound and one sum over the blocks (`_ByteBlocks`) count the pairs of every block
    below its heuristic's bound. Two kinds:

    * disjoint intervals, each at its own k: one block per heuristic (`build`); pairs of no
      heuristic get a bound that never counts (0 at the top, n at the bottom);
    * any value sets at one common k: one block per value, summed into the heuristics by a
      one-hot [value, heuristic] matrix product (`members`, `build_values`).

    Cheaper than a position part when the ks are large compared to n: it costs n per row
    whatever the ks.
    """

    source: str
    bottom: bool
    reach: int  # largest k: the ranks must be exact up to here
    n_pairs: int
    starts: np.ndarray  # [block] first layout index
    columns: np.ndarray  # [heuristic] column
    block_k: tuple[tuple[int, int, int], ...]  # (start, end, k) of every counted block
    members: np.ndarray | None = None  # float64 [block, heuristic]; None: the identity
    # Set by `with_pairs`:
    bound: np.ndarray | None = None  # [layout index] rank bound
    blocks: _ByteBlocks | None = None  # how the blocks are summed

    def with_pairs(self, pair_values: np.ndarray, layouts: "_Layouts") -> "_RankPart":
        """The part with its per-pair rank bounds and block sums filled in."""
        del pair_values
        n = self.n_pairs
        bound = np.full(n, n if self.bottom else 0, layouts.rank_dtype)
        for start, end, k in self.block_k:
            bound[start:end] = n - k if self.bottom else k
        blocks = _ByteBlocks.build(self.starts, n)
        return dataclasses.replace(self, bound=bound, blocks=blocks)

    @property
    def cuts(self) -> set[int]:
        """The ks at which the ordering is read as a set (see `_order_steps`)."""
        return {k for _, _, k in self.block_k}

    @property
    def cost(self) -> float:
        """Rough nanoseconds per neuron (see `_NS_*`); the ranks themselves are shared."""
        calls = _NS_CALLS / _chunk_rows(self.n_pairs)
        return calls + _NS_RANK_PAIR * self.n_pairs + _NS_BLOCK * self.starts.size

    @staticmethod
    def build(
        source: str, bottom: bool, counted: list[_Heuristic], layouts: "_Layouts"
    ) -> "_RankPart | None":
        """The rank part of disjoint interval heuristics, or None if they are not that."""
        if not all(h.is_interval for h in counted):
            return None
        by_start = sorted(counted, key=lambda h: int(h.accepted[0]))
        sorted_values = layouts.sorted_values[source]
        blocks = []
        previous_end = -1
        for h in by_start:
            low, high = int(h.accepted[0]), int(h.accepted[-1]) + 1
            if low < previous_end:
                return None  # overlapping intervals
            previous_end = high
            start, end = np.searchsorted(sorted_values, [low, high]).tolist()
            if end > start:  # a heuristic without pairs keeps its count of 0
                blocks.append((start, end, h))
        if not blocks:
            return None
        return _RankPart(
            source=source,
            bottom=bottom,
            reach=max(h.k for _, _, h in blocks),
            n_pairs=sorted_values.size,
            starts=np.array([start for start, _, _ in blocks], np.intp),
            columns=np.array([h.column for _, _, h in blocks], np.intp),
            block_k=tuple((start, end, h.k) for start, end, h in blocks),
        )

    @staticmethod
    def build_values(
        source: str, bottom: bool, counted: list[_Heuristic], layouts: "_Layouts"
    ) -> "_RankPart | None":
        """The rank part of heuristics that share one k (e.g. the mods of one modulus),
        one block per value, or None if their ks differ."""
        (k, *others) = {h.k for h in counted}
        if others:
            return None
        sorted_values = layouts.sorted_values[source]
        values, starts = np.unique(sorted_values, return_index=True)
        members = np.stack([np.isin(values, h.accepted) for h in counted], axis=1)
        return _RankPart(
            source=source,
            bottom=bottom,
            reach=k,
            n_pairs=sorted_values.size,
            starts=starts.astype(np.intp),
            columns=np.array([h.column for h in counted], np.intp),
            block_k=((0, sorted_values.size, k),),
            members=members.astype(np.float64),
        )


@dataclasses.dataclass(frozen=True)
class _Layouts:
    """The pairs of every source laid out by ascending value, for the rank parts."""

    perm: dict[str, np.ndarray | None]  # source -> pair order (None: already sorted)
    sorted_values: dict[str, np.ndarray]  # source -> its values in that order
    rank_dtype: type  # int16 when every rank fits, else int32

    @staticmethod
    def build(values: dict[str, np.ndarray], n_pairs: int) -> "_Layouts":
        perm, sorted_values = {}, {}
        for source, v in values.items():
            order = np.argsort(v, kind="stable")
            identity = bool(np.all(order == np.arange(v.size)))
            perm[source] = None if identity else order
            sorted_values[source] = v[order]
        dtype = np.int16 if n_pairs <= np.iinfo(np.int16).max else np.int32
        return _Layouts(perm, sorted_values, dtype)


_AnyPart = _Part | _RankPart


def _part_options(
    source: str,
    bottom: bool,
    heuristics: list[_Heuristic],
    pair_values: np.ndarray,
    layouts: _Layouts | None,
    memo: dict,
) -> list[list[_AnyPart]]:
    """Ways to count these heuristics: one segmented part; per-bin parts, when the
    heuristics' value sets can be split into few disjoint groups; and (with `layouts`) rank
    parts for the same groups, when they are intervals, or one over value blocks, when the
    heuristics share one k."""
    counted = [h for h in heuristics if h.k > 0 and h.accepted.size > 0]
    key = (source, bottom, layouts is not None, tuple(h.column for h in counted))
    if key not in memo:
        memo[key] = _new_part_options(source, bottom, counted, pair_values, layouts)
    return memo[key]


def _new_part_options(
    source: str,
    bottom: bool,
    counted: list[_Heuristic],
    pair_values: np.ndarray,
    layouts: _Layouts | None,
) -> list[list[_AnyPart]]:
    """`_part_options` of the counted heuristics (k > 0, some value accepted)."""
    if not counted:
        return [[]]
    options = _rank_value_options(source, bottom, counted, layouts)
    options.append([_Part.segmented(source, bottom, counted, pair_values)])
    groups: list[list[_Heuristic]] = []  # greedy split into disjoint value sets
    used: list[set[int]] = []
    for h in counted:
        values = set(h.accepted.tolist())
        i = next((i for i, u in enumerate(used) if not u & values), len(groups))
        if i == _PER_BIN_GROUPS:
            return options  # too many groups: only the segmented part
        if i == len(groups):
            groups.append([])
            used.append(set())
        groups[i].append(h)
        used[i] |= values
    options.append([_Part.per_bin(source, bottom, g, pair_values) for g in groups])
    if layouts is not None:
        ranked = [_RankPart.build(source, bottom, g, layouts) for g in groups]
        if all(part is not None for part in ranked):
            options.append(ranked)
    return options


def _rank_value_options(
    source: str, bottom: bool, heuristics: list[_Heuristic], layouts: _Layouts | None
) -> list[list[_AnyPart]]:
    """The rank part over value blocks of heuristics sharing one k, if that applies."""
    counted = [h for h in heuristics if h.k > 0 and h.accepted.size > 0]
    if layouts is None or not counted:
        return []
    part = _RankPart.build_values(source, bottom, counted, layouts)
    return [] if part is None else [[part]]


def _cheapest_parts(
    source: str,
    bottom: bool,
    heuristics: list[_Heuristic],
    pair_values: np.ndarray,
    layouts: _Layouts | None,
    memo: dict,
) -> list[_AnyPart]:
    """The cheapest split of a source's heuristics into parts: all in one; the mods in one
    and each range size in its own; every modulus and range size in its own; the moduli of
    each k together; or the moduli with the largest ks each in its own and the other mods
    in one (each group counted as `_part_options` allows). Cost = the parts' `cost`, per
    neuron."""
    families: dict[str, list[_Heuristic]] = {}
    for h in heuristics:
        families.setdefault(h.group, []).append(h)
    mods = [h for h in heuristics if h.group.startswith("mod")]
    others = [g for name, g in families.items() if not name.startswith("mod")]
    splits = [[heuristics], ([mods] if mods else []) + others, list(families.values())]
    same_k: dict[int, list[_Heuristic]] = {}  # moduli of one k together
    for h in mods:
        same_k.setdefault(h.k, []).append(h)
    splits.append(list(same_k.values()) + others)
    for cut in sorted({h.k for h in mods})[:-1]:  # moduli above the cut on their own
        low = [h for h in mods if h.k <= cut]
        high = [
            g
            for g in families.values()
            if g[0].group.startswith("mod") and g[0].k > cut
        ]
        splits.append([low] + high + others)
    best: list[_AnyPart] = []
    best_cost = math.inf
    for groups in splits:
        parts = []
        for g in groups:
            options = _part_options(source, bottom, g, pair_values, layouts, memo)
            parts += min(options, key=lambda o: sum(p.cost for p in o))
        cost = sum(p.cost for p in parts)
        if cost < best_cost:
            best, best_cost = parts, cost
    return best


_SORT = -1  # `_order_steps`: sort the region
_Steps = tuple[tuple[int, int, int], ...]  # (lo, hi, kth) steps of `_order_steps`


@dataclasses.dataclass(frozen=True)
class _Plan:
    """The parts scored for one value of `check_bottom`, and what they read."""

    parts: tuple[_AnyPart, ...]
    top: int  # positions of the ordering read at the top
    bottom: int  # and at the bottom (0 without check_bottom)
    ranked: bool  # some part counts on ranks
    ordering: _Steps  # how the keys are ordered (`_order_steps`)

    @staticmethod
    def choose(
        candidates: dict[bool, dict[tuple[str, bool], list[_AnyPart]]],
        check_bottom: bool,
        layouts: _Layouts,
        n_pairs: int,
        reads: tuple[int, int],
    ) -> "_Plan":
        """The cheaper of the position-only parts and the parts with rank parts allowed;
        the latter also pay for the ranks (once per chunk) and the source layouts.

        `reads`: the positions read in order at the top and the bottom (the pattern
        lists); the top one also as a set (÷ multi-values: `MULTI_VALUE_TOP`)."""
        plans = []
        for allow_ranks in (False, True):
            chosen = _with_layouts_paid(candidates, allow_ranks, check_bottom, layouts)
            parts = tuple(part for group in chosen.values() for part in group)
            ranked = [p for p in parts if isinstance(p, _RankPart)]
            cost = sum(p.cost for p in parts)
            cuts = {False: {reads[0]}, True: {reads[1]} if check_bottom else set()}
            for part in parts:
                cuts[part.bottom].update(part.cuts)
            top, bottom = max(cuts[False]), max(cuts[True], default=0)
            if ranked:
                laid = {p.source for p in ranked if layouts.perm[p.source] is not None}
                cost += _NS_RANK * min(top + bottom, n_pairs)
                cost += (_NS_LAYOUT * n_pairs + _NS_CALLS / _chunk_rows(n_pairs)) * len(
                    laid
                )
            sorted_reads = (reads[1], reads[1] if check_bottom else 0)
            ordering = _order_steps(n_pairs, cuts[False], cuts[True], sorted_reads)
            plan = _Plan(parts, top, bottom, bool(ranked), ordering)
            plans.append((cost, plan))
        return min(plans, key=lambda cost_plan: cost_plan[0])[1]


def _with_layouts_paid(
    candidates: dict[bool, dict[tuple[str, bool], list[_AnyPart]]],
    allow_ranks: bool,
    check_bottom: bool,
    layouts: _Layouts,
) -> dict[tuple[str, bool], list[_AnyPart]]:
    """(source, end) -> parts of the ends scored: with ranks allowed, a source whose
    ranks must be laid out by its values keeps its rank parts only if they save more than
    that layout costs; otherwise it takes its position parts at both ends."""
    ends = (False, True) if check_bottom else (False,)
    chosen = {
        key: parts for key, parts in candidates[allow_ranks].items() if key[1] in ends
    }
    if not allow_ranks:
        return chosen
    for source in {key[0] for key in chosen}:
        keys = [(source, end) for end in ends if (source, end) in chosen]
        ranked = [p for key in keys for p in chosen[key] if isinstance(p, _RankPart)]
        if not ranked or layouts.perm[source] is None:
            continue
        saved = sum(p.cost for key in keys for p in candidates[False][key]) - sum(
            p.cost for key in keys for p in chosen[key]
        )
        n_pairs = ranked[0].n_pairs
        if saved < _NS_LAYOUT * n_pairs + _NS_CALLS / _chunk_rows(n_pairs):
            for key in keys:
                chosen[key] = candidates[False][key]
    return chosen


def _order_steps(
    n: int, top_cuts: set[int], bottom_cuts: set[int], sorted_reads: tuple[int, int]
) -> _Steps:
    """How to order the packed keys of a row (`_order_keys`) so that every rule reads
    them right: `(lo, hi, kth)` steps, each partitioning `keys[:, lo:hi]` at `lo + kth`,
    or sorting it (kth = `_SORT`).

    A rule that counts the first k positions of an end needs only the set of pairs before
    k: k is a "cut", where a partition suffices. The pattern lists read their first
    `sorted_reads` positions in order. Either the whole row is sorted, or the two ends are
    split apart (at the largest top cut, then at the largest bottom cut) and each is
    ordered by the cheapest chain of partitions and sorts (`_chain`): the cuts are sparse
    far from the ends and dense, or clustered, near them. Whichever the cost model finds
    cheaper (`_NS_PARTITION`, `_NS_SORT`, `_NS_STEP`).

    Arguments:
        n: pairs per row.
        top_cuts: the ks counted at the top (positions 0..k-1).
        bottom_cuts: the ks counted at the bottom (positions n-k..n-1).
        sorted_reads: positions read in order at the top and at the bottom.
    """
    step = _NS_STEP / max(1, _ORDER_ELEMENTS // max(n, 1))  # per row: `_ordered_ends`
    whole = ((0, n, _SORT),)
    top = min(max(top_cuts, default=0), n)
    bottom = min(max(bottom_cuts, default=0), n)
    if top >= n or bottom >= n or n - sorted_reads[1] < top:
        return whole  # the ends overlap where they read in order
    steps: list[tuple[int, int, int]] = []
    cost = 0.0
    if top:
        steps.append((0, n, top))
        cost += step + _NS_PARTITION * n
    split = top
    if bottom and top + bottom < n:
        steps.append((top, n, n - bottom - top))
        cost += step + _NS_PARTITION * (n - top)
        split = n - bottom
    # The top end [0, top): its cuts and the bottom cuts that fall inside it.
    inner = {c for c in top_cuts if c < top} | {
        n - c for c in bottom_cuts if n - c < top
    }
    chain, chain_cost = _chain(top, inner, sorted_reads[0], step)
    steps += chain
    # The bottom end [split, n), as distances from the end.
    inner = {c for c in bottom_cuts if c < n - split}
    chain, bottom_cost = _chain(n - split, inner, sorted_reads[1], step)
    for lo, hi, kth in chain:
        at = (hi - lo - kth) if kth != _SORT else _SORT  # the kth keys nearest the end
        steps.append((n - hi, n - lo, at))
    if step + _sort_cost(n) <= cost + chain_cost + bottom_cost:
        return whole
    return tuple(steps)


def _sort_cost(m: int) -> float:
    """Nanoseconds per row to sort m keys (without the call)."""
    return _NS_SORT * m * math.log2(m) if m > 1 else 0.0


def _chain(
    length: int, cuts: set[int], in_order: int, step: float
) -> tuple[list[tuple[int, int, int]], float]:
    """The cheapest steps (see `_order_steps`) on a region [0, length) whose set is
    right, so that every cut inside is right and [0, in_order) is in order, in region
    coordinates, and their cost per row (`step` per call).

    From the region's end inward, each step partitions the prefix at a lower cut and
    handles the cuts skipped in between (sorting that stretch, or partitioning it at each
    of them), or sorts the whole prefix and stops. A dynamic program over the cuts finds
    the cheapest such chain."""
    if in_order >= length:
        if length <= 1:
            return [], 0.0
        return [(0, length, _SORT)], step + _sort_cost(length)
    points = [in_order, *sorted(c for c in cuts if in_order < c < length), length]
    total = np.cumsum(points).tolist()

    def stretch(j: int, i: int) -> tuple[float, bool]:
        """Cost of making the cuts inside [points[j], points[i]) right, and whether by
        sorting (else by partitioning at each of them, from the top down)."""
        if i == j + 1:
            return 0.0, False
        low, inside = points[j], i - j - 1
        partitions = (total[i] - total[j + 1]) - inside * low
        sorting = step + _sort_cost(points[i] - low)
        if sorting < inside * step + _NS_PARTITION * partitions:
            return sorting, True
        return inside * step + _NS_PARTITION * partitions, False

    def sort_prefix(m: int) -> float:
        return step + _sort_cost(m) if m > 1 else 0.0

    # best[i]: cost of the prefix [0, points[i]) once its set is right; choice[i]: the
    # lower point it is partitioned at (None: sorted whole) and how the stretch is done.
    best = [sort_prefix(in_order)]
    choice: list[tuple[int, bool] | None] = [None]
    for i in range(1, len(points)):
        best.append(sort_prefix(points[i]))
        choice.append(None)
        for j in range(i):
            cut = step + _NS_PARTITION * points[i] if points[j] else 0.0
            cost, by_sort = stretch(j, i)
            if best[j] + cut + cost < best[i]:
                best[i], choice[i] = best[j] + cut + cost, (j, by_sort)
    steps = []
    i = len(points) - 1
    while choice[i] is not None:
        j, by_sort = choice[i]
        low, high = points[j], points[i]
        if low:
            steps.append((0, high, low))
        if by_sort:
            steps.append((low, high, _SORT))
        else:  # partitions of the stretch at its cuts, from the top down
            steps += [
                (low, points[t + 1], points[t] - low) for t in range(i - 1, j, -1)
            ]
        i = j
    if points[i] > 1:
        steps.append((0, points[i], _SORT))
    return steps, best[-1]


@dataclasses.dataclass(frozen=True)
class _Rules:
    """Everything the scoring needs that does not depend on the neuron."""

    op: str
    mode: str
    max_op: int
    values: dict[str, np.ndarray]  # source -> [pair] value in [0, n_values)
    layouts: _Layouts
    plans: dict[bool, _Plan]  # check_bottom -> the parts scored and the positions read
    column_k: np.ndarray  # [fixed name] k (0: score 0)
    column_bottom: np.ndarray  # [fixed name] scored on both ends with check_bottom
    pattern_k: int
    sections: dict[str, int]

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
        layouts = _Layouts.build(values, op1.size)
        by_source: dict[str, list[_Heuristic]] = {}
        for h in heuristics:
            by_source.setdefault(h.source, []).append(h)
        candidates: dict[bool, dict[tuple[str, bool], list[_AnyPart]]] = {}
        memo: dict = {}  # part options per group of heuristics
        for allow_ranks in (False, True):
            chosen = candidates[allow_ranks] = {}
            for source, group in by_source.items():
                for bottom in (False, True):
                    counted = [h for h in group if h.bottom or not bottom]
                    parts = _cheapest_parts(
                        source,
                        bottom,
                        counted,
                        values[source],
                        layouts if allow_ranks else None,
                        memo,
                    )
                    chosen[(source, bottom)] = [
                        p.with_pairs(values[source], layouts) for p in parts
                    ]
        pattern_k = ks.pattern()
        top_reads = max(pattern_k, MULTI_VALUE_TOP if op == "/" else 0)
        plans = {
            check_bottom: _Plan.choose(
                candidates, check_bottom, layouts, op1.size, (top_reads, pattern_k)
            )
            for check_bottom in (False, True)
        }
        column_k = np.zeros(column, np.int64)
        column_bottom = np.zeros(column, bool)
        for h in heuristics:
            column_k[h.column], column_bottom[h.column] = h.k, h.bottom
        return _Rules(
            op=op,
            mode=mode,
            max_op=max_op,
            values={name: v.astype(np.int16) for name, v in values.items()},  # < 1000
            layouts=layouts,
            plans=plans,
            column_k=column_k,
            column_bottom=column_bottom,
            pattern_k=pattern_k,
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
    operands. The rules hold a plan for each value of `check_bottom`."""
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
            _Heuristic(column + m, source, k, sets[m], True, f"mod{n}")
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


_SOURCES = ("op1", "op2", "result")  # of discovered patterns, in name-id order
_MULTI_BASE = len(_SOURCES) * _CODE_SPAN  # name ids from here on: ÷ multi-value sets
_MULTI_DIGIT = 1024  # base of the packed (result + 1) digits of a multi-value name id


@dataclasses.dataclass(frozen=True)
class _Found:
    """Discovered entries (patterns, values, multi-values), one per row of these arrays."""

    neuron: np.ndarray
    key: np.ndarray  # place in the neuron's emission order: section * _SECTION + sub
    name_id: np.ndarray  # int64, see `_found_name`
    score: np.ndarray

    def shifted(self, offset: int) -> "_Found":
        return dataclasses.replace(self, neuron=self.neuron + offset)

    @staticmethod
    def concatenate(parts: Sequence["_Found"]) -> "_Found":
        if not parts:
            return _Found(
                *(np.zeros(0, t) for t in (np.int64, np.int64, np.int64, float))
            )
        fields = [f.name for f in dataclasses.fields(_Found)]
        return _Found(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))


@functools.lru_cache(maxsize=1 << 16)
def _found_name(name_id: int) -> str:
    """The heuristic name of a discovered entry's name id: a pattern (source, wildcard
    code) below `_MULTI_BASE`, a ÷ multi-value set (packed digits) from there on."""
    if name_id < _MULTI_BASE:
        source, code = divmod(name_id, _CODE_SPAN)
        return str(_code_names(_SOURCES[source])[code])
    packed, results = name_id - _MULTI_BASE, []
    while packed:
        packed, digit = divmod(packed, _MULTI_DIGIT)
        results.insert(0, digit - 1)  # the last digit is the largest result
    return f"result_multi_value_{len(results)}={results}"


def _score_chunk(
    maps: np.ndarray, rules: _Rules, check_bottom: bool, fixed: np.ndarray
) -> _Found:
    """Scores of one chunk of rows: the fixed heuristics' into `fixed` float64 [fixed
    name, row], the discovered entries returned."""
    plan = rules.plans[check_bottom]
    n_rows = maps.shape[0]
    ends = _ordered_ends(maps, plan, _SCRATCH)
    counts = {}  # end -> int64 [column, row]
    for bottom in (False, True) if check_bottom else (False,):
        counts[bottom] = _SCRATCH.array(
            f"counts{bottom:d}", (rules.column_k.size, n_rows), np.int64
        )
        counts[bottom].fill(0)
    laid_out = None
    if plan.ranked:
        laid_out = _LaidOutRanks(ends, maps.shape[1], plan, rules.layouts, _SCRATCH)
    for part in plan.parts:
        if isinstance(part, _RankPart):
            _rank_counts(part, laid_out, counts[part.bottom])
        else:
            _part_counts(part, ends[part.bottom], counts[part.bottom], _SCRATCH)
    best = counts[False]
    if check_bottom:  # the better end, for the heuristics scored on both
        np.maximum(best, counts[True], out=best, where=rules.column_bottom[:, None])
    # count / k as the official float division; a k of 0 scores 0 (its count is 0)
    np.divide(best, np.maximum(rules.column_k, 1)[:, None], out=fixed)
    lists = [("op1", False), ("op2", False)]  # (source, bottom) of the pattern lists
    if check_bottom:
        lists += [("op1", True), ("op2", True)]
    found = [_patterns(ends, rules, [*lists, ("result", False)])]
    if rules.op == "/":
        found.append(_multi_values(ends[False], rules))
    return _Found.concatenate(found)


_LOW, _HIGH = (0, 1) if sys.byteorder == "little" else (1, 0)  # uint32 halves of uint64


def _descending_order(
    maps: np.ndarray, top: int, bottom: int, scratch: _Scratch | None = None
) -> np.ndarray:
    """`np.argsort(-maps, axis=1, kind="stable")` (descending values, ties by pair index)
    where any rule reads it: the first `top` and the last `bottom` positions. The pairs in
    between are in arbitrary order.

    float32 maps (and any maps that float32 holds exactly) are ordered as packed keys
    (`_order_keys`); other maps take the full stable argsort.

    Arguments:
        maps: [row, pair] maps.
        top: positions needed in order at the top.
        bottom: positions needed in order at the bottom.
        scratch: where to keep the work arrays (the result is then one of them).

    Returns:
        intp [row, pair] pair indices.
    """
    single = _as_float32(maps)
    if single is None:
        return np.argsort(-maps, axis=1, kind="stable")
    n = maps.shape[1]
    if top + bottom >= n:
        steps = ((0, n, _SORT),)
    else:
        steps = ((0, n, top), (0, top, _SORT))
        if bottom:
            steps += ((top, n, n - bottom - top), (n - bottom, n, _SORT))
    if scratch is None:
        keys = np.empty(maps.shape, np.uint64)
    else:
        keys = scratch.array("order", maps.shape, np.uint64)
    _order_keys(single, keys, steps, scratch)
    keys &= np.uint64(0xFFFFFFFF)  # the pair index, in place
    return keys.view(np.int64).astype(np.intp, copy=False)


def _as_float32(maps: np.ndarray) -> np.ndarray | None:
    """The maps as float32, or None when float32 does not hold them exactly."""
    single = maps.astype(np.float32, copy=False)
    if maps.dtype != np.float32 and not np.array_equal(single, maps):
        return None
    return single


def _order_keys(
    maps: np.ndarray, keys: np.ndarray, steps: _Steps, scratch: _Scratch | None = None
) -> None:
    """Writes the packed keys of float32 `maps` [row, pair] into `keys` uint64 [row,
    pair] and orders them by `steps` (`_order_steps`); raises unless the maps are finite.

    The high 32 bits order the values (descending), the low 32 bits are the pair index, so
    the keys are distinct and a plain (SIMD) sort or partition gives exactly the order of
    `np.argsort(-maps, kind="stable")`, -0.0 and 0.0 tied.
    """
    n_rows, n = maps.shape
    if scratch is None:
        bits, flip = np.empty(maps.shape, np.uint32), np.empty(maps.shape, np.uint32)
    else:
        bits = scratch.array("bits", maps.shape, np.uint32)
        flip = scratch.array("flip", maps.shape, np.uint32)
    np.add(maps, np.float32(0.0), out=bits.view(np.float32))  # -0.0 + 0.0 = +0.0
    # Descending float order as ascending unsigned: negatives keep their bits (larger
    # magnitude, larger key), non-negatives flip their 31 low bits (below every negative).
    np.right_shift(bits, np.uint32(31), out=flip)
    flip -= np.uint32(1)  # 0 for negatives, all ones otherwise
    flip &= np.uint32(0x7FFFFFFF)
    halves = keys.view(np.uint32).reshape(n_rows, n, 2)
    np.bitwise_xor(bits, flip, out=halves[..., _HIGH])
    halves[..., _LOW] = np.arange(n, dtype=np.uint32)
    if keys.size:  # +inf, +nan: high key <= 0x007FFFFF; -inf, -nan: >= 0xFF800000
        low, high = int(keys.min()) >> 32, int(keys.max()) >> 32
        _check_finite(low > 0x007FFFFF and high < 0xFF800000)
    for lo, hi, kth in steps:
        if kth == _SORT:
            keys[:, lo:hi].sort(axis=1)
        elif kth > 0:
            keys[:, lo:hi].partition(kth, axis=1)


def _check_finite(finite: bool) -> None:
    if not finite:
        raise ValueError("maps must be finite (the official ordering of NaN differs)")


def _ordered_ends(
    maps: np.ndarray, plan: _Plan, scratch: _Scratch
) -> dict[bool, np.ndarray]:
    """The ordering where the rules read it, as contiguous [position, row] arrays: end ->
    intp [reach, row] the pair at each of the first `top` positions of the descending
    ordering (False) and of the first `bottom` of the reversed one (True), `top` and
    `bottom` those of the plan, ordered as `plan.ordering` says.

    Every consumer then reads a contiguous prefix; the pair indices are taken out of the
    packed keys in the same pass that transposes them. The keys are built and ordered a
    few rows at a time, while they stay in cache (`_ORDER_ELEMENTS`), and transposed at
    least `_ORDER_MIN_ROWS` rows at a time.
    """
    n_rows, n = maps.shape
    reaches = {False: min(plan.top, n), True: min(plan.bottom, n)}
    ends = {
        end: scratch.array(f"end{end:d}", (reach, n_rows), np.intp)
        for end, reach in reaches.items()
    }
    single = _as_float32(maps)
    if single is None:
        low, high = maps.min(initial=0.0), maps.max(initial=0.0)
        _check_finite(bool(np.isfinite(low) and np.isfinite(high)))
        order = np.argsort(-maps, axis=1, kind="stable")
        for end, reach in reaches.items():
            np.copyto(ends[end], (order[:, ::-1] if end else order)[:, :reach].T)
        return ends
    keys = scratch.array("order", maps.shape, np.uint64)
    step = max(1, _ORDER_ELEMENTS // max(n, 1))
    group = max(_ORDER_MIN_ROWS, step)
    for start in range(0, n_rows, group):
        stop = min(start + group, n_rows)
        for row in range(start, stop, step):
            rows = slice(row, min(row + step, stop))
            _order_keys(single[rows], keys[rows], plan.ordering, scratch)
        for end, reach in reaches.items():
            source = keys[start:stop, ::-1] if end else keys[start:stop]
            np.bitwise_and(
                source[:, :reach].T,
                np.uint64(0xFFFFFFFF),
                out=ends[end][:, start:stop].view(np.uint64),
            )
    return ends


class _LaidOutRanks:
    """The rank of every pair (its position in the ordering) of a chunk, laid out by each
    source's values on demand.

    A pair's rank is its position in the plan's ends as ordered (`_order_steps`): on the
    right side of every cut, which is all a rank bound tests. Pairs between the two ends
    get the rank `top`, which no top bound (k <= top) and no bottom bound (n - k > top)
    counts.
    """

    def __init__(
        self,
        ends: dict[bool, np.ndarray],
        n: int,
        plan: _Plan,
        layouts: _Layouts,
        scratch: _Scratch,
    ):
        n_rows = ends[False].shape[1]
        dtype = layouts.rank_dtype
        ranks = scratch.array("ranks", (n_rows, n), dtype)
        flat = ranks.reshape(-1)
        row_offset = (np.arange(n_rows, dtype=np.intp) * n)[:, None]
        top = min(plan.top, n)
        bottom = min(plan.bottom, n - top)  # the rest, when the ends cover every pair
        if top + bottom < n:
            ranks.fill(top)
        for at_bottom, reach in ((False, top), (True, bottom)):
            if reach:
                # [row, position] flat indices: each row's writes stay close together
                at = scratch.array("rank_at", (n_rows, reach), np.intp)
                np.add(ends[at_bottom][:reach].T, row_offset, out=at)
                position = _position_column(reach, dtype).T
                flat[at] = (n - 1) - position if at_bottom else position
        self.ranks, self.layouts, self.scratch = ranks, layouts, scratch
        self._laid: dict[str, np.ndarray] = {}
        # for `_rank_counts`: pairs then False up to whole uint64 words
        self.inside = scratch.array("inside", (n_rows, 8 * -(-n // 8)), bool)
        self.inside[:, n:] = False

    def of(self, source: str) -> np.ndarray:
        """[row, layout index] the ranks of the pairs in the source's layout."""
        perm = self.layouts.perm[source]
        if perm is None:
            return self.ranks
        if source not in self._laid:
            laid = self.scratch.array(
                f"laid_{source}", self.ranks.shape, self.ranks.dtype
            )
            np.take(self.ranks, perm, axis=1, out=laid, mode="clip")
            self._laid[source] = laid
        return self._laid[source]


def _rank_counts(part: _RankPart, laid_out: _LaidOutRanks, counts: np.ndarray) -> None:
    """Writes the counts of a rank part's heuristics into `counts` [column, row]."""
    ranks = laid_out.of(part.source)
    inside = laid_out.inside  # bool [row, whole words of pairs], False past the pairs
    compare = np.greater_equal if part.bottom else np.less
    compare(ranks, part.bound, out=inside[:, : ranks.shape[1]])
    found = part.blocks.count(inside.view(np.uint64))
    if part.members is not None:  # value blocks summed into heuristics (exact)
        found = found.astype(np.float64) @ part.members
    counts[part.columns] = found.T


def _part_counts(
    part: _Part, positions: np.ndarray, counts: np.ndarray, scratch: _Scratch
) -> None:
    """Writes the counts of a position part's heuristics into `counts` [column, row].

    Arguments:
        part: the heuristics counted together.
        positions: intp [>= reach, row] pair indices along the part's end of the ordering.
        counts: int64 [column, row], the counts of this end.
        scratch: where to keep the work arrays.
    """
    n_rows = positions.shape[1]
    shape = (part.reach, n_rows)
    width = part.width
    small = part.pair_bin.dtype
    bins = scratch.array("bins", shape, small)  # [position, row] bin of the pair
    np.take(part.pair_bin, positions[: part.reach], out=bins, mode="clip")
    if part.pair_k is not None:  # positions at or past their bin's k go to bin 0
        inside = scratch.array("inside_k", shape, small)
        np.take(part.pair_k, positions[: part.reach], out=inside, mode="clip")
        np.subtract(_position_column(part.reach, small), inside, out=inside)
        np.right_shift(inside, 8 * small.itemsize - 1, out=inside)  # -1 below k, or 0
        np.bitwise_and(bins, inside, out=bins)
    # keys = (segment * rows + row) * width + bin: segment-major, so the cumulative sums
    # below add contiguous [row, bin] blocks.
    keys = scratch.array("keys", shape, np.intp)
    row_offset = np.arange(n_rows, dtype=np.intp) * width
    start = 0
    for segment, end in enumerate(part.segment_ends.tolist()):
        offset = row_offset + segment * n_rows * width if segment else row_offset
        np.add(bins[start:end], offset, out=keys[start:end])
        start = end
    size = part.n_segments * n_rows * width
    table = np.bincount(keys.reshape(-1), minlength=size)
    table = table.reshape(part.n_segments, n_rows, width)
    for segment in range(1, part.n_segments):  # cumulative over segments
        np.add(table[segment], table[segment - 1], out=table[segment])
    if part.columns.size == 0:
        pass
    elif part.n_segments == 1 and part.one_cell_each:  # [row, cell] -> [cell, row]
        counts[part.columns] = table[0][:, part.cell_bin].T
    elif part.one_cell_each:
        counts[part.columns] = table[part.cell_segment, :, part.cell_bin]
    else:
        cells = table[part.cell_segment, :, part.cell_bin]  # [cell, row]
        counts[part.columns] = np.add.reduceat(cells, part.starts, axis=0)
    for segment, members, columns in part.sums:
        # [row, bin] @ [bin, heuristic] membership: exact in float64 (counts < 2**53)
        counts[columns] = (table[segment].astype(np.float64) @ members).T


def _small_int(largest: int) -> type:
    """int16 when every value up to `largest` and its negation fit, else int32."""
    return np.int16 if largest <= np.iinfo(np.int16).max else np.int32


_POSITIONS: dict[type, np.ndarray] = {}


def _position_column(n: int, dtype: type = np.intp) -> np.ndarray:
    """[n, 1] 0..n-1 of this dtype (a cached column, so operations broadcast over rows)."""
    column = _POSITIONS.get(dtype)
    if column is None or column.shape[0] < n:
        size = max(n, 2 * (0 if column is None else column.shape[0]))
        column = _POSITIONS[dtype] = np.arange(size, dtype=dtype)[:, None]
    return column[:n]


def _patterns(
    ends: dict[bool, np.ndarray], rules: _Rules, lists: list[tuple[str, bool]]
) -> _Found:
    """The discovered `{source}_value_*` / `{source}_pattern_*` entries of every row and
    pattern list `(source, bottom)`: the values of the first pattern-k positions of the
    top or the reversed ordering (`ends`), the lists of all sources ranked in one pass."""
    k = rules.pattern_k
    n_rows = ends[False].shape[1]
    values = np.concatenate(
        [rules.values[source][ends[bottom][:k].T] for source, bottom in lists]
    )
    rows, sub, codes, counts = _significant_masks(values, k, rules.mode)
    which, rows = np.divmod(rows, n_rows)  # list, neuron
    source = np.array([_SOURCES.index(name) for name, _ in lists])[which]
    if rules.op == "/":  # ÷ keeps result values, not result patterns
        keep = (source != _SOURCES.index("result")) | (_CODE_MASK[codes] == _FULL_MASK)
        rows, sub, codes, counts, which, source = (
            x[keep] for x in (rows, sub, codes, counts, which, source)
        )
    section = np.array(
        [rules.sections[f"{name}_bottom" if bottom else name] for name, bottom in lists]
    )[which]
    return _Found(
        rows, section * _SECTION + sub, source * _CODE_SPAN + codes, counts / k
    )


def _significant_masks(
    values: np.ndarray, k: int, mode: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The official `most_significant_wildcard_patterns(values, k // 10, 5)` of every row,
    minus the range-like masks.

    Each row's list holds, value by value, the 7 wildcard codes of the value; every code's
    count and first place (the official dict's insertion order) come from `_code_runs` or,
    for very long lists, `_code_table`. The significant codes of a row are then ranked by
    one key (more occurrences, more fixed digits, seen first) and the first 5 kept.

    Arguments:
        values: int [row, k] values in list order.
        k: the pattern k (scores are count / k).
        mode: parity drops range-like masks after taking the first 5; clean before.

    Returns:
        `(row, sub, code, count)` of every kept mask, `sub` its place in the row's list.
    """
    n_rows, length = values.shape
    width = length * len(_MASKS)  # list places per row
    if n_rows == 0 or width == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, empty
    codes = _WILDCARD_CODES[values].reshape(n_rows, width)  # int32
    counted = _code_table if width >= _TABLE_PLACES else _code_runs
    rows, code, count, first = counted(codes, max(k // 10, 1))
    mask = _CODE_MASK[code]
    if mode == "clean":
        keep = ~_range_like(mask)
        rows, count, first, mask = rows[keep], count[keep], first[keep], mask[keep]
    # Rank within the row: more occurrences, then more fixed digits, then seen first.
    rank = ((length - count) * 4 + (3 - _FIXED_DIGITS[mask])) * width + first
    per_row = np.bincount(rows, minlength=n_rows)
    slot = np.arange(rows.size) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    ranked = np.full((n_rows, max(int(per_row.max()), 1)), np.iinfo(np.int64).max)
    ranked[rows, slot] = rank
    if ranked.shape[1] > PATTERNS_KEPT:
        ranked = np.partition(ranked, PATTERNS_KEPT - 1, axis=1)[:, :PATTERNS_KEPT]
    ranked.sort(axis=1)
    rows, sub = np.nonzero(ranked < np.iinfo(np.int64).max)
    rank = ranked[rows, sub]
    code = codes[rows, rank % width]  # the code at its first place
    count = length - rank // width // 4
    if mode == "parity":
        keep = ~_range_like(_CODE_MASK[code])
        rows, sub, code, count = rows[keep], sub[keep], code[keep], count[keep]
    return rows, sub, code, count


def _code_runs(
    codes: np.ndarray, least: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`(row, code, count, first place)` of every code seen at least `least` times in its
    row of `codes` [row, place]: sorting (code, place) keys per row makes every code a run
    whose length is its count and whose first key holds its first place."""
    width = codes.shape[1]
    keys = codes * np.int32(width)  # < 1330 * 7 * 999: int32
    keys += np.arange(width, dtype=np.int32)
    keys.sort(axis=1)
    keys = keys.reshape(-1)
    code = keys // np.int32(width)
    run = np.ones(code.size, bool)
    np.not_equal(code[1:], code[:-1], out=run[1:])
    run[::width] = True  # every row starts a run
    start = np.flatnonzero(run)
    count = np.diff(start, append=code.size)
    keep = count >= least
    start, count = start[keep], count[keep]
    first = (keys[start] - code[start] * np.int32(width)).astype(np.int64)
    return start // width, code[start].astype(np.int64), count, first


def _code_table(
    codes: np.ndarray, least: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`_code_runs` for long lists: one [row, code] table of counts (a bincount) and of
    first places (a minimum over the list)."""
    n_rows, width = codes.shape
    flat = (codes + (np.arange(n_rows) * _CODE_SPAN)[:, None]).reshape(-1)
    counts = np.bincount(flat, minlength=n_rows * _CODE_SPAN)
    first = np.full(counts.size, width)
    np.minimum.at(first, flat, np.tile(np.arange(width), n_rows))
    found = np.flatnonzero(counts >= least)
    rows, code = np.divmod(found, _CODE_SPAN)
    return rows, code, counts[found], first[found]


def _range_like(mask: np.ndarray) -> np.ndarray:
    """The masks "1.." and "12." (the official code leaves them to the range heuristics)."""
    return ((mask & 1) == 1) & ((mask & 4) == 0)


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


@functools.lru_cache(maxsize=64)
def _pattern_id(name: str) -> int:
    """The name id of a discovered pattern or value name (see `_found_name`)."""
    source = name.split("_", 1)[0]
    code = _code_names(source).tolist().index(name)
    return _SOURCES.index(source) * _CODE_SPAN + code


def _multi_values(top: np.ndarray, rules: _Rules) -> _Found:
    """÷: the smallest q whose q most frequent top-1000 results hold >= 95 % of them
    (`top`: intp [position, row] the pairs along the ordering)."""
    part = top[:MULTI_VALUE_TOP].T
    n_rows, total = part.shape
    bins = rules.max_op
    keys = rules.values["result"][part] + bins * np.arange(n_rows)[:, None]
    hist = np.bincount(keys.ravel(), minlength=n_rows * bins).reshape(n_rows, bins)
    by_count = np.argsort(-hist, axis=1, kind="stable")  # ties: smaller result first
    most = max(MULTI_VALUE_SIZES)
    top = np.take_along_axis(hist, by_count[:, :most], axis=1)
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
    # The q results, ascending, packed as (result + 1) digits: the name id of the set.
    chosen = by_count[rows, :most] + 1
    chosen[np.arange(most) >= qs[:, None]] = 0
    chosen.sort(axis=1)  # the unused zeros first, then the results ascending
    name_id = _MULTI_BASE + chosen @ (
        np.int64(_MULTI_DIGIT) ** np.arange(most - 1, -1, -1)
    )
    keep = np.all(name_id[:, None] != _DROPPED_MULTI_IDS, axis=1)
    section = rules.sections["multi"]
    rows, qs, name_id = rows[keep], qs[keep], name_id[keep]
    return _Found(
        rows,
        np.full(rows.size, section * _SECTION),
        name_id,
        scores[rows, qs - 1],
    )


def _multi_id(name: str) -> int:
    """The name id of `result_multi_value_q=[a, b, ...]` (see `_found_name`)."""
    results = [int(x) for x in name.split("=")[1].strip("[]").split(",")]
    packed = 0
    for result in results:
        packed = packed * _MULTI_DIGIT + result + 1
    return _MULTI_BASE + packed


_DROPPED_MULTI_IDS = np.array([_multi_id(n) for n in DIVISION_DROPPED if "multi" in n])


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
    has exactly one entry per neuron, so its block is the neurons in order, and the fixed
    names come in layout order, interleaved only with the discovered names first seen on
    neuron 0: they are copied run by run from `fixed` [name, row]. Only the few discovered
    entries are sorted.
    """
    notes: tuple[str, ...] = ()
    if rules.op == "*":
        notes = _zero_cancelled(layout, fixed, found, rules.mode)
    n_fixed = len(layout.names)
    found_ids, found_index = np.unique(found.name_id, return_inverse=True)
    found_index = found_index.reshape(-1) + n_fixed
    n_names = n_fixed + found_ids.size
    found_key = found.key + found.neuron * (layout.n_sections * _SECTION)
    # Found entries sorted by (name, key): each name's entries are then contiguous.
    by_name = np.lexsort((found_key, found_index))
    f_index, f_key = found_index[by_name], found_key[by_name]
    f_first = np.r_[True, f_index[1:] != f_index[:-1]] if f_index.size else f_index > 0
    first = np.empty(n_names, np.int64)
    first[:n_fixed] = (
        layout.name_keys
    )  # neuron 0's entry (or, without rows, layout order)
    first[f_index[f_first]] = f_key[f_first]
    by_first = np.argsort(first, kind="stable")  # block order: the official name order
    sizes = np.bincount(found_index, minlength=n_names)
    sizes[:n_fixed] = n_rows
    block_sizes = sizes[by_first]
    block_start = np.cumsum(block_sizes) - block_sizes
    start = np.empty(n_names, np.int64)
    start[by_first] = block_start
    total = int(sizes.sum())
    score, name_index, neuron = _entry_arrays(total)
    name_index[:] = np.repeat(np.arange(n_names, dtype=np.int32), block_sizes)
    is_fixed = np.r_[False, by_first < n_fixed, False]
    edges = np.flatnonzero(is_fixed[1:] != is_fixed[:-1]).reshape(-1, 2)
    for lo, hi in edges.tolist():  # runs of consecutive fixed names
        name, count = int(by_first[lo]), hi - lo
        at = slice(int(block_start[lo]), int(block_start[lo]) + count * n_rows)
        score[at] = fixed[name : name + count].ravel()
        neuron[at].reshape(count, n_rows)[:] = np.arange(n_rows, dtype=np.int32)
    rank = np.arange(f_index.size) - np.searchsorted(f_index, f_index)
    at = start[f_index] + rank
    neuron[at] = found.neuron[by_name]
    score[at] = found.score[by_name]
    found_names = np.array([_found_name(i) for i in found_ids.tolist()], object)
    all_names = np.concatenate([layout.name_array, found_names])
    return Classification(
        op=rules.op,
        kind=kind,
        mode=rules.mode,
        n_neurons=n_rows,
        names=tuple(all_names[by_first].tolist()),
        name_index=name_index,
        neuron=neuron,
        score=score,
        notes=notes,
    )


def _entry_arrays(total: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Uninitialised float64 score, int32 name index and int32 neuron arrays of `total`
    entries, views of one allocation: a run's entries take several MB, and one block of
    4 MB or more gets huge pages from numpy, where three separate arrays would fault in
    every 4 kB page anew on each call."""
    buffer = np.empty(16 * total, np.uint8)
    return (
        buffer[: 8 * total].view(np.float64),
        buffer[8 * total : 12 * total].view(np.int32),
        buffer[12 * total :].view(np.int32),
    )


def _zero_cancelled(
    layout: _Layout, fixed: np.ndarray, found: _Found, mode: str
) -> tuple[str, ...]:
    """× post-processing, in place on `fixed` [name, row] and `found.score`: for neurons
    whose `result_value_000` score is 1, zero their zero-related mods and patterns (parity:
    only the neuron's first entry per name, i.e. its top-ordering pattern entry)."""
    value_000 = found.name_id == _pattern_id("result_value_000")
    if not value_000.any():
        if mode == "parity":
            return (
                "x post-processing: no neuron has a result_value_000 entry; the official "
                "classifier raises KeyError('result_value_000') here (treated as a no-op)",
            )
        return ()
    zeroed = np.unique(found.neuron[value_000 & (found.score == 1.0)])
    fixed[np.ix_(layout.zero_cancelled, zeroed)] = 0.0  # one entry per neuron
    patterns = [_pattern_id(name) for name in ZERO_CANCELLED if "pattern" in name]
    is_zeroed = np.zeros(found.neuron.max(initial=0) + 1, bool)
    is_zeroed[zeroed] = True
    hits = np.flatnonzero(
        np.isin(found.name_id, patterns, kind="table") & is_zeroed[found.neuron]
    )
    if mode == "parity":  # `list.index`: the neuron's first entry in each list only
        hits = hits[
            np.lexsort((found.key[hits], found.neuron[hits], found.name_id[hits]))
        ]
        group = (
            found.name_id[hits] * (found.neuron.max(initial=0) + 1) + found.neuron[hits]
        )
        hits = hits[np.r_[True, group[1:] != group[:-1]]] if hits.size else hits
    found.score[hits] = 0.0
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
