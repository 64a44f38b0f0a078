"""Latent rectified-flow transformer ("flow processor"), DiT-style.

Convention (the same everywhere in fluxflow): x_t = (1 − t)·x0 + t·noise, t = 1 is pure noise, t = 0 is data,
and the network predicts the velocity v = noise − x0. `t` is a continuous float in [0, 1] and is embedded as such
(the system we replace fed integer timesteps ×999, which left the model blind to the noise level).

Latents are cut into patch_size × patch_size patches (tokens) with a fixed 2-D sin-cos position code. Each block
is adaLN-Zero conditioned on (embedding of t + projected pooled text) and cross-attends to the text tokens under
their mask (`pooled_text=False`: cross-attention only; the pooled projection is kept, unused, so that the weights
have the same names and sizes either way). Rows with `drop=True` see a learned null text (tokens + pooled)
instead: classifier-free-guidance dropout in training, the unconditional branch in sampling, and, in both, the rows
whose caption is blank (`blank_caption_mask`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from fluxflow.models.layers import MLP, Attention
from fluxflow.runtime.device import host_to_device


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sin-cos features of continuous t ∈ [0, 1], angular frequencies spaced geometrically from 1 to 1000."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), half, device=t.device, dtype=torch.float32))
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def sincos_2d(h: int, w: int, dim: int, device: torch.device) -> torch.Tensor:
    """Fixed 2-D position code [h·w, dim]: half the channels encode the row, half the column."""
    quarter = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    ay = ys.reshape(-1, 1) * omega
    ax = xs.reshape(-1, 1) * omega
    return torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def cfg_drop_mask(batch: int, p: float, device: torch.device | str,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool[batch]: True for the rows whose text is replaced by the null embedding. Drawn on `device`."""
    return torch.rand(batch, device=device, generator=generator) < p


def blank_caption_mask(captions: list[str], device: torch.device | str) -> torch.Tensor | None:
    """Bool[B]: True for the captions that are empty or whitespace only, whose rows see the null text (`drop`) in
    training and in sampling; None when none is (nothing is copied to the device). Why: a caption left empty in the
    data (`photo.jpg<TAB>`, a webdataset sample without one, captions dropped ahead as kohya or diffusers datasets
    do) is a dropped caption, but encoded it trained as an ordinary prompt, a second "unconditional" that guided
    sampling never used (its unconditional branch is the null text), while the null text learned only from the
    `cfg_dropout` share."""
    blank = [not caption.strip() for caption in captions]
    return host_to_device(torch.tensor(blank), device) if any(blank) else None


class FlowBlock(nn.Module):
    """Self-attention, masked cross-attention to text, MLP; each gated and modulated by adaLN-Zero."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.cross = Attention(dim, heads)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(dim)
        self.ada = nn.Linear(dim, 9 * dim)
        nn.init.zeros_(self.ada.weight)  # gates start at 0: every block starts as the identity
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor) -> torch.Tensor:
        s1, c1, g1, s2, c2, g2, s3, c3, g3 = self.ada(F.silu(cond)).unsqueeze(1).chunk(9, dim=-1)
        x = x + g1 * self.attn(modulate(self.norm1(x), s1, c1))
        x = x + g2 * self.cross(modulate(self.norm2(x), s2, c2), text, text_mask)
        return x + g3 * self.mlp(modulate(self.norm3(x), s3, c3))


class FlowProcessor(nn.Module):
    """`(x_t [B,c,H,W], t [B], tokens [B,L,Dt], mask [B,L], pooled [B,Dt], drop Bool[B] | None) -> v [B,c,H,W]`."""

    def __init__(self, latent_channels: int, dim: int, depth: int, heads: int, patch_size: int,
                 text_dim: int, text_max_len: int, pooled_text: bool = True):
        super().__init__()
        self.pooled_text = pooled_text
        if dim % 4 or dim % heads:
            raise ValueError(f"feature_maps_dim {dim} must be divisible by 4 and by flow_heads {heads}")
        self.patch_size = patch_size
        self.patch_embed = nn.Conv2d(latent_channels, dim, patch_size, stride=patch_size)
        self.t_embed = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.pooled_proj = nn.Linear(text_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.null_tokens = nn.Parameter(torch.randn(text_max_len, text_dim) * 0.02)
        self.null_pooled = nn.Parameter(torch.randn(text_dim) * 0.02)
        self.blocks = nn.ModuleList([FlowBlock(dim, heads) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(dim, 2 * dim)
        self.proj_out = nn.Linear(dim, patch_size * patch_size * latent_channels)
        for layer in (self.ada_out, self.proj_out):  # zero velocity at init (DiT)
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        # Recompute each block in backward instead of keeping its activations (training.activation_checkpointing).
        self.activation_checkpointing = False

    def unused_parameter_names(self) -> list[str]:
        """Parameters the forward never uses: the pooled-text path when `pooled_text` is off. DDP must be told
        (fluxflow/train/data_parallel.py), or it raises at the second batch waiting for their gradients."""
        if self.pooled_text:
            return []
        return ["null_pooled", *(f"pooled_proj.{name}" for name, _ in self.pooled_proj.named_parameters())]

    def apply_null_text(self, tokens: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor,
                        drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Swap in the learned null text for rows where `drop` is True (no host sync: torch.where)."""
        length = tokens.shape[1]
        if length > self.null_tokens.shape[0]:
            raise ValueError(f"{length} text tokens exceed text_max_len {self.null_tokens.shape[0]}")
        null_tokens = self.null_tokens[:length].to(tokens.dtype).expand_as(tokens)
        tokens = torch.where(drop[:, None, None], null_tokens, tokens)
        pooled = torch.where(drop[:, None], self.null_pooled.to(pooled.dtype), pooled)
        return tokens, mask | drop[:, None], pooled

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                pooled: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        b, c, hgt, wid = x_t.shape
        p = self.patch_size
        if hgt % p or wid % p:
            raise ValueError(f"latent size {hgt}×{wid} is not divisible by patch_size {p}")
        if drop is not None:
            tokens, mask, pooled = self.apply_null_text(tokens, mask, pooled, drop)
        t = t.expand(b) if t.dim() == 0 else t
        h, w = hgt // p, wid // p
        x = self.patch_embed(x_t).flatten(2).transpose(1, 2)
        x = x + sincos_2d(h, w, x.shape[-1], x.device).to(x.dtype)
        cond = self.t_embed(timestep_embedding(t, x.shape[-1]))
        if self.pooled_text:
            cond = cond + self.pooled_proj(pooled)
        text = self.text_proj(tokens)
        for block in self.blocks:
            if self.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, cond, text, mask, use_reentrant=False)
            else:
                x = block(x, cond, text, mask)
        shift, scale = self.ada_out(F.silu(cond)).unsqueeze(1).chunk(2, dim=-1)
        x = self.proj_out(modulate(self.norm_out(x), shift, scale))
        # [B, h·w, p·p·c] → [B, c, H, W]
        x = x.view(b, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, hgt, wid)
