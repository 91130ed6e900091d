"""The work of each `jaxinterp` command, as thin calls to library functions.

Each command takes the parsed options as keyword arguments, prints its result and returns
the exit status. Mistakes a user can fix raise `UserError` (or a `ValueError` /
`FileNotFoundError` from the library); `main` prints those in one line.

Importing this module registers the models that packages outside `converters` ship
(`experiments.arith_model` registers `arith-neox`).
"""

import json
import math
import re
import time
from pathlib import Path

import jax
import numpy as np

import experiments.arith_model  # noqa: F401  (registers arith-neox)
from converters import registry, save_pretrained
from converters.hf import check_architecture
from converters.loading import (
    load,
    load_tokenizer,
    source_architecture,
    source_info,
    tokenizer_files,
)
from jaxinterp import run, store
from jaxinterp import taps as taplib
from jaxinterp.generate import greedy

COMPILE_CACHE = "xla"  # under $JAXINTERP_CACHE (default ~/.cache/jaxinterp)


class UserError(Exception):
    """A mistake in the command line that is reported in one line (exit status 2)."""


def enable_compile_cache(directory: str | Path | None = None) -> Path:
    """Turns on JAX's persistent compilation cache for this process.

    Every compiled program is kept, however quick its compile (JAX's default skips those
    under 1 s, most of ours on CPU): the CLI compiles few programs, so the cache stays small
    and a second run of the same command reads them back instead of compiling again. JAX
    never persists a program with a host callback (e.g. `eqx.error_if`).

    Arguments:
        directory: where to keep compiled programs; default `$JAXINTERP_CACHE/xla`
            (`~/.cache/jaxinterp/xla`).

    Returns:
        The directory.
    """
    path = Path(directory or registry.cache_dir() / COMPILE_CACHE).expanduser()
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path


def models(*, long: bool) -> int:
    """`jaxinterp models`: the registry, with what is installed and how to install it."""
    rows = []
    for e in registry.list_models():
        installed = "yes" if registry.is_installed(e.name) else "no"
        size = registry.disk_size(e.name)
        rows.append(
            [e.name, installed, "?" if size is None else mib(size), _license(e.license)]
        )
    table(["name", "installed", "size", "license"], rows)
    print()
    for e in registry.list_models():
        print(f"{e.name}: {e.install}")
        if long:
            print(f"    {e.description}\n    license: {e.license}")
    return 0


def info(model: str, *, dtype: str | None, cache: bool) -> int:
    """`jaxinterp info MODEL`: source, parameter count, dtype and config."""
    kind, path = source_info(model)
    loaded = load(model, dtype=dtype, cache=cache)
    leaves = jax.tree.leaves(loaded)
    stored = sum(x.size for x in leaves)
    cfg = loaded.cfg
    # The checkpoint's own count: without the all-zero biases we keep for weight processing
    # and without the copy of a tied embedding.
    real = sum(x.size for x in leaves if bool(jax.numpy.any(x != 0)))
    if cfg.tied_embeddings:
        real -= loaded.unembed.W_U.size
    dtypes = sorted({str(x.dtype) for x in leaves})
    print(f"model:       {model}")
    print(f"source:      {kind} {path}")
    print(
        f"parameters:  {real:,} ({stored:,} stored: zero biases and tied W_U included)"
    )
    print(f"dtype:       {', '.join(dtypes)} ({mib(nbytes(loaded))})")
    print("config:")
    for key, value in cfg.to_dict().items():
        print(f"  {key:<18} {value}")
    return 0


def generate(
    model: str, prompt: str, *, max_new_tokens: int, dtype: str | None, cache: bool
) -> int:
    """`jaxinterp generate MODEL PROMPT`: prints the greedy continuation only."""
    tokenizer = load_tokenizer(model, cache=cache)
    ids = encode(tokenizer, prompt)
    loaded = load(model, dtype=dtype, cache=cache)
    stop = () if tokenizer.eos_id is None else (tokenizer.eos_id,)
    new = greedy(loaded, ids, max_new_tokens, stop_ids=stop)
    print(tokenizer.decode(new.tolist()))
    return 0


