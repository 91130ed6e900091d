"""Load times and peak memory of the registry's real models: GGUF vs orbax store.

    .venv/bin/python benchmarks/bench_load.py                  # every installed GGUF model
    .venv/bin/python benchmarks/bench_load.py --hf             # plus logits vs transformers

Every measurement runs in a fresh child process, so its peak resident memory (`ru_maxrss`,
which includes the Python interpreter and jax, about 0.3 GiB) belongs to that step alone:

* `gguf`: `converters.load(name)`: read the GGUF, dequantize every tensor to float32,
  convert, place on the device;
* `orbax`: `jaxinterp.store.load_model` of the same model saved by a previous step;
* `hf` (with `--hf`): transformers' own GGUF loader in float32 and the max |logit diff| to
  ours on the project's prompt (`"226-68="`) and the loss test's paragraph.

It prints one table; numbers are wall-clock on this machine (noisy when it is shared).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

PROMPT = "226-68="


def _child(step: str, name: str, store_dir: str) -> dict:
    import jax
    import numpy as np

    from converters.loading import load, load_tokenizer
    from jaxinterp import run, store

    out: dict = {}
    t = time.perf_counter()
    if step == "gguf":
        model = load(name)
        jax.block_until_ready(model)
        out["seconds"] = time.perf_counter() - t
        store.save_model(model, store_dir, overwrite=True)
    elif step == "orbax":
        model = store.load_model(store_dir)
        jax.block_until_ready(model)
        out["seconds"] = time.perf_counter() - t
    else:
        import torch
        import transformers

        from converters.registry import locate

        transformers.utils.logging.disable_progress_bar()
        path = locate(name)
        ref = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        ).eval()
        out["seconds"] = time.perf_counter() - t
        model = load(name)
        tok = load_tokenizer(name)
        ids = np.asarray(tok.encode(PROMPT), np.int32)
        with torch.no_grad():
            theirs = ref(torch.from_numpy(ids[None].astype(np.int64))).logits[0]
        ours = np.asarray(run(model, ids)[0])
        out["max_abs_logit_diff"] = float(np.abs(ours - theirs.numpy()).max())
        out["argmax_agree"] = bool((ours.argmax(-1) == theirs.numpy().argmax(-1)).all())
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out["n_params"] = int(sum(x.size for x in jax.tree.leaves(model)))
    return out


def measure(step: str, name: str, store_dir: str) -> dict:
    cmd = [sys.executable, __file__, "--child", step, name, store_dir]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{step} {name} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hf", action="store_true", help="also compare with transformers")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument(
        "models", nargs="*", help="registry names (default: installed GGUFs)"
    )
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child)))
        return

    from converters.registry import MODELS, is_installed

    names = args.models or [
        n for n, e in MODELS.items() if e.kind == "gguf" and is_installed(n)
    ]
    print("| model | params | step | seconds | peak RSS GiB | note |")
    print("|---|---|---|---|---|---|")
    for name in names:
        steps = ["gguf", "orbax"] + (["hf"] if args.hf else [])
        with tempfile.TemporaryDirectory() as d:
            for step in steps:
                r = measure(step, name, os.path.join(d, "store"))
                note = ""
                if "max_abs_logit_diff" in r:
                    note = (
                        f"transformers GGUF load; max|logit diff| on {PROMPT!r} "
                        f"{r['max_abs_logit_diff']:.1e}, argmax agree {r['argmax_agree']}"
                    )
                print(
                    f"| {name} | {r['n_params'] / 1e6:.1f}M | {step} | "
                    f"{r['seconds']:.1f} | {r['peak_rss_gib']:.2f} | {note} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
