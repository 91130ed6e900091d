"""Jitted, vmapped kernels over the model: forward with taps, sweeps, patching, metrics."""

from . import ablate as ablate
from . import attribution as attribution
from . import grids as grids
from . import layers as layers
from . import lens as lens
from . import means as means
from . import metrics as metrics
from . import patch as patch
from .ablate import ablation_sweep as ablation_sweep
from .attribution import attribution_patching as attribution_patching
from .attribution import attribution_vs_exact as attribution_vs_exact
from .grids import operand_grid as operand_grid
from .lens import direct_logit_attribution as direct_logit_attribution
from .lens import logit_lens as logit_lens
from .lens import neuron_logit_lens as neuron_logit_lens
from .means import mean_cache as mean_cache
from .patch import activation_patching as activation_patching
from .patch import patch_cells as patch_cells
from .patch import path_patching as path_patching
from .run import forward as forward
from .run import kv_cache as kv_cache
from .run import stack_kv as stack_kv
