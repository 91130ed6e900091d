"""The settings of each classic-circuit experiment: frozen dataclasses whose fields are the
command-line options (`help` in each field's metadata). Kept free of JAX so that the
command line can list them without importing it."""

import dataclasses

__all__ = ["LensConfig", "InductionConfig", "IoiConfig", "ProbingConfig", "CONFIGS"]

DEFAULT_MODEL = "smollm2-135m"


def option(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


def _positive(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        values = value if isinstance(value, tuple) else (value,)
        if not values or min(values) < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


@dataclasses.dataclass(frozen=True)
class LensConfig:
    model: str = option(DEFAULT_MODEL, "model name or path")
    prompt: str = option(
        "The Eiffel Tower is in the city of", "the text read (no chat template)"
    )
    answer: str = option(" Paris", "the expected next token's text ('' for none)")
    top_k: int = option(5, "predictions shown per layer")

    def __post_init__(self):
        _positive(self, "top_k")
        if not self.prompt:
            raise ValueError("prompt must not be empty")


@dataclasses.dataclass(frozen=True)
class InductionConfig:
    model: str = option(DEFAULT_MODEL, "model name or path")
    n_prompts: int = option(64, "random sequences scored")
    seq_len: int = option(50, "tokens in each half of a sequence")
    n_ablate: int = option(16, "sequences run through every ablation")
    ks: tuple[int, ...] = option((1, 2, 4, 8, 16), "sizes of the ablated head sets")
    n_random: int = option(5, "random head sets per size")
    ablation: str = option("mean", "mean or zero")
    seed: int = option(0, "seed of the tokens and the random sets")
    batch_size: int = option(8, "prompts per device call")

    def __post_init__(self):
        if self.ablation not in ("mean", "zero"):
            raise ValueError(f"ablation must be 'mean' or 'zero': {self.ablation!r}")
        _positive(
            self, "n_prompts", "seq_len", "n_ablate", "ks", "n_random", "batch_size"
        )
        if self.n_ablate > self.n_prompts:
            raise ValueError(f"n_ablate {self.n_ablate} > n_prompts {self.n_prompts}")


@dataclasses.dataclass(frozen=True)
class IoiConfig:
    model: str = option(DEFAULT_MODEL, "model name or path")
    n_prompts: int = option(64, "IOI prompts (logit difference, DLA, circuit)")
    n_patch: int = option(16, "prompts run through head patching and path patching")
    n_circuit: int = option(3, "heads kept per class in the circuit")
    seed: int = option(0, "seed of the dataset")
    batch_size: int = option(8, "prompts per device call")

    def __post_init__(self):
        _positive(self, "n_prompts", "n_patch", "n_circuit", "batch_size")
        if self.n_patch > self.n_prompts:
            raise ValueError(f"n_patch {self.n_patch} > n_prompts {self.n_prompts}")


@dataclasses.dataclass(frozen=True)
class ProbingConfig:
    model: str = option(DEFAULT_MODEL, "model name or path")
    texts_per_pool: int = option(
        48, "texts of each kind read (English, French, Python, numbers)"
    )
    test_texts: int = option(16, "texts of each kind held out for testing")
    max_tokens: int = option(64, "tokens kept per text")
    ks: tuple[int, ...] = option((1, 2, 4, 8, 16, 32), "probe sparsities (neurons)")
    steps: int = option(300, "Adam steps of every probe (full batch)")
    n_ablate: int = option(8, "best single neurons ablated per feature")
    ablation: str = option("mean", "mean or zero")
    seed: int = option(0, "seed of the number texts, the split and the controls")
    batch_size: int = option(8, "texts per device call")

    def __post_init__(self):
        if self.ablation not in ("mean", "zero"):
            raise ValueError(f"ablation must be 'mean' or 'zero': {self.ablation!r}")
        _positive(
            self,
            "texts_per_pool",
            "test_texts",
            "max_tokens",
            "ks",
            "steps",
            "n_ablate",
            "batch_size",
        )
        if self.test_texts >= self.texts_per_pool:
            raise ValueError(
                f"test_texts {self.test_texts} must be below texts_per_pool "
                f"{self.texts_per_pool} (some texts must train the probes)"
            )
        from .probing_data import SHIPPED

        if self.texts_per_pool > SHIPPED:
            raise ValueError(
                f"texts_per_pool {self.texts_per_pool} > {SHIPPED}, the texts shipped "
                "of each kind"
            )
        if self.max_tokens < 3:
            raise ValueError(f"max_tokens must be at least 3, got {self.max_tokens}")
        if len(set(self.ks)) != len(self.ks):
            raise ValueError(f"ks must not repeat a size: {self.ks}")


CONFIGS = {
    "lens": LensConfig,
    "induction": InductionConfig,
    "ioi": IoiConfig,
    "probing": ProbingConfig,
}
