"""Parameter-efficient multi-task learning: a frozen pretrained backbone, the tasks trained through adapters.

Each scheme is one module and one entry of :data:`SCHEMES`; :func:`make_scheme` builds it on a
:class:`~workbench.models.Backbone` under the model contract. The probes and the training methods see
the scheme's shared parameters as the shared ones: conflict and affinity are measured inside the adapter.
"""

from workbench.models.peft.adapted import AdaptedEncoder
from workbench.models.peft.layer import AdaptedLinear
from workbench.models.peft.lora import LoRALinear
from workbench.models.peft.registry import SCHEMES, make_scheme, scheme_table
from workbench.models.peft.targets import find_targets

__all__ = ["SCHEMES", "make_scheme", "scheme_table", "AdaptedEncoder", "AdaptedLinear", "LoRALinear", "find_targets"]
