"""In-house GPT-NeoX trained on the paper's arithmetic task (issue #5).

Importing this package registers the committed model directory as `arith-neox` in
`converters.registry`, so `converters.load("arith-neox")` and `jaxinterp info arith-neox`
find it. The registry itself knows nothing about this repository's layout.
"""

from pathlib import Path

from converters import registry

MODEL_DIR = Path(__file__).resolve().parent / "arith-neox"

ARITH_NEOX = registry.register(
    registry.ModelEntry(
        name="arith-neox",
        kind="hf",
        description=(
            "In-house GPT-NeoX (4 layers, d_model 128, 1.05M parameters) trained on the "
            "paper's arithmetic prompts 'a op b =' with every number 0..999 one token "
            "(experiments/arith_model). The default subject of the arithmetic pipeline."
        ),
        install="ships with the repository",
        license="Apache-2.0 (this project's own weights)",
        source=registry.LocalDir(MODEL_DIR),
    )
)
