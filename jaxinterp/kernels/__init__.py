"""Jitted, vmapped kernels over the model: forward with taps, sweeps, patching, metrics."""

from .run import forward as forward
from .run import kv_cache as kv_cache
from .run import stack_kv as stack_kv
