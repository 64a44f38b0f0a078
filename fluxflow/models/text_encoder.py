"""Byte-level tokenizer and a small pre-norm transformer text encoder.

No vocabulary file: every UTF-8 byte is a token (id = byte + 3) next to three special ids. The encoder returns
per-token embeddings (for cross-attention) and a pooled embedding (masked mean over real tokens): padding is
masked out of attention keys and out of the mean, so it can never change a caption's encoding.
"""
from __future__ import annotations

import torch
from torch import nn

from fluxflow.models.layers import MLP, Attention
from fluxflow.runtime.device import host_to_device

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
BYTE_OFFSET = 3
VOCAB_SIZE = 256 + BYTE_OFFSET


def tokenize(texts: list[str] | tuple[str, ...], max_len: int,
             device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode texts as `BOS bytes… EOS PAD…`, truncated to `max_len` tokens (EOS is kept).

    Returns `(ids [B, max_len] long, mask [B, max_len] bool)`; mask is True on real tokens. Always padded to
    `max_len` (not to the longest text) so that batch shapes are static.
    """
    if max_len < 2:
        raise ValueError(f"max_len must leave room for BOS and EOS, got {max_len}")
    ids = torch.full((len(texts), max_len), PAD_ID, dtype=torch.long)
    for row, text in enumerate(texts):
        body = [b + BYTE_OFFSET for b in text.encode("utf-8")[: max_len - 2]]
        seq = [BOS_ID, *body, EOS_ID]
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    mask = ids != PAD_ID
    return host_to_device(ids, device), host_to_device(mask, device)


class TextBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask=mask)
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """`(ids [B, L], mask [B, L]) -> (tokens [B, L, D], pooled [B, D])` with L ≤ max_len.

    Token embeddings at padding positions are zeroed so that a consumer that ignores the mask still sees
    nothing there.
    """

    def __init__(self, dim: int, depth: int, max_len: int):
        super().__init__()
        self.max_len = max_len
        self.embed = nn.Embedding(VOCAB_SIZE, dim)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        heads = max(1, dim // 64)  # no configured head count: ~64 channels per head, dividing `dim`
        while dim % heads:
            heads -= 1
        self.blocks = nn.ModuleList([TextBlock(dim, heads) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(dim)

    def tokenize(self, texts: list[str] | tuple[str, ...],
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """This encoder's tokenization (every text encoder has one; see fluxflow/models/pretrained_text.py)."""
        return tokenize(texts, self.max_len, device)

    def token_count(self, text: str) -> int:
        """The tokens of `text` before truncation, BOS and EOS included: over `max_len`, its end is not read (every text
        encoder has this; fluxflow-generate says so rather than draw the same image for two prompts that differ only
        there)."""
        return len(text.encode("utf-8")) + 2

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = ids.shape[1]
        if length > self.max_len:
            raise ValueError(f"{length} tokens exceed the text encoder's max_len {self.max_len}")
        x = self.embed(ids) + self.pos[:length]
        for block in self.blocks:
            x = block(x, mask)
        keep = mask.unsqueeze(-1).to(x.dtype)
        tokens = self.norm_out(x) * keep
        pooled = tokens.sum(1) / keep.sum(1).clamp(min=1.0)
        return tokens, pooled
