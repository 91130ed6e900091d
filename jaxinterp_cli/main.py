"""The `jaxinterp` command: parse the command line and dispatch, nothing else.

    jaxinterp models                         # registry: installed?, size, license, install
    jaxinterp info smollm2-135m              # config, parameter count, dtype, source
    jaxinterp generate smollm2-135m "The capital of France is" --max-new-tokens 20
    jaxinterp convert smollm2-135m out/smol --format orbax
    jaxinterp taps smollm2-135m "2 + 3 =" --tap blocks.5.mlp.hook_post
    jaxinterp demo                           # the tour on the default model
    jaxinterp arithmetic                     # the paper's pipeline on arith-neox, report
    jaxinterp induction                      # classic circuits on SmolLM2 (also: lens,
                                             #   ioi, probing), one report

MODEL is a registry name, a `.gguf` file, an HF directory or an orbax store (see
`converters.load`). Each command is a function of `jaxinterp_cli.commands` (`demo`:
`jaxinterp_cli.tour`) called with the parsed options as keyword arguments.

User mistakes print one line to stderr and exit with status 2; anything else is a bug and
shows its traceback (as does any error with `--debug`). Which errors are user mistakes is
decided by exception class alone (`_is_user_error`), never case by case:

* `ValueError`: the library's class for bad input. `ConversionError` (a checkpoint or an
  export that cannot be converted faithfully, a non-float dtype, an unreadable or unsafe
  `pytorch_model.bin`), `jaxinterp.store.StoreError` (a damaged or inconsistent store),
  `ChecksumMismatch`, unknown tap names, malformed JSON.
* `OSError`: a missing or existing path, permissions, a full disk: the environment.
* `ModelNotInstalled` and `commands.UserError`.

The library keeps its side of this contract at its boundaries: where third-party code
raises something else for bad input (torch's unpickler, orbax, einops), it is translated
into one of these with a message that names the file and the entry. So a new kind of bad
input needs a fix where it is read, not a new `except` here.

JAX's persistent compilation cache is on unless `--no-compile-cache` is given: compiled XLA
programs are kept under `$JAXINTERP_CACHE/xla` (default `~/.cache/jaxinterp/xla`), so a
second run of the same command skips most compilation.
"""

import argparse
import sys
from collections.abc import Callable, Sequence

DEFAULT_MODEL = "smollm2-135m"
DTYPES = ("float32", "bfloat16", "float16")
MODEL_HELP = "registry name, .gguf file, HF directory or orbax store"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `jaxinterp` command line.

    Arguments:
        argv: the arguments after the program name; default `sys.argv[1:]`.

    Returns:
        The exit status: 0 on success, 2 for usage errors and user mistakes.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or an argparse usage error (already printed)
        return e.code if isinstance(e.code, int) else 2
    options = vars(args)
    name = options.pop("command")
    debug = options.pop("debug")
    compile_cache = not options.pop("no_compile_cache")
    try:
        # Imported only now: --help and usage errors never import jax.
        from . import commands

        if compile_cache:
            commands.enable_compile_cache()
        return _command(name)(**options) or 0
    except Exception as e:
        if debug or not _is_user_error(e):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"jaxinterp: error: {message}", file=sys.stderr)
        return 2


def _count_pair(text: str) -> tuple[int, int]:
    try:
        a, b = (_positive_int(part) for part in text.split(","))
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"expected two positive counts like 2,2, got {text!r}"
        ) from None
    return a, b


def _command(name: str) -> Callable[..., int | None]:
    if name == "demo":
        from .tour import demo

        return demo
    from . import commands

    return getattr(commands, name)


