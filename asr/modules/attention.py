"""Multi-head attention: plain (Vaswani et al. 2017) and relative-position (Dai et al. 2019).

`MultiHeadAttention` is scaled dot-product attention over H heads. `RelativeMultiHeadAttention`
is the Transformer-XL form used by the Conformer (Gulati et al. 2020): the score between query i
and key j is

    (q_i + u) . k_j  +  (q_i + v) . W_r r_{i-j},   divided by sqrt(Dh),

with r_{i-j} a sinusoidal encoding of the relative distance i - j, W_r a learned projection and
u, v learned per-head biases. The position term is computed against the distances, 64 queries
at a time against the band of distances they meet (T + 63 of the 2T-1), and moved into
(B, H, T, T) by a zero-copy strided view (the "relative shift"). Both attentions hand the
softmax and the value product to `scaled_dot_product_attention`, the position term riding
along as an additive bias (on CPU in training: the same math by hand, with a cheaper dropout).

Under graph export (`exporting()`: `torch.export`, which the ONNX exporter runs) the length T is
a symbol, and neither the loop over query blocks nor strided views nor the cached table of
encodings survive it: the position term is then one matmul against all 2T-1 distances, shifted
by a gather (`relative_shift_gather`; in ONNX Runtime 1.4x faster for the whole encoder than
Dai et al.'s pad-and-reshape, which copies the scores three times), and the encodings are
computed in the graph. Tests check that both formulations agree.

Symbols: B batch, T time, D model width, H heads, Dh = D / H.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from asr.modules.dropout import dropout
from asr.modules.masks import attn_bias_from_pad_mask, frames_from

# Queries per matmul of the position term: T/64 small matmuls cost less than one twice as big.
POS_ROWS = 64


def exporting() -> bool:
    """True while the model is being captured as a graph (torch.export / ONNX export)."""
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def sinusoids(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """positions (N,) float -> (N, dim): [sin(p w_k), cos(p w_k)] interleaved, w_k = 1e4^(-2k/dim)."""
    freqs = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device)
        * (-math.log(10000.0) / dim)
    )  # (dim/2,)
    angles = positions.float().unsqueeze(1) * freqs  # (N, dim/2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (N, dim)


class RelativePositionalEncoding(nn.Module):
    """Sinusoidal encodings of the relative distances T-1, T-2, ..., -(T-1), in that order.

    The table is cached and grown on demand; it is not a parameter and not saved.
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        if d_model % 2:
            raise ValueError(f"d_model must be even for sinusoidal encodings, got {d_model}")
        self.d_model = d_model
        self.register_buffer("table", torch.empty(0, d_model), persistent=False)

    def forward(self, length: int) -> torch.Tensor:
        """length T -> pos_emb (2T-1, D); row k encodes the distance (T-1) - k."""
        if exporting():  # T is a symbol: no cache, the encodings become part of the graph
            distances = torch.arange(length - 1, -length, -1, device=self.table.device)
            return sinusoids(distances, self.d_model)
        # One read of the cache, used throughout: another thread (the server's live streams
        # and workers share a model) may replace `self.table` meanwhile, never mutate it.
        table = self.table
        if table.is_inference() and not torch.is_inference_mode_enabled():
            # Built under inference_mode (validation, transcription): autograd may not save it.
            table = table.clone()
            self.table = table
        cached = (table.shape[0] + 1) // 2
        if cached < length:
            span = max(length, 2 * cached)
            distances = torch.arange(span - 1, -span, -1, device=table.device)
            table = sinusoids(distances, self.d_model)  # (2*span-1, D)
            self.table = table
            cached = span
        start = cached - length
        return table[start : start + 2 * length - 1]


def relative_shift(scores: torch.Tensor) -> torch.Tensor:
    """(B, H, R, N) scores of R queries against N >= R distances -> (B, H, R, N - R + 1).

    Entry [r, j] is column (R-1) - r + j of row r: a strided view, no copy, no loop over time.
    With R = T queries against the distances T-1..-(T-1) (N = 2T-1) this is the (B, H, T, T)
    matrix with [i, j] = distance i - j; with R rows of a longer query it is their band.
    """
    b, h, r, n = scores.shape
    assert n >= r, f"expected at least {r} distances, got {n}"
    scores = scores.contiguous()
    s_b, s_h, s_r, s_n = scores.stride()
    return scores.as_strided(
        size=(b, h, r, n - r + 1),
        stride=(s_b, s_h, s_r - s_n, s_n),
        storage_offset=scores.storage_offset() + (r - 1) * s_n,
    )


