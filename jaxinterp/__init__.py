"""jaxinterp: mechanistic interpretability for JAX/Equinox transformers.

Activations are *taps* named exactly as TransformerLens hooks; interventions are data.
"""

from . import cache as cache
from . import edits as edits
from . import process as process
from . import sharding as sharding
from . import store as store
from . import taps as taps
from .config import Llama3RopeScaling as Llama3RopeScaling
from .config import TransformerConfig as TransformerConfig
from .edits import Add as Add
from .edits import Replace as Replace
from .edits import Scale as Scale
from .kernels.run import run as run
from .model import Transformer as Transformer
from .model import init_transformer as init_transformer
from .taps import all_layers as all_layers
from .taps import every_layer as every_layer
from .taps import tap_name as tap_name