def _is_user_error(e: Exception) -> bool:
    from converters.registry import ModelNotInstalled

    from .commands import UserError

    # See the module docstring. KeyError / IndexError (the other LookupErrors), TypeError,
    # AttributeError, RuntimeError, ... are left to traceback: from this library they are
    # bugs (bad input is translated into ValueError where it is read).
    return isinstance(e, (UserError, ValueError, OSError, ModelNotInstalled))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; each command sets `command` (a function name) and the keyword
    arguments of that function.

    Returns:
        The `jaxinterp` parser.
    """
    parser = argparse.ArgumentParser(
        prog="jaxinterp",
        description=(
            "Offline pretrained models for jaxinterp: list the registry, inspect, generate, "
            "convert and capture activations (taps, named as TransformerLens hooks). MODEL "
            "is a registry name (see `jaxinterp models`), a .gguf file, an HF model "
            "directory or an orbax store written by `jaxinterp convert --format orbax`."
        ),
    )
    _run_options(parser, default=False)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    # Accepted after the command too; SUPPRESS keeps a value given before the command.
    run_options = argparse.ArgumentParser(add_help=False)
    _run_options(run_options, default=argparse.SUPPRESS)

    loading = argparse.ArgumentParser(add_help=False, parents=[run_options])
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
        parents=[run_options],
        help="list the model registry",
        description="List registry models: installed?, size, license and install command.",
    )
    p.add_argument("--long", action="store_true", help="also print each description")
    p.set_defaults(command="models")

    p = sub.add_parser(
        "info",
        parents=[loading],
        help="config, parameter count and dtype of a model",
        description="Load MODEL and print its config, parameter count, dtype and source.",
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.set_defaults(command="info")

    p = sub.add_parser(
        "generate",
        parents=[loading],
        help="greedy continuation of a prompt",
        description="Greedy (argmax) continuation of PROMPT; prints only the new text. "
        "Stops early at the tokenizer's end-of-sequence token.",
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument(
        "prompt", metavar="PROMPT", help="the text to continue (no chat template)"
    )
    p.add_argument(
        "--max-new-tokens", type=_positive_int, default=32, metavar="N", help="(32)"
    )
    p.set_defaults(command="generate")

    p = sub.add_parser(
        "convert",
        parents=[run_options],
        help="convert a model to an HF safetensors directory or an orbax store",
        description="Convert SRC (registry name, .gguf, HF directory or store) and write "
        "DST: an HF directory (config.json + model.safetensors, loadable by transformers) "
        "or an orbax store (fast to load with jaxinterp). The tokenizer is written too "
        "when SRC has one.",
    )
    p.add_argument("src", metavar="SRC", help=MODEL_HELP)
    p.add_argument(
        "dst", metavar="DST", help="output directory (must not exist unless --force)"
    )
    p.add_argument(
        "--format",
        dest="fmt",
        choices=("hf", "orbax"),
        default="hf",
        help="output format (hf)",
    )
    p.add_argument(
        "--architecture",
        metavar="ARCH",
        help="HF architecture to export as, e.g. LlamaForCausalLM (default: SRC's)",
    )
    p.add_argument("--dtype", choices=DTYPES, default=None, help="output dtype")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing DST as a whole (atomically; none of its files survive)",
    )
    p.set_defaults(command="convert")

    p = sub.add_parser(
        "taps",
        parents=[loading],
        help="capture activations and summarise them",
        description="Run MODEL on PROMPT capturing the named taps (TransformerLens hook "
        "names, e.g. blocks.3.mlp.hook_post, blocks.0.attn.hook_pattern, ln_final."
        "hook_normalized) and print shape, dtype, mean/std/min/max and the top entries at "
        "the last position of each.",
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("prompt", metavar="PROMPT", nargs="?", help="the text to run")
    p.add_argument(
        "--tap",
        dest="names",
        action="append",
        default=[],
        metavar="NAME",
        help="a tap name; repeat for several",
    )
    p.add_argument("--top-k", type=_positive_int, default=5, metavar="K", help="(5)")
    p.add_argument(
        "--list",
        dest="list_names",
        action="store_true",
        help="list the tap names this model has and exit",
    )
    p.set_defaults(command="taps")

    p = sub.add_parser(
        "grid",
        parents=[run_options],
        help="an operand grid (K maps) of an arithmetic model into a sharded zarr store",
        description="Record TAP at the last position of every prompt 'a OP b =' of the "
        "arithmetic pipeline's layout for MODEL, over all operand pairs, into OUT (a zarr "
        "directory [a, b, layer, unit], resumed after a kill). With --mesh the pairs are "
        "split over the devices; on a multi-process run every process runs this same "
        "command, and each writes only the pairs its own devices computed.",
    )
    p.add_argument(
        "--model", default="arith-neox", metavar="MODEL", help="(arith-neox)"
    )
    p.add_argument("--op", choices=("+", "-", "*", "/"), required=True)
    p.add_argument("--out", required=True, help="the zarr directory")
    p.add_argument("--tap", default="mlp.hook_post", help="block tap (mlp.hook_post)")
    p.add_argument(
        "--layers",
        type=_int_list,
        default=None,
        metavar="L,L,...",
        help="layers recorded (all)",
    )
    _max_op_option(p)
    p.add_argument("--batch-size", type=_positive_int, default=None, metavar="N")
    p.add_argument(
        "--mesh",
        type=_count_pair,
        default=None,
        metavar="DATA,MODEL",
        help="a DATA x MODEL device mesh: pairs split over DATA, weights over MODEL",
    )
    multi = p.add_argument_group(
        "multi-process runs (jax.distributed; every process runs the same command)"
    )
    multi.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process run: the settings below, else JAXINTERP_COORDINATOR, "
        "JAXINTERP_NUM_PROCESSES and JAXINTERP_PROCESS_ID, else detected by JAX (TPU "
        "pods, SLURM, Open MPI)",
    )
    multi.add_argument("--coordinator", default=None, metavar="HOST:PORT")
    multi.add_argument("--num-processes", type=_positive_int, default=None)
    multi.add_argument("--process-id", type=int, default=None)
    p.set_defaults(command="grid")

    p = sub.add_parser(
        "arithmetic",
        parents=[run_options],
        help="the paper 'Arithmetic Without Algorithms' end to end, with an HTML report",
        description="Run (or resume) the arithmetic-heuristics pipeline on MODEL: prompts, "
        "circuit discovery, faithfulness, important neurons, K/KV maps and heuristic "
        "classification, knockouts, correct vs incorrect, probes and training dynamics. "
        "Each stage's result is kept in OUT; a killed run resumes where it stopped. "
        "Writes OUT/report.html and OUT/summary.json.",
    )
    p.add_argument(
        "--model", default="arith-neox", metavar="MODEL", help="(arith-neox)"
    )
    p.add_argument(
        "--mode",
        choices=("clean", "parity"),
        default="clean",
        help="parity: the official code's choices and quirks; clean: fixed (clean)",
    )
    p.add_argument(
        "--ops", default=None, help="operators to analyse, e.g. '+-' (all four)"
    )
    _max_op_option(p)
    p.add_argument(
        "--full",
        action="store_true",
        help="the paper's full setting (5 patching seeds, 3 evaluation seeds, all 8 "
        "checkpoints); the default is a reduced one (2 seeds, 1 seed, 5 checkpoints)",
    )
    p.add_argument(
        "--no-dynamics",
        dest="checkpoints",
        action="store_const",
        const=False,
        default=None,
        help="skip the training-dynamics stage (only arith-neox has checkpoints)",
    )
    p.add_argument(
        "--top-k",
        type=_positive_int,
        default=None,
        metavar="K",
        help="important neurons per layer (default: 1/8 of the MLP width on arith-neox, "
        "about 1.5%% on the others)",
    )
    digits = p.add_argument_group(
        "models that split numbers into digits (smollm2-135m, qwen2.5-coder-0.5b)"
    )
    digits.add_argument(
        "--op-digits",
        type=_count_pair,
        default=None,
        metavar="A,B",
        help="digits of op1 and op2: one token layout per run (smollm2: 1,1; qwen: 2,2)",
    )
    digits.add_argument(
        "--template",
        choices=("spaced", "compact"),
        default=None,
        help="'226 - 68 =' (spaced, the default) or '226-68='",
    )
    digits.add_argument(
        "--few-shot",
        default=None,
        metavar="TEXT",
        help="text before every prompt (default two solved examples; '' for none)",
    )
    digits.add_argument(
        "--answer-digit",
        type=int,
        default=None,
        metavar="J",
        help="analyse the position predicting answer digit J, digits before it "
        "teacher-forced (0: the first)",
    )
    digits.add_argument(
        "--n-prompts",
        type=_positive_int,
        default=None,
        metavar="N",
        help="measure correctness on a sample of N legal prompts per operator (qwen: 1000)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="run directory (default results/arithmetic/MODEL-MODE[-full])",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run directory made with another configuration",
    )
    p.set_defaults(command="arithmetic")

    _circuit_parsers(sub, run_options)

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
    p.set_defaults(command="demo")
    return parser


CIRCUIT_HELP = {
    "lens": "logit lens and direct logit attribution of one prompt, with a report",
    "induction": "induction heads: scores on repeated random tokens, ablations, report",
    "ioi": "indirect object identification: dataset, patching, circuit, report",
    "probing": "sparse probing of MLP neurons for text features, ablations, report",
}


def _circuit_parsers(sub, run_options: argparse.ArgumentParser) -> None:
    """One subcommand per classic-circuit experiment; its options are the fields of the
    experiment's config (`experiments.circuits.configs`, which imports no JAX)."""
    import dataclasses

    from experiments.circuits.configs import CONFIGS

    for name, kind in CONFIGS.items():
        p = sub.add_parser(
            name,
            parents=[run_options],
            help=CIRCUIT_HELP[name],
            description=f"{CIRCUIT_HELP[name].capitalize()}. Stages are kept in "
            f"OUT/{name} (a killed run resumes); writes OUT/{name}/summary.json and "
            "OUT/report.html (every experiment run on the model).",
        )
        for field in dataclasses.fields(kind):
            default = field.default
            flag = "--" + field.name.replace("_", "-")
            if isinstance(default, tuple):
                p.add_argument(
                    flag,
                    type=_int_list,
                    default=default,
                    metavar="N,N,...",
                    help=f"{field.metadata['help']} ({','.join(map(str, default))})",
                )
            else:
                p.add_argument(
                    flag,
                    type=type(default),
                    default=default,
                    metavar=field.name.upper(),
                    help=f"{field.metadata['help']} ({default!r})",
                )
        p.add_argument(
            "--out",
            default=None,
            metavar="DIR",
            help="results directory of the model (default results/circuits/MODEL)",
        )
        p.add_argument(
            "--overwrite",
            action="store_true",
            help=f"replace OUT/{name} when it holds a run of another configuration",
        )
        p.set_defaults(command="circuit", experiment=name)


def _max_op_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-op",
        type=_positive_int,
        default=None,
        metavar="N",
        help="operands are below N (300)",
    )


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers like 1,2,4, got {text!r}"
        ) from None


def _run_options(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show a traceback for every error",
    )
    parser.add_argument(
        "--no-compile-cache",
        action="store_true",
        default=default,
        help="do not keep compiled XLA programs under $JAXINTERP_CACHE/xla "
        "(default ~/.cache/jaxinterp/xla)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