def convert(
    src: str,
    dst: str,
    *,
    fmt: str,
    architecture: str | None,
    dtype: str | None,
    force: bool,
) -> int:
    """`jaxinterp convert SRC DST`: an HF directory (`fmt="hf"`) or an orbax store, with
    the tokenizer when SRC has one. With `force`, DST is replaced as a whole, atomically:
    afterwards it holds only the new output (never a mix with what was there)."""
    kind, path = source_info(src)
    out = Path(dst).expanduser()
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists (pass --force to replace it)")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    architecture = architecture or source_architecture(kind, path)
    if fmt == "hf" and architecture is None:
        raise UserError(f"{src}: unknown source architecture; pass --architecture")
    files = _tokenizer_files(src, kind, path)
    loaded = load(src, dtype=dtype)
    t0 = time.perf_counter()
    if fmt == "orbax":
        metadata = {"source": str(path), "kind": kind}
        if architecture is not None:
            check_architecture(loaded, architecture)  # the store would claim it
            metadata["architecture"] = architecture
        store.save_model(
            loaded, out, metadata=metadata, extra_files=files, overwrite=force
        )
    else:
        save_pretrained(
            loaded,
            out,
            architecture=architecture,
            dtype=dtype,
            extra_files=files,
            overwrite=force,
        )
    print(
        f"wrote {fmt} {out} ({architecture or 'no architecture'}, "
        f"{mib(nbytes(loaded))}) in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def taps(
    model: str,
    prompt: str | None,
    *,
    names: list[str],
    top_k: int,
    list_names: bool,
    dtype: str | None,
    cache: bool,
) -> int:
    """`jaxinterp taps MODEL PROMPT --tap NAME...`: a summary of each captured tap (or,
    with `list_names`, the tap names the model has)."""
    loaded = load(model, dtype=dtype, cache=cache)
    cfg = loaded.cfg
    if list_names:
        available = taplib.available_taps(cfg)
        top = [n for n in available if not n.startswith("blocks.")]
        suffixes = dict.fromkeys(
            n.split(".", 2)[2] for n in available if n.startswith("blocks.")
        )
        print("top-level: " + ", ".join(top))
        print(f"per layer (blocks.L.<name>, L = 0..{cfg.n_layers - 1}):")
        for s in suffixes:
            print(f"  {s}")
        return 0
    if prompt is None or not names:
        raise UserError("taps needs a PROMPT and at least one --tap NAME (or --list)")
    for name in names:
        taplib.parse(name, cfg)  # ValueError with close matches for a misspelt name
    tokenizer = load_tokenizer(model, cache=cache)
    ids = encode(tokenizer, prompt)
    _, captured = run(loaded, ids, capture=names)
    print(f"prompt: {len(ids)} tokens {_quoted_tokens(tokenizer, ids.tolist())}")
    for name in dict.fromkeys(names):
        value = np.asarray(captured[name])
        _print_tap(name, value, taplib.tap_dims(name, cfg), top_k)
    return 0


