"""Captioning checkpoints with random weights, built offline, for tests and benchmarks only.

Nothing in the service imports this module (named like transformers' ``testing_utils``); it sits in
the package so the benches and tests, run from a checkout or an install, import it the same way.

Each one is saved with ``save_pretrained`` like a real checkpoint, so
:meth:`TransformersCaptioner.load` reads it back through exactly the production path.
The text they generate is nonsense: only shapes, plumbing and speed are real.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

FAMILIES = ("blip", "vision-encoder-decoder", "git")
SIZES = ("tiny", "blip-base")

# Tiny sizes: big enough to exercise every layer type, small enough to build in well under a second.
# The wide initialisation lets the image change the caption (BLIP's default 1e-10 would drown it).
_TINY_IMAGE = 32
_TINY_LAYERS: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "initializer_range": 0.2,
}

# Plain words, so that random weights still decode to readable (if meaningless) captions.
_WORD_TEXT = """
a an the one two three four five some many few several and or with without of in on at by
for from to into onto over under above below near next beside behind front top bottom
inside outside around between through across along up down left right middle side is are
was being sitting standing lying walking running jumping flying swimming eating drinking
holding looking playing riding driving carrying wearing smiling talking reading writing
cooking sleeping parked floating hanging growing covered filled made painted man men woman
women person people child children boy girl baby family group crowd player team couple
friend dog dogs cat cats bird birds horse horses cow cows sheep elephant giraffe zebra
bear fish duck animal car cars truck bus train bike bicycle motorcycle boat plane airplane
street road sidewalk building house city town bridge tower sign light traffic table chair
couch bed room kitchen bathroom window door wall floor ceiling desk computer laptop phone
screen keyboard book books paper picture painting clock vase lamp plate bowl cup glass
bottle food pizza sandwich cake fruit apple banana orange bread vegetables salad coffee
water beach ocean sea lake river wave waves sand grass field park garden tree trees flower
flowers plant plants mountain mountains hill hills snow sky cloud clouds sun rain forest
rock rocks shirt hat jacket dress shoes umbrella bag ball kite frisbee skateboard
surfboard skis racket bat glove game sport tennis baseball soccer red blue green yellow
white black brown gray grey pink purple colorful dark bright large small big little tall
short long old young new open closed empty full wooden metal stone plastic sunny cloudy
snowy wet dry close view background foreground day night evening morning outdoor indoor
outdoors indoors together alone very this that there here it its his her their other
another each while as like
"""
_WORDS = list(dict.fromkeys(_WORD_TEXT.split()))  # each word once, so ids are stable


def build_tiny_model(family: str, path: str | Path, *, size: str = "tiny") -> Path:
    """Build a random-weight captioner of ``family`` and save model + processor under ``path``.

    ``size="blip-base"`` gives the architecture of Salesforce/blip-image-captioning-base
    (~225M parameters, 384 px, ~900 MB on disk): the same compute as the real model, for benchmarks, with
    nonsense output. Seeded, so the same call always saves the same weights.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    if size not in SIZES or (size == "blip-base" and family != "blip"):
        raise ValueError(f"unknown size {size!r} for {family!r}; sizes: 'tiny' (all), 'blip-base' (blip)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if family == "blip":
        model, processors = _blip(size)
    elif family == "vision-encoder-decoder":
        model, processors = _vit_gpt2()
    else:
        model, processors = _git()
    model.eval()
    model.save_pretrained(path)
    for processor in processors:
        processor.save_pretrained(path)
    return path


def _bert_tokenizer(vocab_size: int | None = None, extra_special: tuple[str, ...] = ()) -> Any:
    """A BERT WordPiece tokenizer over :data:`_WORDS`, with BERT's special-token ids.

    With ``vocab_size`` the vocabulary is padded with made-up compound words up to
    that size, so the ids line up with bert-base-uncased ([PAD]=0, [CLS]=101, [SEP]=102)
    and ``extra_special`` tokens land right after it, as BLIP's [DEC]/[ENC] do.
    """
    from transformers import BertTokenizer

    tokens = dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORDS])
    if vocab_size is not None:
        tokens = dict.fromkeys(["[PAD]", *(f"[unused{i}]" for i in range(99)), *tokens])
        compounds = (a + b for a in _WORDS for b in _WORDS if a + b not in tokens)
        while len(tokens) < vocab_size:
            tokens[next(compounds)] = None
    vocab = {token: i for i, token in enumerate([*tokens, *extra_special])}
    special: dict[str, Any] = {}
    if extra_special:
        special = {"bos_token": extra_special[0], "extra_special_tokens": list(extra_special[1:])}
    return BertTokenizer(vocab=vocab, **special)


