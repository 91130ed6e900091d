"""Jitted, vmapped kernels over the model: forward with taps, sweeps, patching, metrics."""

from .run import forward as forward
from .run import run as run
