"""How big each component is for a `model:` section, worked out without torch.

`--validate-pipeline` prints parameter counts; building the torch modules for them cost seconds of imports, so the
counts are computed here from the layer shapes instead. Each function mirrors one class in fluxflow/models/ and
tests/config/test_model_sizes.py checks them against the built modules for many sizes: change both together.
"""
from __future__ import annotations

from typing import Any

from fluxflow.config.modes import COMPONENTS
from fluxflow.config.file_checks import pretrained_text_path

# Widths per resolution level as multiples of vae_dim; level i works at H / 2**i (compressor and expander).
_WIDTH_MULT = (1, 2, 4)
# The byte-level tokenizer's vocabulary: 256 bytes + PAD, BOS, EOS (fluxflow/models/text_encoder.py VOCAB_SIZE).
TEXT_VOCAB_SIZE = 256 + 3


def level_widths(vae_dim: int, downscale: int) -> list[int]:
    """Channel width of each resolution level for a downscale factor of 2, 4 or 8 (one level per halving)."""
    if downscale not in (2, 4, 8):
        raise ValueError(f"downscale must be 2, 4 or 8, got {downscale}")
    return [vae_dim * mult for mult in _WIDTH_MULT[:downscale.bit_length() - 1]]


# Layers: weights plus bias. GroupNorm and affine LayerNorm have a scale and a shift per channel.
def conv(in_ch: int, out_ch: int, kernel: int) -> int:
    return in_ch * out_ch * kernel * kernel + out_ch


def linear(in_dim: int, out_dim: int) -> int:
    return in_dim * out_dim + out_dim


def norm(channels: int) -> int:
    return 2 * channels


def res_block(in_ch: int, out_ch: int) -> int:
    skip = conv(in_ch, out_ch, 1) if in_ch != out_ch else 0
    return norm(in_ch) + conv(in_ch, out_ch, 3) + norm(out_ch) + conv(out_ch, out_ch, 3) + skip


def attention(dim: int) -> int:
    return linear(dim, dim) + linear(dim, 2 * dim) + linear(dim, dim)  # q, kv, out


def mlp(dim: int, hidden_mult: int = 4) -> int:
    return linear(dim, hidden_mult * dim) + linear(hidden_mult * dim, dim)


# Components.
def compressor(channels: int, vae_dim: int, latent_channels: int, downscale: int) -> int:
    widths = level_widths(vae_dim, downscale)
    total, prev = conv(channels, widths[0], 3), widths[0]
    for w in widths:
        total += res_block(prev, w) + conv(w, w, 3)  # block, then the stride-2 conv
        prev = w
    return total + res_block(prev, prev) + norm(prev) + conv(prev, 2 * latent_channels, 3)


def spade_modulation(feat_ch: int, latent_ch: int, hidden: int) -> int:
    return conv(latent_ch, hidden, 3) + 2 * conv(hidden, feat_ch, 3)  # shared, gamma, beta


def expander(channels: int, vae_dim: int, latent_channels: int, downscale: int) -> int:
    widths = level_widths(vae_dim, downscale)[::-1]  # coarsest first
    total, prev = conv(latent_channels, widths[0], 3) + res_block(widths[0], widths[0]), widths[0]
    for w in widths:
        total += conv(prev, prev, 3) + res_block(prev, w)  # the conv after the ×2 upsample, then the block
        prev = w
    hidden = max(16, vae_dim)
    spade = sum(spade_modulation(w, latent_channels, hidden) for w in [widths[0], *widths])
    return total + spade + norm(prev) + conv(prev, channels, 3)


def flow_processor(latent_channels: int, dim: int, depth: int, heads: int, patch_size: int, text_dim: int,
                   text_max_len: int, pooled_text: bool = True) -> int:  # pooled_text: the same parameters either way
    if dim % 4 or dim % heads:
        raise ValueError(f"feature_maps_dim {dim} must be divisible by 4 and by flow_heads {heads}")
    block = 2 * attention(dim) + mlp(dim) + linear(dim, 9 * dim)  # self, cross, MLP, adaLN (norms have no affine)
    null_text = text_max_len * text_dim + text_dim  # learned null tokens + null pooled embedding
    return (conv(latent_channels, dim, patch_size) + 2 * linear(dim, dim) + 2 * linear(text_dim, dim) + null_text
            + depth * block + linear(dim, 2 * dim) + linear(dim, patch_size * patch_size * latent_channels))


def text_encoder(dim: int, depth: int, max_len: int) -> int:
    block = norm(dim) + attention(dim) + norm(dim) + mlp(dim)
    return TEXT_VOCAB_SIZE * dim + max_len * dim + depth * block + norm(dim)  # embedding, positions, blocks, norm


def discriminator(channels: int, dim: int) -> int:
    return (conv(channels, dim, 4) + conv(dim, 2 * dim, 4) + norm(2 * dim) + conv(2 * dim, 4 * dim, 3)
            + norm(4 * dim) + conv(4 * dim, 1, 3))


def component_args(name: str, model_cfg: Any, channels: int) -> tuple:
    """The constructor arguments of component `name` (the same for its torch class and its size function here)."""
    m = model_cfg
    pretrained = pretrained_text_path(m)
    args = {
        "compressor": lambda: (channels, m.vae_dim, m.latent_channels, m.downscale),
        "expander": lambda: (channels, m.vae_dim, m.latent_channels, m.downscale),
        "flow_processor": lambda: (m.latent_channels, m.feature_maps_dim, m.flow_depth, m.flow_heads, m.patch_size,
                                   m.text_embedding_dim, m.text_max_len, getattr(m, "text_pooled", True)),
        "text_encoder": lambda: ((pretrained, m.text_max_len) if pretrained else
                                 (m.text_embedding_dim, m.text_encoder_depth, m.text_max_len)),
        "discriminator": lambda: (channels, m.feature_maps_dim_disc),
    }
    if name not in args:
        raise ValueError(f"unknown component {name!r}; expected one of {', '.join(COMPONENTS)}")
    return args[name]()


def component_parameters(name: str, model_cfg: Any, channels: int) -> int | None:
    """Parameters of component `name`, as `count_parameters(build_component(name, model_cfg, channels))`; None for
    a pretrained text encoder (its size is whatever its directory holds)."""
    args = component_args(name, model_cfg, channels)  # an unknown name is refused here, with the known ones
    sizes = {"compressor": compressor, "expander": expander, "flow_processor": flow_processor,
             "text_encoder": text_encoder, "discriminator": discriminator}
    return None if name == "text_encoder" and pretrained_text_path(model_cfg) else sizes[name](*args)


def parameter_counts(model_cfg: Any, channels: int) -> dict[str, int | None]:
    """Parameters per component, in the order of `COMPONENTS` (what the validation summary prints); None where
    the size is not computed here (a pretrained text encoder)."""
    return {name: component_parameters(name, model_cfg, channels) for name in COMPONENTS}