def _blip(size: str) -> tuple[Any, list[Any]]:
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor

    base = size == "blip-base"
    tokenizer = _bert_tokenizer(30522 if base else None, extra_special=("[DEC]", "[ENC]"))
    ids = tokenizer.convert_tokens_to_ids
    if base:  # Values from Salesforce/blip-image-captioning-base's config.json.
        image_size = 384
        vision = {**_layers(768, 12, 12, 3072), "image_size": 384, "patch_size": 16, "layer_norm_eps": 1e-5}
        vision["initializer_range"] = 0.02  # not the config's 1e-10: trained-like magnitudes, no denormals
        text = {**_layers(768, 12, 12, 3072), "max_position_embeddings": 512, "projection_dim": 768}
        projection_dim = 512
    else:
        image_size = _TINY_IMAGE
        vision = {**_TINY_LAYERS, "image_size": image_size, "patch_size": 8}
        text = {**_TINY_LAYERS, "max_position_embeddings": 64, "projection_dim": 32}
        projection_dim = 32
    text |= {
        "vocab_size": len(tokenizer),
        "encoder_hidden_size": vision["hidden_size"],
        "bos_token_id": ids("[DEC]"),
        "sep_token_id": ids("[SEP]"),
        "eos_token_id": ids("[SEP]"),
        "pad_token_id": ids("[PAD]"),
    }
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    image_processor = BlipImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    model = BlipForConditionalGeneration(config)
    return model, [BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)]


def _vit_gpt2() -> tuple[Any, list[Any]]:
    from transformers import (
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessorPil,
    )

    tokenizer = _gpt2_tokenizer()
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    encoder = ViTConfig(**_TINY_LAYERS, image_size=_TINY_IMAGE, patch_size=8)
    decoder = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=end,
        eos_token_id=end,
        pad_token_id=end,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    # As in nlpconnect/vit-gpt2-image-captioning: GPT-2 has one special token for everything.
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = end
    model = VisionEncoderDecoderModel(config=config)
    model.generation_config.decoder_start_token_id = end
    model.generation_config.pad_token_id = model.generation_config.eos_token_id = end
    image_processor = ViTImageProcessorPil(
        size={"height": _TINY_IMAGE, "width": _TINY_IMAGE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return model, [image_processor, tokenizer]


def _gpt2_tokenizer() -> Any:
    """A byte-level BPE tokenizer whose merges spell each of :data:`_WORDS` as one token."""
    from transformers import GPT2Tokenizer

    alphabet = _byte_alphabet()
    vocab = dict.fromkeys(alphabet)
    merges: dict[tuple[str, str], None] = {}
    for word in _WORDS:
        piece = "Ġ"  # byte-level BPE's spelling of a leading space
        for char in word:
            merges[(piece, char)] = None
            piece += char
            vocab[piece] = None
    vocab["<|endoftext|>"] = None
    return GPT2Tokenizer(
        vocab={token: i for i, token in enumerate(vocab)},
        merges=list(merges),
    )


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each of the 256 bytes (its ``bytes_to_unicode``)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = (b for b in range(256) if b not in printable)
    mapping = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(extra)}
    return [mapping[b] for b in range(256)]


def _git() -> tuple[Any, list[Any]]:
    from transformers import CLIPImageProcessorPil, GitConfig, GitForCausalLM, GitProcessor

    tokenizer = _bert_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    config = GitConfig(
        vision_config={**_TINY_LAYERS, "image_size": _TINY_IMAGE, "patch_size": 8},
        **_TINY_LAYERS,
        vocab_size=len(tokenizer),
        max_position_embeddings=64,
        bos_token_id=ids("[CLS]"),
        eos_token_id=ids("[SEP]"),
        pad_token_id=ids("[PAD]"),
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": _TINY_IMAGE}, crop_size={"height": _TINY_IMAGE, "width": _TINY_IMAGE}
    )
    return GitForCausalLM(config), [GitProcessor(image_processor=image_processor, tokenizer=tokenizer)]


def _layers(hidden: int, layers: int, heads: int, intermediate: int) -> dict[str, int]:
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": intermediate,
    }
