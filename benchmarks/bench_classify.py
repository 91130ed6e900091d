"""Neuron -> heuristic classifier: ours (numpy, vectorised) vs the official one, per neuron.

    .venv/bin/python benchmarks/bench_classify.py                        # ours only
    .venv/bin/python benchmarks/bench_classify.py --official PATH        # all four operators
    .venv/bin/python benchmarks/bench_classify.py --official PATH --op '*' --official-neurons 64

PATH is a checkout or a bare git mirror of technion-cs-nlp/llm-arithmetic-heuristics. Its
`heuristics_classification.py` is loaded from that path with the one fix that makes it run (the
local variable `range` renamed back to `region`, in memory only); `safe_eval` and
`most_significant_wildcard_patterns` come from its `general_utils.py`, without that module's
heavy imports.

Maps: for every operator, `--neurons` rows over the legal pairs (max_op = 300, S =
`--max-single-token`), each a planted heuristic (an operand/result modulus, range, value,
pattern, identical operands, a ÷ multi-value set, × results 0) plus noise, made tie-free by
replacing values with their ranks. The same maps go to both classifiers as K maps and, with
other planted heuristics, as KV maps (the K run with `check_bottom`, as the Llama3-8B notebook
does). The official classifier, slow, gets the first `--official-neurons` rows; ours the same
rows (their `matched(0.6)` dictionaries must be identical) and then all `--neurons` rows.

Times are wall-clock. Ours: "set-up" is the once-per-pair-set work of the first call (the K
call; the KV call reuses it), "ms/neuron" the median of `--repeat` further calls on all
`--neurons` rows, divided by that number (the argsort included). Official: "k cache" is its
once-per-run counting of every range's k (a `safe_eval` per pair and range), filled by
classifying row 0 alone; "ms/neuron" is then `classify_heuristic_neurons` on its rows with that
cache, divided by their number; "topk ms/neuron" the per-neuron preparation of its inputs
(`torch.topk` and the pair/result lists of one neuron, as `script_analyze_model_heuristics`
does). The speed-up is official / ours per neuron, without and with that preparation (ours
includes its own ordering). The machine's load average is printed before and after.
"""

import argparse
import ast
import os
import re
import subprocess
import sys
import time
import types
from collections.abc import Callable

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from experiments.arith_heuristics.classify import classify  # noqa: E402
from experiments.arith_heuristics.prompts import OPERATORS, legal_prompts  # noqa: E402


