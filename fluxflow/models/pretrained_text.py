"""A frozen pretrained text encoder (CLIP text or T5 encoder) read from a local Hugging Face directory.

Same interface as the byte-level `TextEncoder`: `tokenize(texts) -> (ids, mask)` and
`(ids, mask) -> (tokens [B, L, D], pooled [B, D])`, with L = `model.text_max_len` (always padded to it, so batch shapes
are static) and D the encoder's width (fluxflow/config/file_checks.py derives `text_embedding_dim` from it, so the
flow model's text projections take it as it is).

- Nothing is downloaded: model and tokenizer load with `local_files_only=True` from the directory the config names.
- Frozen: no gradient, always in eval mode (no dropout). Its weights stay in that directory: `state_dict()` is empty,
  so checkpoints stay small and record only `model.text_encoder` (type and path) in their `model_config`.
- Weights are loaded in fp32 (a bf16-saved encoder too) and outputs are fp32; autocast runs it in bf16 on CUDA.
- Pooled embedding: CLIP's own (the final-norm state at the end-of-text token); T5 has none, so the masked mean of
  its tokens (as the byte encoder does). Token embeddings at padding positions are zeroed.
"""
from __future__ import annotations

import os
from collections import OrderedDict

import torch
from torch import nn

from fluxflow.config.file_checks import inspect_pretrained, require_transformers
from fluxflow.runtime.device import host_to_device


class PretrainedTextEncoder(nn.Module):
    def __init__(self, path: str, max_len: int):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: local_files_only below already never downloads
        require_transformers()  # an optional dependency: say which extra installs it
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel  # ~4 s: only when configured

        info = inspect_pretrained(path)
        self.path, self.max_len, self.family = path, max_len, info.family
        model_class = CLIPTextModel if info.family == "clip" else T5EncoderModel
        self.model = model_class.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if self.tokenizer.pad_token is None:  # pad with end-of-text where the tokenizer has no pad token
            if self.tokenizer.eos_token is None:
                raise ValueError(f"the tokenizer in {path} has neither a pad nor an end-of-text token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "PretrainedTextEncoder":
        return super().train(False)  # frozen: dropout stays off whatever a caller asks

    def tokenize(self, texts: list[str] | tuple[str, ...],
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`(ids [B, max_len] long, mask [B, max_len] bool)`, truncated and padded to `max_len`."""
        batch = self.tokenizer(list(texts), padding="max_length", max_length=self.max_len, truncation=True,
                               return_tensors="pt")
        ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        # An empty caption must still attend to something: cross-attention over no key is NaN (models/layers.py).
        mask[:, 0] = True
        return host_to_device(ids, device), host_to_device(mask, device)

    def token_count(self, text: str) -> int:
        """The tokens of `text` before truncation, special tokens included (as TextEncoder.token_count)."""
        return len(self.tokenizer(text, truncation=False, verbose=False)["input_ids"])  # verbose: no length warning

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(input_ids=ids, attention_mask=mask.long())
        keep = mask.unsqueeze(-1).float()
        tokens = out.last_hidden_state.float() * keep
        pooled = out.pooler_output.float() if self.family == "clip" else tokens.sum(1) / keep.sum(1).clamp(min=1.0)
        return tokens, pooled

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """Empty: the weights are the directory's (`self.path`), not the checkpoint's."""
        return OrderedDict() if destination is None else destination

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if state_dict:
            raise ValueError(f"the checkpoint holds trained text encoder weights ({len(state_dict)} tensors, a byte-"
                             f"level encoder's), but model.text_encoder is the pretrained one in {self.path}: train "
                             "the flow model from a checkpoint of the same text encoder")
        return nn.modules.module._IncompatibleKeys([], [])
