"""Tiny pretrained text encoder directories, written locally (nothing is downloaded, CI needs no network).

`write_tiny_clip` saves a randomly initialised CLIPTextModel and a word-level fast tokenizer with `save_pretrained`,
exactly the files a real CLIP text encoder directory holds (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json). `write_stub_pretrained` writes only what validation reads (no transformers import).
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

import pytest

# Every word of the built-in shapes captions and the quickstart prompts, and a few more.
WORDS = ("a an the on of in at and red green blue yellow purple orange white black gray grey dark light brown cyan "
         "magenta pink circle square triangle star cross ring small big large center top bottom left right corner "
         "background with").split()


def write_tiny_clip(directory: Path, width: int = 32, max_positions: int = 32, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "<s>", "</s>"]
    vocab = {token: i for i, token in enumerate([*specials, *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                             special_tokens=[("<s>", 2), ("</s>", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="<s>", eos_token="</s>")
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width,
                            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=max_positions,
                            projection_dim=width, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    torch.manual_seed(seed)
    CLIPTextModel(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def write_stub_pretrained(directory: Path, width: int = 48, model_type: str = "clip_text_model",
                          max_positions: int = 77) -> Path:
    """A directory that passes validation's checks (config.json, a weights file, a tokenizer file) but holds no
    model: for config tests, which must not import transformers."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"model_type": model_type, "hidden_size": width,
                                                       "d_model": width, "max_position_embeddings": max_positions}))
    (directory / "model.safetensors").write_bytes(b"")
    (directory / "tokenizer.json").write_text("{}")
    return directory


@functools.cache
def _shipped_stubs() -> tempfile.TemporaryDirectory:
    """Where the stub encoder directories for the shipped configs go, once per test process: made at first use (at
    collection for parametrized tests, before conftest's TMPDIR) and removed at the process's exit. Named like
    conftest's folders (`fft-<pid>-`) so that the next test session sweeps it if this process ends without its exit
    hooks (an xdist worker that does not exit within execnet's timeout is killed)."""
    return tempfile.TemporaryDirectory(prefix=f"fft-{os.getpid()}-stub-encoder-")


# configs/real_256.yaml names CLIP-L's text encoder: width 768, 77 positions.
SHIPPED_ENCODER = {"width": 768, "max_positions": 77}


def shipped_config_raw(path: Path) -> dict:
    """A shipped config file as a dict, with a pretrained text encoder's path (a directory no checkout has: the
    user puts it there) pointed at a stub that passes validation."""
    from fluxflow.config.load import read_yaml

    raw = read_yaml(Path(path))
    encoder = (raw.get("model") or {}).get("text_encoder") or {}
    if encoder.get("type") == "pretrained":
        encoder["path"] = str(write_stub_pretrained(Path(_shipped_stubs().name) / Path(path).stem, **SHIPPED_ENCODER))
    return raw


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny CLIP text encoder (width 32, 32 positions: tests/helpers_tiny.py TINY_MODEL's text sizes)."""
    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))
