"""Plain `nn.Module` building blocks of the Conformer-CTC model (no Lightning here)."""

from asr.modules.attention import (
    MultiHeadAttention,
    RelativeMultiHeadAttention,
    RelativePositionalEncoding,
)
from asr.modules.conformer import (
    ConformerBlock,
    ConformerEncoder,
    ConformerMultiHeadedSelfAttention,
)
from asr.modules.conv import ConformerConvModule, MaskedBatchNorm1d
from asr.modules.feed_forward import FeedForward
from asr.modules.style import GlobalStyleTokens, StyleEmbedAttention
from asr.modules.subsampling import Conv2dSubsampling

__all__ = [
    "ConformerBlock",
    "ConformerConvModule",
    "ConformerEncoder",
    "ConformerMultiHeadedSelfAttention",
    "Conv2dSubsampling",
    "FeedForward",
    "GlobalStyleTokens",
    "MaskedBatchNorm1d",
    "MultiHeadAttention",
    "RelativeMultiHeadAttention",
    "RelativePositionalEncoding",
    "StyleEmbedAttention",
]
