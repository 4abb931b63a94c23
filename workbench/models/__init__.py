"""Models under the contract: encoders (an MLP, a CNN, any transformers encoder), the multi-task
architectures built on them, one module per architecture family and one maker for all, and the
parameter-efficient schemes that adapt a frozen backbone (:mod:`workbench.models.peft`)."""

from workbench.models.backbone import Backbone
from workbench.models.encoders import conv_encoder, mlp_encoder, representation_shape
from workbench.models.mmoe import MMoEEncoder, TaskSlot
from workbench.models.registry import ARCHITECTURES, architecture_table, make_architecture
from workbench.models.transformers import TransformerEncoder, minilm_encoder, minilm_path, minilm_tokenizer, minilm_version
from workbench.models.peft import SCHEMES, make_scheme, scheme_table

__all__ = [
    "ARCHITECTURES",
    "SCHEMES",
    "Backbone",
    "MMoEEncoder",
    "TaskSlot",
    "TransformerEncoder",
    "architecture_table",
    "conv_encoder",
    "make_architecture",
    "make_scheme",
    "minilm_encoder",
    "minilm_path",
    "minilm_tokenizer",
    "minilm_version",
    "mlp_encoder",
    "representation_shape",
    "scheme_table",
]
