"""Converters from Hugging Face checkpoints (and GGUF files) to `jaxinterp.Transformer`.

This file only re-exports. Inside the package, imports go one way (no cycles):

    __init__ -> hf, loading, registry, _common
    loading  -> hf, registry, gguf, tokenizer
    hf       -> gpt2, gptj, llama, neox -> _common
    tokenizer -> gguf (and registry, lazily)

`hf` dispatches on `config.json["architectures"]`, never on a model name; each family module
holds a strict config allowlist and one key table. `loading` finds a model by registry name
or path (GGUF, HF directory, orbax store); `registry` holds the named local models.
"""

from . import registry as registry
from ._common import ConversionError as ConversionError
from .hf import FAMILIES as FAMILIES
from .hf import from_hf_dict as from_hf_dict
from .hf import from_pretrained as from_pretrained
from .hf import save_pretrained as save_pretrained
from .hf import to_hf_dict as to_hf_dict
from .loading import load as load
from .loading import load_tokenizer as load_tokenizer
