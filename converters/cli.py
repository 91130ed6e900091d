"""The `jaxinterp` command: list, inspect, run, convert and probe local models.

    jaxinterp models                         # registry: installed?, size, license, install
    jaxinterp info smollm2-135m              # config, parameter count, dtype, source
    jaxinterp generate smollm2-135m "The capital of France is" --max-new-tokens 20
    jaxinterp convert smollm2-135m out/smol --format orbax
    jaxinterp taps smollm2-135m "2 + 3 =" --tap blocks.5.mlp.hook_post
    jaxinterp demo                           # the tour on the default model

MODEL is a registry name, a `.gguf` file, an HF directory or an orbax store (see
`converters.load`). The command is thin: it parses arguments and calls library functions.
User mistakes (unknown model, model not installed, unknown tap, bad path, a checkpoint that
cannot be converted) print one line to stderr and exit with status 2; anything else is a bug
and shows its traceback (as does any error with `--debug`).
"""

import argparse
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DEFAULT_MODEL = "smollm2-135m"
DTYPES = ("float32", "bfloat16", "float16")
DEMO_PROMPTS = (
    "The capital of France is",
    "Once upon a time, there was a little",
    "1 + 1 = 2\n2 + 3 = ",
)
DEMO_TAPS = (
    "hook_embed",
    "blocks.0.attn.hook_rot_q",
    "blocks.0.attn.hook_pattern",
    "blocks.0.attn.hook_z",
    "blocks.0.mlp.hook_post",
    "ln_final.hook_normalized",
)