def relative_shift_gather(scores: torch.Tensor) -> torch.Tensor:
    """(B, H, R, 2T-1) scores of the last R <= T of T queries against the distances
    T-1..-(T-1) -> (B, H, R, T) with [i, j] = column (R-1) - i + j of row i (the distance
    (T-R+i) - j): what `relative_shift` gives, by gathering those columns instead of a strided
    view, for graph export (one GatherElements in ONNX). R = T: self-attention over the whole
    sequence; R < T: a streamed chunk after T - R cached keys.
    """
    b, h, r, n = scores.shape
    t = (n + 1) // 2
    rows = torch.arange(r, device=scores.device)[:, None]  # (R, 1)
    index = (r - 1) - rows + torch.arange(t, device=scores.device)  # (R, T)
    return scores.gather(-1, index.expand(b, h, r, t))


def relative_position_bias(
    q_v: torch.Tensor, p: torch.Tensor, attn_bias: torch.Tensor | None, rows: int = POS_ROWS
) -> torch.Tensor:
    """The position term (q_i + v) . W_r r_{i-j} for all i, j, plus the attention bias.

    p (H, Dh, 2T-1) against the distances T-1..-(T-1) of T keys; q_v (B, H, R, Dh) for the last
    R <= T of the T positions (R = T: self-attention over the whole sequence; R < T: a chunk
    whose keys begin with cached left context); attn_bias (B, 1, 1, T) key padding, or
    (B or 1, 1, R, T) with a chunk mask, or None -> (B, H, R, T). Queries i0..i1 only meet the
    distances i0-(T-1)..i1-1, so they are multiplied with those T + (i1 - i0) - 1 columns, not
    all 2T-1: `rows` queries at a time this does T (T + rows) multiply-adds per head, not 2T^2.
    """
    t, r = (p.shape[-1] + 1) // 2, q_v.shape[2]
    if exporting():  # one matmul and a gather: no loop or view over a symbolic T
        bias = relative_shift_gather(torch.matmul(q_v, p))  # (B, H, R, T)
        return bias if attn_bias is None else bias + attn_bias
    first = t - r  # absolute position of the first query
    pieces = []
    for i0 in range(0, r, rows):
        i1 = min(i0 + rows, r)
        a0, a1 = first + i0, first + i1
        scores = torch.matmul(q_v[:, :, i0:i1], p[:, :, t - a1 : 2 * t - 1 - a0])
        pieces.append(relative_shift(scores))  # (B, H, i1 - i0, T), a strided view
    if len(pieces) == 1:  # the add materializes the view and masks padded keys in one pass
        return pieces[0] if attn_bias is None else pieces[0] + attn_bias
    if torch.is_grad_enabled() and (q_v.requires_grad or p.requires_grad):
        bias = torch.cat(pieces, dim=2)  # (B, H, R, T)
        return bias if attn_bias is None else bias + attn_bias
    bias = q_v.new_empty(q_v.shape[0], q_v.shape[1], r, t)  # (B, H, R, T)
    per_row = attn_bias is not None and attn_bias.shape[2] > 1
    for i0, piece in zip(range(0, r, rows), pieces):
        out = bias[:, :, i0 : i0 + piece.shape[2]]
        if attn_bias is None:
            out.copy_(piece)
        else:
            add = attn_bias[:, :, i0 : i0 + piece.shape[2]] if per_row else attn_bias
            torch.add(piece, add, out=out)
    return bias


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over H heads with key padding (Vaswani et al. 2017)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.num_heads, self.d_head = num_heads, d_model // num_heads
        self.dropout = dropout
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.d_head).transpose(1, 2)  # (B, H, T, Dh)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, h, t, dh = x.shape
        x = x.transpose(1, 2)  # (B, T, H, Dh)
        if exporting():  # a copy: whether reshape can view depends on the traced kernel's strides
            x = x.clone(memory_format=torch.contiguous_format)
        return self.out(x.reshape(b, t, h * dh))  # (B, T, D)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query (B, Tq, D), key/value (B, Tk, D), key_pad_mask (B, Tk) -> (B, Tq, D)."""
        q = self.split_heads(self.query(query))  # (B, H, Tq, Dh)
        k = self.split_heads(self.key(key))  # (B, H, Tk, Dh)
        v = self.split_heads(self.value(value))  # (B, H, Tk, Dh)
        bias = None if key_pad_mask is None else attn_bias_from_pad_mask(key_pad_mask, q.dtype)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        return self.merge_heads(y)