def read_official(path: str, name: str) -> str:
    """One file of the official repo from a checkout or a bare mirror (`git show HEAD:`)."""
    if os.path.isfile(os.path.join(path, name)):
        with open(os.path.join(path, name), encoding="utf-8") as f:
            return f.read()
    res = subprocess.run(
        ["git", f"--git-dir={path}", "show", f"HEAD:{name}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise FileNotFoundError(f"{name} not found in {path}: {res.stderr.strip()}")
    return res.stdout


_RANGE_LOCAL = re.compile(r"\brange\b(?!\()")  # the name `range`, not a call of it


def fix_range_name(source: str) -> str:
    """The one fix: inside `classify_heuristic_neurons`, the local variable `range` (which
    makes the first `range(0, n)` call raise UnboundLocalError) is renamed `region`."""
    tree = ast.parse(source)
    func = next(
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and node.name == "classify_heuristic_neurons"
    )
    lines = source.splitlines(keepends=True)
    total = 0
    for i in range(func.lineno - 1, func.end_lineno):
        code, hash_, comment = lines[i].partition("#")
        code, n = _RANGE_LOCAL.subn("region", code)
        lines[i], total = code + hash_ + comment, total + n
    if total != 14:  # 3 assignments, 5 + 5 + 4 uses (commit e40cb86 / eb857d0)
        raise ValueError(
            f"unexpected official source: {total} uses of the local 'range'"
        )
    return "".join(lines)


def load_official(path: str) -> types.ModuleType:
    """The official `heuristics_classification` module, fixed, with minimal dependencies."""
    from collections import defaultdict

    import torch

    general = types.ModuleType("general_utils")
    general.__dict__.update(defaultdict=defaultdict, torch=torch)
    _exec_defs(
        read_official(path, "general_utils.py"),
        {"safe_eval", "most_significant_wildcard_patterns"},
        general,
    )
    prompts = types.ModuleType("prompt_generation")
    _exec_defs(
        read_official(path, "prompt_generation.py"),
        {"OPERATORS", "OPERATOR_NAMES"},
        prompts,
    )
    source = fix_range_name(read_official(path, "heuristics_classification.py"))
    module = types.ModuleType("official_heuristics_classification")
    saved = {
        name: sys.modules.get(name) for name in ("general_utils", "prompt_generation")
    }
    sys.modules.update(general_utils=general, prompt_generation=prompts)
    try:
        exec(
            compile(source, os.path.join(path, "heuristics_classification.py"), "exec"),
            module.__dict__,
        )
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    module.safe_eval = general.safe_eval
    return module


def load_official_association(path: str) -> Callable[[str, str], bool]:
    """The official `heuristics_analysis.is_associated_heuristic(name, prompt)` (it needs
    only `re`), for checking `classify.associated`."""
    module = types.ModuleType("official_heuristics_analysis")
    module.re = re
    _exec_defs(
        read_official(path, "heuristics_analysis.py"),
        {"is_associated_heuristic"},
        module,
    )
    return module.is_associated_heuristic


def _exec_defs(source: str, wanted: set[str], module: types.ModuleType) -> None:
    """Execute only the top-level functions / assignments named in `wanted`."""
    tree = ast.parse(source)
    keep = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in wanted:
            keep.append(node)
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id in wanted for t in node.targets
        ):
            keep.append(node)
    found = {getattr(n, "name", None) or n.targets[0].id for n in keep}
    if found != wanted:
        raise ValueError(f"official source lacks {sorted(wanted - found)}")
    exec(compile(ast.Module(keep, []), module.__name__, "exec"), module.__dict__)


def run_official(
    official: types.ModuleType,
    maps: np.ndarray,
    pairs: np.ndarray,
    op: str,
    *,
    max_single_token: int,
    check_bottom: bool,
    max_op: int = 300,
    warm_cache: bool = False,
) -> tuple[dict, float, float, float]:
    """The official classifier on our maps, inputs built as `script_analyze_model_heuristics`.

    Arguments:
        warm_cache: first fill the official k cache (range counts, one `safe_eval` per pair
            and range, paid once per run) by classifying row 0 alone, and time that apart.
            The timed run then sees the same cache it would have built itself.

    Returns:
        `(dict name -> [(layer=0, row, score)], prep s, cache s, classify s, topk s)`: prep
        includes topk, the per-neuron part of it.
    """
    import torch

    t = time.perf_counter()
    pair_list = [tuple(p) for p in pairs.tolist()]
    results = [official.safe_eval(f"{a}{op}{b}") for a, b in pair_list]
    t_topk = time.perf_counter()
    top_pairs, top_results = {}, {}
    for row in range(maps.shape[0]):
        idx = torch.from_numpy(maps[row]).topk(len(pair_list)).indices.tolist()
        top_pairs[(0, row)] = [list(pair_list[i]) for i in idx]
        top_results[(0, row)] = [results[i] for i in idx]
    topk = time.perf_counter() - t_topk
    data = official.HeuristicAnalysisData(
        also_check_bottom_results=check_bottom,
        op1_op2_pairs=pair_list,
        top_op1_op2_indices=top_pairs,
        top_results=top_results,
        max_op=max_op,
        max_single_token=max_single_token,
        operator_idx=OPERATORS.index(op),
        k_per_heuristic_cache={},
    )
    prep = time.perf_counter() - t
    t = time.perf_counter()
    if warm_cache:
        try:
            official.classify_heuristic_neurons([(0, 0)], data, verbose=False)
        except KeyError:  # × post-processing without result_value_000; cache is full
            pass
    cache = time.perf_counter() - t
    t = time.perf_counter()
    matches = official.classify_heuristic_neurons(
        [(0, row) for row in range(maps.shape[0])], data, verbose=False
    )
    return matches, prep, cache, time.perf_counter() - t, topk


def official_matched(matches: dict, threshold: float = 0.6) -> dict:
    """The official dict thresholded as `heuristics_analysis` does, rows as neurons."""
    return {
        name: [(n, s) for (_, n, s) in entries if s >= threshold]
        for name, entries in matches.items()
    }


def legal_pairs(op: str, max_single_token: int) -> np.ndarray:
    prompts = legal_prompts(op, max_single_token=max_single_token)
    return np.array([(p.op1, p.op2) for p in prompts], np.int64)


def planted_maps(pairs: np.ndarray, op: str, n_neurons: int, seed: int) -> np.ndarray:
    """Tie-free float32 maps: a random planted heuristic (or none) + Gaussian noise, ranked.

    For × the first row always has the zero results on top: without any `result_value_000`
    entry the official post-processing raises KeyError.
    """
    rng = np.random.default_rng(seed)
    a, b = pairs[:, 0], pairs[:, 1]
    r = {"+": a + b, "-": a - b, "*": a * b, "/": a // np.maximum(b, 1)}[op]
    maps = np.empty((n_neurons, len(pairs)), np.float32)
    for row in range(n_neurons):
        n = int(rng.integers(2, 11))
        m = int(rng.integers(0, n))
        lo = int(rng.integers(0, 250))
        v = (a, b, r)[int(rng.integers(0, 3))]
        features = [
            v % n == m,
            (v >= lo) & (v < lo + int(rng.integers(5, 60))),
            v % 10 == m,
            (v // 10) % 10 == m,
            v == int(rng.choice(v)),
            a == b,
            (a % n == m) & (b % n == m),
            np.isin(r, rng.choice(np.unique(r)[:12], size=2, replace=False)),
            r == 0,
            np.zeros(len(pairs), bool),
        ]
        pick = int(rng.integers(0, len(features)))
        scale = float(rng.uniform(0.5, 4.0))
        sign = -1.0 if rng.random() < 0.5 else 1.0  # negative: for the bottom ordering
        if op == "*" and row == 0:
            pick, scale, sign = 8, 8.0, 1.0  # features[8]: r == 0
        value = sign * (scale * features[pick] + rng.standard_normal(len(pairs)))
        ranks = np.empty(len(pairs), np.float32)
        ranks[np.argsort(value, kind="stable")] = np.arange(
            len(pairs), dtype=np.float32
        )
        maps[row] = (ranks - len(pairs) / 2) / len(pairs)
    assert all(np.unique(row).size == row.size for row in maps), "maps must be tie-free"
    return maps


def time_ours(
    maps: np.ndarray, pairs: np.ndarray, op: str, kind: str, bottom: bool, args
) -> tuple[float, float]:
    """`(first call s, median s of --repeat further calls)` of our classifier on all maps."""
    run = {
        "kind": kind,
        "max_single_token": args.max_single_token,
        "mode": args.mode,
        "check_bottom": bottom,
    }
    t = time.perf_counter()
    classify(maps, pairs, op, **run)
    first = time.perf_counter() - t
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        classify(maps, pairs, op, **run)
        times.append(time.perf_counter() - t)
    return first, float(np.median(times))


def load() -> str:
    """The 1-minute load average and the number of CPUs, e.g. "load 1.02 on 2 CPUs"."""
    return f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--official", default=None, help="official repo checkout or git mirror"
    )
    ap.add_argument(
        "--neurons", type=int, default=256, help="rows per operator timed for ours"
    )
    ap.add_argument(
        "--official-neurons",
        type=int,
        default=16,
        help="first rows given to the official classifier (and compared)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="timed calls of ours")
    ap.add_argument(
        "--op", choices=OPERATORS, action="append", help="default: all four"
    )
    ap.add_argument("--max-single-token", type=int, default=999)
    ap.add_argument("--mode", choices=("parity", "clean"), default="parity")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.official and args.mode != "parity":
        ap.error("--official compares parity mode only")
    n_official = min(args.official_neurons, args.neurons)
    official = load_official(args.official) if args.official else None
    s = args.max_single_token
    print(
        f"S = {s}, mode {args.mode}, K maps with bottom + KV maps; ours on {args.neurons}"
        f" neurons, the official on {n_official}; {load()}",
        flush=True,
    )
    print(
        "| op | pairs | map | ours set-up s | ours ms/neuron | official k cache s "
        "| official ms/neuron | speed-up | official topk ms/neuron | speed-up with topk "
        "| labels identical |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for op in args.op or OPERATORS:
        pairs = legal_pairs(op, s)
        for kind, bottom, seed in (
            ("K", True, args.seed),
            ("KV", False, args.seed + 1),
        ):
            maps = planted_maps(
                pairs, op, args.neurons, seed + 10 * OPERATORS.index(op)
            )
            first, steady = time_ours(maps, pairs, op, kind, bottom, args)
            ours = 1e3 * steady / args.neurons  # ms per neuron
            setup = max(first - steady, 0.0)  # the KV call reuses the K call's set-up
            row = f"| {op} | {len(pairs)} | {kind} | {setup:.2f} | {ours:.3f} |"
            if official is None:
                print(row + " |" * 6, flush=True)
                continue
            matches, _, cache, theirs, topk = run_official(
                official,
                maps[:n_official],
                pairs,
                op,
                max_single_token=s,
                check_bottom=bottom,
                warm_cache=True,
            )
            mine = classify(
                maps[:n_official],
                pairs,
                op,
                kind=kind,
                max_single_token=s,
                check_bottom=bottom,
            )
            same = mine.matched(0.6) == official_matched(matches)
            official_ms = 1e3 * theirs / n_official
            topk_ms = 1e3 * topk / n_official
            print(
                row + f" {cache:.1f} | {official_ms:.1f} | {official_ms / ours:.0f}x | "
                f"{topk_ms:.1f} | {(official_ms + topk_ms) / ours:.0f}x | {same} |",
                flush=True,
            )
    print(f"\n{load()}")


if __name__ == "__main__":
    main()
