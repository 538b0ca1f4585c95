"""A tiny, randomly initialised Qwen2.5-VL saved to a folder, for tests that need a real VLM.

``save_tiny_vlm(folder)`` writes a folder that ``AutoProcessor.from_pretrained`` and
``AutoModelForImageTextToText.from_pretrained`` load back offline: the real Qwen2.5-VL
architecture (windowed ViT with 2x2 patch merging, M-RoPE text decoder) at toy size, a
byte-level BPE tokenizer trained here with the ``tokenizers`` library on ``CORPUS`` (with the
Qwen special tokens the processor and the chat template need), a Qwen-style chat template and
an image processor whose ``max_pixels`` turns a 640x480 photo into ``VISUAL_TOKENS_640x480``
visual tokens. Everything is seeded, so two calls write the same weights.

The weights are random: answers are nonsense -- a jumble of the tokenizer's byte-level pieces,
often with U+FFFD replacement characters where a byte sequence is not UTF-8. That is the point
downstream (caption programs must reject such answers), while the shapes, the processor, the
chat template, batching and left padding are those of the real model. About 124k parameters:
text decoder 2 layers, hidden 32 (2 query heads, 1 KV head, head_dim 16, M-RoPE sections
2/3/3); vision tower 2 blocks (block 1 full attention, block 0 windowed), hidden 32, patch 14,
2x2 merge to the text width.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2.5-VL's template reduced to what the backends use: optional system turn, string or
# list content (image / video / text parts, in order), the generation prompt.
CHAT_TEMPLATE = (
    "{%- for m in messages %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' }}"
    "{%- if m['content'] is string %}{{- m['content'] }}"
    "{%- else %}{%- for part in m['content'] %}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' or 'video' in part %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in part %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
CORPUS = [
    "a photo of a dog running on the grass in a park",
    "two people ride bicycles down a city street at night",
    "a plate of food with broccoli, rice and a fork on a wooden table",
    "describe the image in one sentence",
    "what changed between the first and the second image?",
    "a red bus parked next to a tall building, cars and a traffic light",
    "the kitchen has a white oven, a sink and a window",
    "a cat sleeps on a laptop keyboard",
]
PATCH, MERGE = 14, 2
MIN_PIXELS = (PATCH * MERGE) ** 2 * 4  # at least 2x2 merged tokens
MAX_PIXELS = (PATCH * MERGE) ** 2 * 36  # 640x480 -> 140x168 px -> 5x6 = 30 visual tokens
VISUAL_TOKENS_640x480 = 30


def train_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on ``CORPUS`` with Qwen's special tokens."""
    from tests.helpers import train_bpe_tokenizer

    return train_bpe_tokenizer(CORPUS, SPECIAL_TOKENS, vocab_size=vocab_size,
                               padding_side="left", chat_template=CHAT_TEMPLATE)  # fmt: skip


def save_tiny_vlm(folder: Path, *, seed: int = 0) -> Path:
    """Write a tiny random Qwen2.5-VL (model, processor, tokenizer, template) into ``folder``."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    folder = Path(folder)
    tok = train_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    hidden = 32
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": hidden,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 1024,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 3, 3],  # halves of head_dim 16: (t, h, w)
            },
            "bos_token_id": None,
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "initializer_range": 0.5,  # spread-out logits: greedy picks are not near-ties
        },
        vision_config={
            "depth": 2,
            "hidden_size": hidden,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": PATCH,
            "spatial_merge_size": MERGE,
            "temporal_patch_size": 2,
            "window_size": 112,
            "out_hidden_size": hidden,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.do_sample = False
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(folder)
    size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            size=size, patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2
        ),
        video_processor=Qwen2VLVideoProcessor(
            size=size, patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2
        ),
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
    return folder