def arithmetic(
    *,
    model: str,
    mode: str,
    full: bool,
    out: str | None,
    overwrite: bool,
    **options,
) -> int:
    from experiments.arith_heuristics import pipeline

    if model not in pipeline.MODEL_DEFAULTS:
        raise UserError(
            f"the arithmetic pipeline runs on {', '.join(pipeline.MODEL_DEFAULTS)}; "
            f"not {model!r}"
        )
    reduced = dict(
        # one seed on the larger models: patching every head at every position of a
        # few-shot prompt is most of their run time
        patch_seeds=(42, 412) if model == pipeline.SINGLE_TOKEN_MODEL else (42,),
        eval_seeds=(42,),
        dynamics_steps=(611, 1357, 3017, 6707, 10000),
    )
    given = {key: value for key, value in options.items() if value is not None}
    if "op_digits" in given:
        given["op_digits"] = tuple(given["op_digits"])
    try:
        config = pipeline.Config(
            model=model,
            mode=mode,
            **{**pipeline.MODEL_DEFAULTS[model], **({} if full else reduced), **given},
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    if out is None:
        out = f"results/arithmetic/{model}-{mode}{'-full' if full else ''}"
    report = pipeline.run(config, out, overwrite=overwrite)
    print(f"report: {report}")
    print(f"summary: {report.with_name('summary.json')}")
    return 0


def circuit(*, experiment: str, out: str | None, overwrite: bool, **fields) -> int:
    """`jaxinterp lens | induction | ioi | probing`: one classic-circuit experiment."""
    from experiments.circuits import common
    from experiments.circuits.configs import CONFIGS

    try:
        config = CONFIGS[experiment](**fields)
    except ValueError as e:
        raise UserError(str(e)) from None
    out = out or f"results/circuits/{Path(config.model).name}"
    report = common.run_experiment(experiment, config, out, overwrite=overwrite)
    print(f"summary: {Path(out) / experiment / 'summary.json'}")
    print(f"report: {report}")
    return 0


def _tokenizer_files(src: str, kind: str, path: Path) -> dict[str, bytes]:
    """The tokenizer files to write next to a converted model; none when SRC has no
    tokenizer. A tokenizer that is there but unreadable is an error, not skipped."""
    if kind in ("hf", "orbax") and not (path / "tokenizer.json").is_file():
        return {}
    try:
        tokenizer = load_tokenizer(src)
    except ValueError:
        if kind == "gguf":  # a GGUF file without (usable) tokenizer metadata
            return {}
        raise
    return tokenizer_files(tokenizer)


# --- helpers (also used by the tour) -----------------------------------------------------


def encode(tokenizer, text: str) -> np.ndarray:
    """Token ids of `text` as int32; a `UserError` if there are none."""
    ids = tokenizer.encode(text)
    if not ids:
        raise UserError("the prompt is empty after tokenization")
    return np.asarray(ids, np.int32)


def table(header: list[str], rows: list[list[str]]) -> None:
    """Prints left-aligned columns under a header and a rule."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def mib(n: int) -> str:
    """A byte count for people: KiB, MiB or GiB."""
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{math.ceil(n / 1024)} KiB"


def nbytes(model) -> int:
    """Bytes of all arrays of a model."""
    return sum(x.nbytes for x in jax.tree.leaves(model))


def _print_tap(name: str, value: np.ndarray, dims: tuple[str, ...], k: int) -> None:
    v = value.astype(np.float64)
    print(f"\n{name}  [{' '.join(dims)}] {value.shape} {value.dtype}")
    print(
        f"   mean {v.mean():.4g}  std {v.std():.4g}  min {v.min():.4g}  max {v.max():.4g}"
    )
    pos_axis = next((i for i, d in enumerate(dims) if d in ("pos", "query_pos")), None)
    if pos_axis is None:
        return
    at_last = np.take(v, -1, axis=pos_axis)
    rest = [d for i, d in enumerate(dims) if i != pos_axis]
    at = f"{dims[pos_axis]} {value.shape[pos_axis] - 1}"
    flat = at_last.reshape(-1)
    if flat.size == 1:
        print(f"   value at {at}: {flat[0]:.4g}")
        return
    top = np.argsort(-flat, kind="stable")[: min(k, flat.size)]
    entries = []
    for i in top:
        index = np.unravel_index(i, at_last.shape)
        where = ",".join(f"{d}={int(j)}" for d, j in zip(rest, index, strict=True))
        entries.append(f"[{where}] {flat[i]:.4g}")
    print(f"   top {len(top)} at {at}: " + "  ".join(entries))


def _license(text: str) -> str:
    return re.split(r" \(|: |; |\. ", text, maxsplit=1)[0]


def _quoted_tokens(tokenizer, ids: list[int], limit: int = 24) -> str:
    shown = " ".join(repr(tokenizer.decode([i])) for i in ids[:limit])
    return shown + (" ..." if len(ids) > limit else "")


def grid(
    *,
    model: str,
    op: str,
    out: str,
    tap: str,
    layers: list[int] | None,
    max_op: int | None,
    batch_size: int | None,
    mesh: tuple[int, int] | None,
    distributed: bool,
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
) -> int:
    from experiments.arith_heuristics import pipeline
    from experiments.arith_heuristics.circuit import operand_values
    from jaxinterp import sharding
    from jaxinterp.kernels import operand_grid

    joined = (coordinator, num_processes, process_id)
    if distributed or any(v is not None for v in joined):
        sharding.initialize(*joined)  # before anything else touches a device
    if model not in pipeline.MODEL_DEFAULTS:
        raise UserError(
            f"grid builds the arithmetic pipeline's prompts, for "
            f"{', '.join(pipeline.MODEL_DEFAULTS)}; not {model!r}"
        )
    given = {} if max_op is None else {"max_op": max_op}
    config = pipeline.Config(model=model, **pipeline.MODEL_DEFAULTS[model], **given)
    task = pipeline.make_task(config)
    xs, ys = (operand_values(config, op, i) for i in (0, 1))
    on = None if mesh is None else sharding.make_mesh(*mesh)
    result = operand_grid(
        pipeline.load_model(model, mesh=on),
        task.operand_tokens(xs),
        task.operand_tokens(ys),
        **task.grid_template(op),
        tap=tap,
        layers=layers,
        out=out,
        batch_size=batch_size,
        mesh=on,
    )
    if jax.process_index() == 0:
        operands = Path(out) / "operands.json"
        operands.write_text(json.dumps({"op": op, "a": xs.tolist(), "b": ys.tolist()}))
        devices = "1 device" if on is None else f"a {mesh[0]} x {mesh[1]} mesh"
        print(
            f"{model} {op}: {tap} grid {list(result.shape)} [a, b, layer, unit] on "
            f"{devices} ({jax.process_count()} process(es)) -> {out} (zarr; operand "
            f"values in {operands})"
        )
    return 0