class UserError(Exception):
    """A mistake in the command line that is reported in one line (exit status 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `jaxinterp` command line.

    Arguments:
        argv: the arguments after the program name; default `sys.argv[1:]`.

    Returns:
        The exit status: 0 on success, 2 for usage errors and user mistakes.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or an argparse usage error (already printed)
        return e.code if isinstance(e.code, int) else 2
    try:
        return args.func(args) or 0
    except Exception as e:
        if args.debug or not _is_user_error(e):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"jaxinterp: error: {message}", file=sys.stderr)
        return 2


def _is_user_error(e: Exception) -> bool:
    from converters import ConversionError
    from converters.registry import ModelNotInstalled

    # ValueError covers ConversionError, ChecksumMismatch and unknown tap names. KeyError /
    # IndexError (the other LookupErrors) are left to traceback: they are bugs here.
    user = (UserError, ValueError, ConversionError, ModelNotInstalled)
    files = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)
    return isinstance(e, user + files)


# --- argument parsing --------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxinterp",
        description=(
            "Offline pretrained models for jaxinterp: list the registry, inspect, generate, "
            "convert and capture activations (taps, named as TransformerLens hooks). MODEL "
            "is a registry name (see `jaxinterp models`), a .gguf file, an HF model "
            "directory or an orbax store written by `jaxinterp convert --format orbax`."
        ),
    )
    parser.add_argument(
        "--debug", action="store_true", help="show a traceback for every error"
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    loading = argparse.ArgumentParser(add_help=False)
    loading.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="parameter dtype (default: float32 for GGUF, the checkpoint's otherwise)",
    )
    loading.add_argument(
        "--cache",
        action="store_true",
        help="reuse (or create) a converted copy under $JAXINTERP_CACHE "
        "(default ~/.cache/jaxinterp) to skip dequantization next time",
    )

    p = sub.add_parser(
        "models",
        help="list the model registry",
        description="List registry models: installed?, size, license and install command.",
    )
    p.add_argument("--long", action="store_true", help="also print each description")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "info",
        parents=[loading],
        help="config, parameter count and dtype of a model",
        description="Load MODEL and print its config, parameter count, dtype and source.",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="registry name, .gguf file, HF directory or orbax store",
    )
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "generate",
        parents=[loading],
        help="greedy continuation of a prompt",
        description="Greedy (argmax) continuation of PROMPT; prints only the new text. "
        "Stops early at the tokenizer's end-of-sequence token.",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="registry name, .gguf file, HF directory or orbax store",
    )
    p.add_argument(
        "prompt", metavar="PROMPT", help="the text to continue (no chat template)"
    )
    p.add_argument(
        "--max-new-tokens", type=_positive_int, default=32, metavar="N", help="(32)"
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "convert",
        help="convert a model to an HF safetensors directory or an orbax store",
        description="Convert SRC (registry name, .gguf, HF directory or store) and write "
        "DST: an HF directory (config.json + model.safetensors, loadable by transformers) "
        "or an orbax store (fast to load with jaxinterp). The tokenizer is written too "
        "when SRC has one.",
    )
    p.add_argument(
        "src",
        metavar="SRC",
        help="registry name, .gguf file, HF directory or orbax store",
    )
    p.add_argument(
        "dst", metavar="DST", help="output directory (must not exist unless --force)"
    )
    p.add_argument(
        "--format", choices=("hf", "orbax"), default="hf", help="output format (hf)"
    )
    p.add_argument(
        "--architecture",
        metavar="ARCH",
        help="HF architecture to export as, e.g. LlamaForCausalLM (default: SRC's)",
    )
    p.add_argument("--dtype", choices=DTYPES, default=None, help="output dtype")
    p.add_argument("--force", action="store_true", help="replace an existing DST")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "taps",
        parents=[loading],
        help="capture activations and summarise them",
        description="Run MODEL on PROMPT capturing the named taps (TransformerLens hook "
        "names, e.g. blocks.3.mlp.hook_post, blocks.0.attn.hook_pattern, ln_final."
        "hook_normalized) and print shape, dtype, mean/std/min/max and the top entries at "
        "the last position of each.",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="registry name, .gguf file, HF directory or orbax store",
    )
    p.add_argument("prompt", metavar="PROMPT", nargs="?", help="the text to run")
    p.add_argument(
        "--tap",
        action="append",
        default=[],
        metavar="NAME",
        help="a tap name; repeat for several",
    )
    p.add_argument("--top-k", type=_positive_int, default=5, metavar="K", help="(5)")
    p.add_argument(
        "--list", action="store_true", help="list the tap names this model has and exit"
    )
    p.set_defaults(func=cmd_taps)

    p = sub.add_parser(
        "demo",
        parents=[loading],
        help=f"a tour on a real model ({DEFAULT_MODEL})",
        description="Load MODEL through the registry and show next-token predictions, a "
        "greedy continuation, a logit-lens table and a few captured taps, with timings.",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        nargs="?",
        default=DEFAULT_MODEL,
        help=f"({DEFAULT_MODEL})",
    )
    p.add_argument(
        "--max-new-tokens", type=_positive_int, default=16, metavar="N", help="(16)"
    )
    p.set_defaults(func=cmd_demo)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# --- commands ----------------------------------------------------------------------------


def cmd_models(args) -> int:
    from converters import registry

    rows = []
    for e in registry.list_models():
        installed = registry.is_installed(e.name)
        rows.append(
            [e.name, "yes" if installed else "no", _size(e), _short_license(e.license)]
        )
    _table(["name", "installed", "size", "license"], rows)
    print()
    for e in registry.list_models():
        print(f"{e.name}: {e.install}")
        if args.long:
            print(f"    {e.description}\n    license: {e.license}")
    return 0


def cmd_info(args) -> int:
    import jax

    from converters.loading import load, source_info

    kind, path = source_info(args.model)
    model = load(args.model, dtype=args.dtype, cache=args.cache)
    leaves = jax.tree.leaves(model)
    stored = sum(x.size for x in leaves)
    cfg = model.cfg
    # The checkpoint's own count: without the all-zero biases we keep for weight processing
    # and without the copy of a tied embedding.
    real = sum(x.size for x in leaves if bool(jax.numpy.any(x != 0)))
    if cfg.tied_embeddings:
        real -= model.unembed.W_U.size
    dtypes = sorted({str(x.dtype) for x in leaves})
    print(f"model:       {args.model}")
    print(f"source:      {kind} {path}")
    print(
        f"parameters:  {real:,} ({stored:,} stored: zero biases and tied W_U included)"
    )
    print(f"dtype:       {', '.join(dtypes)} ({_mib(sum(x.nbytes for x in leaves))})")
    print("config:")
    for key, value in cfg.to_dict().items():
        print(f"  {key:<18} {value}")
    return 0


def cmd_generate(args) -> int:
    from converters.loading import load, load_tokenizer
    from jaxinterp.generate import greedy

    tokenizer = load_tokenizer(args.model, cache=args.cache)
    ids = tokenizer.encode(args.prompt)
    if not ids:
        raise UserError("the prompt is empty after tokenization")
    model = load(args.model, dtype=args.dtype, cache=args.cache)
    stop = () if tokenizer.eos_id is None else (tokenizer.eos_id,)
    new = greedy(model, np.asarray(ids, np.int32), args.max_new_tokens, stop_ids=stop)
    print(tokenizer.decode(new.tolist()))
    return 0


def cmd_convert(args) -> int:
    from converters import save_pretrained
    from converters.loading import (
        load,
        load_tokenizer,
        source_architecture,
        source_info,
    )
    from converters.loading import tokenizer_files as tokenizer_files_of
    from jaxinterp import store

    kind, path = source_info(args.src)
    dst = Path(args.dst).expanduser()
    if dst.exists() and not args.force:
        raise FileExistsError(f"{dst} already exists (pass --force to replace it)")
    if dst.exists() and not dst.is_dir():
        raise NotADirectoryError(f"{dst} exists and is not a directory")
    architecture = args.architecture or source_architecture(kind, path)
    if args.format == "hf" and architecture is None:
        raise UserError(f"{args.src}: unknown source architecture; pass --architecture")
    try:
        tokenizer_files = tokenizer_files_of(load_tokenizer(args.src))
    except (ValueError, FileNotFoundError):  # a source without a tokenizer
        tokenizer_files = {}
    model = load(args.src, dtype=args.dtype)
    t0 = time.perf_counter()
    if args.format == "orbax":
        metadata = {"source": str(path), "kind": kind}
        if architecture is not None:
            metadata["architecture"] = architecture
        store.save_model(
            model,
            dst,
            metadata=metadata,
            extra_files=tokenizer_files,
            overwrite=args.force,
        )
    else:
        save_pretrained(model, dst, architecture=architecture, dtype=args.dtype)
        for name, data in tokenizer_files.items():
            (dst / name).write_bytes(data)
    print(
        f"wrote {args.format} {dst} ({architecture or 'no architecture'}, "
        f"{_mib(_nbytes(model))}) in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def cmd_taps(args) -> int:
    from converters.loading import load, load_tokenizer
    from jaxinterp import run, taps

    model = load(args.model, dtype=args.dtype, cache=args.cache)
    cfg = model.cfg
    if args.list:
        names = taps.available_taps(cfg)
        top = [n for n in names if not n.startswith("blocks.")]
        suffixes = dict.fromkeys(
            n.split(".", 2)[2] for n in names if n.startswith("blocks.")
        )
        print("top-level: " + ", ".join(top))
        print(f"per layer (blocks.L.<name>, L = 0..{cfg.n_layers - 1}):")
        for s in suffixes:
            print(f"  {s}")
        return 0
    if args.prompt is None or not args.tap:
        raise UserError("taps needs a PROMPT and at least one --tap NAME (or --list)")
    for name in args.tap:
        taps.parse(name, cfg)  # ValueError with close matches for a misspelt name
    tokenizer = load_tokenizer(args.model, cache=args.cache)
    ids = tokenizer.encode(args.prompt)
    if not ids:
        raise UserError("the prompt is empty after tokenization")
    _, cache = run(model, np.asarray(ids, np.int32), capture=args.tap)
    print(f"prompt: {len(ids)} tokens {_quoted_tokens(tokenizer, ids)}")
    for name in dict.fromkeys(args.tap):
        _print_tap(name, np.asarray(cache[name]), taps.tap_dims(name, cfg), args.top_k)
    return 0


def cmd_demo(args) -> int:
    import jax

    from converters.loading import load, load_tokenizer, source_info
    from jaxinterp import run, taps
    from jaxinterp.generate import greedy
    from jaxinterp.kernels.layers import unembed

    timings: dict[str, float] = {}
    start = time.perf_counter()

    def lap(name: str, t0: float) -> None:
        timings[name] = time.perf_counter() - t0

    t0 = time.perf_counter()
    kind, path = source_info(args.model)
    tokenizer = load_tokenizer(args.model, cache=args.cache)
    lap("tokenizer", t0)
    t0 = time.perf_counter()
    model = load(args.model, dtype=args.dtype, cache=args.cache)
    jax.block_until_ready(model)
    lap("load model" + (" (cache)" if args.cache else ""), t0)
    cfg = model.cfg
    dtype = sorted({str(x.dtype) for x in jax.tree.leaves(model)})
    print(f"== {args.model}: {kind} {path}")
    print(
        f"   {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads / "
        f"{cfg.n_kv_heads} KV heads, d_vocab {cfg.d_vocab}, {', '.join(dtype)}, "
        f"{_mib(_nbytes(model))}"
    )

    # All prompts in one batch, right-padded: a causal model's logits at a prompt's last
    # real position do not see the padding after it, so one compile serves every prompt.
    prompts = [tokenizer.encode(p) for p in DEMO_PROMPTS]
    lengths = [len(p) for p in prompts]
    width = max(lengths)
    batch = np.zeros((len(prompts), width), np.int32)
    for i, ids in enumerate(prompts):
        batch[i, : len(ids)] = ids
    lens_names = [f"blocks.{l}.hook_resid_post" for l in range(cfg.n_layers)]
    available = set(taps.available_taps(cfg))
    shown = [name for name in DEMO_TAPS if name in available]
    t0 = time.perf_counter()
    logits, cache = run(model, batch, capture=[*lens_names, *shown])
    logits = np.asarray(logits, np.float32)
    lap("forward (compile + run)", t0)
    t0 = time.perf_counter()
    jax.block_until_ready(run(model, batch, capture=[*lens_names, *shown]))
    lap("forward (run again)", t0)

    print(f"\n== next-token predictions (top 5, batch of {len(prompts)} prompts)")
    for text, n, row in zip(DEMO_PROMPTS, lengths, logits, strict=True):
        probs = _softmax(row[n - 1])
        top = np.argsort(-probs)[:5]
        print(f"{text!r}")
        print(
            "   "
            + "  ".join(f"{tokenizer.decode([int(t)])!r} {probs[t]:.3f}" for t in top)
        )

    t0 = time.perf_counter()
    stop = () if tokenizer.eos_id is None else (tokenizer.eos_id,)
    new = greedy(
        model, np.asarray(prompts[0], np.int32), args.max_new_tokens, stop_ids=stop
    )
    lap(f"greedy {args.max_new_tokens} tokens (compile + run)", t0)
    print(
        f"\n== greedy continuation\n{DEMO_PROMPTS[0]!r} -> {tokenizer.decode(new.tolist())!r}"
    )

    # Logit lens: the residual stream after each block, at the last position of prompt 0,
    # read through the final norm and the unembedding.
    t0 = time.perf_counter()
    last = lengths[0] - 1
    resid = jax.numpy.stack([cache[name][0, last] for name in lens_names])
    lens = np.asarray(unembed(model, resid), np.float32)
    lap("logit lens", t0)
    final = int(np.argmax(logits[0, last]))
    print(
        f"\n== logit lens: {DEMO_PROMPTS[0]!r}, last position, blocks.L.hook_resid_post"
        " -> ln_final -> W_U"
    )
    rows = []
    for l, row in enumerate(lens):
        probs = _softmax(row)
        top = int(np.argmax(probs))
        rows.append(
            [
                str(l),
                repr(tokenizer.decode([top])),
                f"{probs[top]:.3f}",
                f"{probs[final]:.3f}",
            ]
        )
    _table(["layer", "top token", "p(top)", f"p({tokenizer.decode([final])!r})"], rows)

    print(f"\n== captured taps (batch {len(prompts)}, padded to {width} tokens)")
    for name in shown:
        value = cache[name]
        print(f"   {name:<28} {tuple(value.shape)} {value.dtype}")

    timings["total"] = time.perf_counter() - start
    print("\n== timings (s)")
    for name, seconds in timings.items():
        print(f"   {name:<40} {seconds:6.2f}")
    return 0


# --- helpers -----------------------------------------------------------------------------


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


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _size(entry) -> str:
    from converters import registry

    source = entry.source
    if isinstance(source, registry.PackageFile | registry.JoinedParts):
        return _mib(source.size)
    path = registry.REPO_ROOT / source.path
    if not path.is_dir():
        return "?"
    return _mib(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()))


def _short_license(text: str) -> str:
    return re.split(r" \(|: |; |\. ", text, maxsplit=1)[0]


def _mib(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{math.ceil(n / 1024)} KiB"


def _nbytes(model) -> int:
    import jax

    return sum(x.nbytes for x in jax.tree.leaves(model))


def _quoted_tokens(tokenizer, ids: list[int], limit: int = 24) -> str:
    shown = " ".join(repr(tokenizer.decode([i])) for i in ids[:limit])
    return shown + (" ..." if len(ids) > limit else "")


if __name__ == "__main__":
    sys.exit(main())
