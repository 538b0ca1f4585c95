"""Z-Image's caption encoder: Qwen3 (a decoder-only LM) read at its penultimate layer.

As the reference pipelines (diffusers 0.42 ``ZImagePipeline._encode_prompt``):

* text-to-image: each prompt becomes one user turn through the tokenizer's chat template with
  ``add_generation_prompt=True, enable_thinking=True`` (Qwen3's template then adds no empty
  ``<think>`` block): ``<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n``;
* editing (``ZImageOmniPipeline``): no template; with ``n`` reference images the prompt is split
  into ``n + 2`` pieces around ``<|vision_start|>`` / ``<|vision_end|>`` markers, each piece its
  own caption (``omni_pieces``);
* tokens are truncated to ``max_length`` (512), the features are ``hidden_states[-2]`` and only
  the valid (attention-mask) tokens are kept: one (L_i, hidden) tensor per text.

Padding: by default every text is padded to ``max_length`` as in the reference, which makes the
features bit-identical to the reference's in any dtype. ``padding="longest"`` pads a batch to
its longest text only: with a right-padding tokenizer (as Qwen's) and a causal encoder the
valid tokens' states are mathematically the same and much cheaper to compute for short prompts
(on CPU: ~50 instead of 512 tokens), but kernels on other shapes round differently (fp32:
~1e-6; bf16: ~1 ulp, which CFG can amplify into visible pixel differences).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

MAX_LENGTH = 512
PADDINGS = ("max_length", "longest")


def omni_pieces(prompt: str, num_references: int) -> list[str]:
    """The editing pipeline's caption pieces of one prompt (``n + 2`` for ``n`` references)."""
    if num_references == 0:
        return [f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"]
    return [
        "<|im_start|>user\n<|vision_start|>",
        *["<|vision_end|><|vision_start|>"] * (num_references - 1),
        f"<|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n<|vision_start|>",
        "<|vision_end|><|im_end|>",
    ]


class TextEncoder(nn.Module):
    """A tokenizer with a chat template and a Qwen3 ``model`` (``Qwen3Model``)."""

    def __init__(self, model: nn.Module, tokenizer: Any, padding: str = "max_length") -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding={padding!r}: choose from {PADDINGS}")
        if padding == "longest" and tokenizer.padding_side != "right":
            raise ValueError("padding='longest' needs a right-padding tokenizer")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.padding = padding

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        subfolder: str | None = "text_encoder",
        tokenizer_subfolder: str | None = "tokenizer",
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        padding: str = "max_length",
    ) -> TextEncoder:
        """From a Z-Image pipeline folder or hub id (``text_encoder/`` + ``tokenizer/``)."""
        from transformers import AutoModel, AutoTokenizer

        kwargs = {"subfolder": tokenizer_subfolder} if tokenizer_subfolder else {}
        tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
        kwargs = {"subfolder": subfolder} if subfolder else {}
        model = AutoModel.from_pretrained(str(path), dtype=dtype or torch.float32, **kwargs)
        return cls(model.to(device) if device else model, tokenizer, padding)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def feat_dim(self) -> int:
        return self.model.config.hidden_size

    def chat(self, prompt: str) -> str:
        """One prompt as the text-to-image pipeline feeds it to the tokenizer."""
        messages = [{"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=True
        )

    @torch.no_grad()
    def encode(self, prompts: str | list[str], max_length: int = MAX_LENGTH) -> list[Tensor]:
        """Caption features for text-to-image: one (L_i, hidden) tensor per prompt."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return self.encode_texts([self.chat(p) for p in prompts], max_length)

    @torch.no_grad()
    def encode_omni(
        self, prompts: str | list[str], num_references: int, max_length: int = MAX_LENGTH
    ) -> list[list[Tensor]]:
        """Caption features for editing: per prompt, its ``omni_pieces`` encoded."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        pieces = [omni_pieces(p, num_references) for p in prompts]
        flat = self.encode_texts([text for item in pieces for text in item], max_length)
        out, start = [], 0
        for item in pieces:
            out.append(flat[start : start + len(item)])
            start += len(item)
        return out

    @torch.no_grad()
    def encode_texts(self, texts: list[str], max_length: int = MAX_LENGTH) -> list[Tensor]:
        """Raw texts (no template) -> penultimate hidden states of their valid tokens."""
        if not texts:
            return []
        inputs = self.tokenizer(
            texts, padding=self.padding, max_length=max_length, truncation=True, return_tensors="pt"
        )
        ids = inputs.input_ids.to(self.device)
        mask = inputs.attention_mask.to(self.device).bool()
        hidden = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        states = hidden.hidden_states[-2]  # (B, L, hidden)
        return [s[m] for s, m in zip(states, mask, strict=True)]