class RelativeMultiHeadAttention(MultiHeadAttention):
    """Transformer-XL relative-position self-attention (Dai et al. 2019, section 3.3)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__(d_model, num_heads, dropout)
        self.pos = nn.Linear(d_model, d_model, bias=False)  # W_r
        self.pos_bias_u = nn.Parameter(torch.zeros(num_heads, self.d_head))  # content bias u
        self.pos_bias_v = nn.Parameter(torch.zeros(num_heads, self.d_head))  # position bias v
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def forward(
        self,
        x: torch.Tensor,
        pos_emb: torch.Tensor,
        pad_mask: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, D), pos_emb (2T-1, D) from RelativePositionalEncoding, pad_mask (B, T), or
        instead `attn_bias` from `masks.attention_bias` (padding and a chunk mask in one).

        Returns (B, T, D).
        """
        q = self.split_heads(self.query(x))  # (B, H, T, Dh)
        k = self.split_heads(self.key(x))  # (B, H, T, Dh)
        v = self.split_heads(self.value(x))  # (B, H, T, Dh)
        if attn_bias is None and pad_mask is not None:
            attn_bias = attn_bias_from_pad_mask(pad_mask, q.dtype)
        return self.merge_heads(self._attend(q, k, v, pos_emb, attn_bias))

    def forward_chunk(
        self,
        x: torch.Tensor,
        pos_emb: torch.Tensor,
        attn_bias: torch.Tensor,
        cache: torch.Tensor,
        emit: int | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Streaming: the C frames of a chunk attend to themselves and to the cached keys and
        values of the L slots before them, of which `attn_bias` masks the empty ones.

        x (B, C, D), pos_emb (2(L+C)-1, D), attn_bias (B, 1, 1, L+C), cache (2, B, H, L, Dh):
        keys and values -> (out (B, C, D), the keys and values of the last L of the L+E frames
        (2, B, H, L, Dh): the next chunk's cache). E = `emit` (default C): the chunk's frames
        that are kept; the others are look-ahead, computed again with the next chunk.
        """
        c, slots = x.shape[1], cache.shape[3]
        e = c if emit is None else emit
        q = self.split_heads(self.query(x))  # (B, H, C, Dh)
        k = torch.cat([cache[0], self.split_heads(self.key(x))], dim=2)  # (B, H, L+C, Dh)
        v = torch.cat([cache[1], self.split_heads(self.value(x))], dim=2)  # (B, H, L+C, Dh)
        out = self.merge_heads(self._attend(q, k, v, pos_emb, attn_bias))
        return out, torch.stack([frames_from(k, 2, e, slots), frames_from(v, 2, e, slots)])

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        pos_emb: torch.Tensor,
        attn_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """q (B, H, R, Dh) for the last R of T positions, k/v (B, H, T, Dh), pos_emb (2T-1, D)
        -> (B, H, R, Dh)."""
        t = k.shape[2]
        # 1/sqrt(Dh) goes into the (2T-1, D) projection, the smallest tensor it can ride on.
        p = self.pos(pos_emb.to(q.dtype)) * (1.0 / math.sqrt(self.d_head))  # (2T-1, D)
        p = p.view(2 * t - 1, self.num_heads, self.d_head).permute(1, 2, 0)  # (H, Dh, 2T-1)
        q_v = q + self.pos_bias_v.unsqueeze(1)  # (B, H, R, Dh)
        bias = relative_position_bias(q_v, p, attn_bias)  # (B, H, R, T)
        q_u = q + self.pos_bias_u.unsqueeze(1)  # (B, H, R, Dh)
        if self.training and self.dropout > 0 and q.device.type == "cpu":
            return self._attend_with_dropout(q_u, k, v, bias)
        drop = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q_u, k, v, attn_mask=bias, dropout_p=drop)

    def _attend_with_dropout(
        self, q_u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """softmax(q_u k^T / sqrt(Dh) + bias) with dropout, times v: (B, H, T, Dh) each.

        What `scaled_dot_product_attention` does on CPU in training (its math path), with
        `dropout`'s cheaper mask and the bias added inside the matmul (`baddbmm`).
        """
        b, h, t, dh = q_u.shape
        q_u = (q_u * (1.0 / math.sqrt(dh))).reshape(b * h, t, dh)  # (BH, T, Dh)
        k = k.reshape(b * h, t, dh).transpose(1, 2)  # (BH, Dh, T)
        scores = torch.baddbmm(bias.reshape(b * h, t, t), q_u, k)  # (BH, T, T)
        weights = dropout(scores.softmax(dim=-1), self.dropout, training=True)
        return torch.bmm(weights, v.reshape(b * h, t, dh)).view(b, h, t, dh)  # (B, H, T, Dh)
