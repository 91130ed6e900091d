"""Array type aliases and the axis vocabulary used in every signature.

Axis names are TransformerLens's, so shapes, tap names and parameter layouts all read the same
as in TransformerLens (with the leading `batch` dropped: modules see one example).

    pos            token position (also `query_pos` / `key_pos` inside attention)
    d_model        residual stream width
    head_index     query head
    kv_head_index  key/value head (equals head_index without GQA/MQA)
    d_head         width of one head
    d_mlp          MLP hidden width ("neurons")
    d_vocab        vocabulary
    layer          stacked block axis (parameters and stacked taps/edits)
"""

from jaxtyping import Array as Array
from jaxtyping import ArrayLike as ArrayLike
from jaxtyping import Bool as Bool
from jaxtyping import Float as Float
from jaxtyping import Int as Int
from jaxtyping import PRNGKeyArray as PRNGKeyArray
from jaxtyping import PyTree as PyTree
from jaxtyping import Shaped as Shaped
