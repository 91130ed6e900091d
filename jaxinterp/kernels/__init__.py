"""Jitted, vmapped kernels over the model: forward with taps, sweeps, patching, metrics.

Every kernel composes the model's three stages (`Transformer.embed_tokens`, `run_blocks`,
`unembed_resid`); the sweeps share one core (`sweep`: a clean start, then `vmap` over edits
built from data) and one host batching loop (`batching.stream`, with a progress bar).

Axis convention, followed by every kernel's result:

    [prompt, *sweep, *metric]

* `prompt` comes first, as the batch axis of `run` (average over prompts with `.mean(0)`);
* then the swept axes, in the order the kernel names them: `[set]` for ablation and path
  patching, `[layer, pos, head]` for activation patching (`[layer, pos]` without heads,
  `[pos]` for `hook_embed`), `[cell]` for `patch_cells`, `[layer, pos, *tap_tail]` for
  attribution scores and activations, `[layer + 1, d_vocab]` for the logit lens,
  `[layer, head_index]` for head scores;
* then whatever the metric returns for one prompt (nothing for a scalar metric).

Results reduced over prompts (`mean_cache`) drop the `prompt` axis. Block taps carry a
`layer` axis over every layer; top-level taps (`hook_embed`, `hook_pos_embed`) have none.

Ragged prompt sets: every kernel takes `tokens [prompt, pos]` padded to one length with an
`attention_mask` (1 = token, 0 = padding; left or right), and the metric reads each prompt's
`answer_pos` (default: its last real token).
"""

from . import ablate as ablate
from . import attribution as attribution
from . import batching as batching
from . import grids as grids
from . import heads as heads
from . import lens as lens
from . import means as means
from . import metrics as metrics
from . import patch as patch
from . import sweep as sweep
from .ablate import ablation_sweep as ablation_sweep
from .attribution import attribution_patching as attribution_patching
from .attribution import attribution_vs_exact as attribution_vs_exact
from .grids import operand_grid as operand_grid
from .heads import head_detector as head_detector
from .lens import direct_logit_attribution as direct_logit_attribution
from .lens import logit_lens as logit_lens
from .lens import neuron_logit_lens as neuron_logit_lens
from .means import answer_logits as answer_logits
from .means import mean_cache as mean_cache
from .means import stacked_activations as stacked_activations
from .patch import activation_patching as activation_patching
from .patch import patch_cells as patch_cells
from .patch import path_patching as path_patching
from .run import forward as forward
from .run import kv_cache as kv_cache
from .run import run_cached as run_cached
