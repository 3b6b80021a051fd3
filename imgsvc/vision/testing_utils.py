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


def blip_parts(size: str = "tiny") -> tuple[Any, Any]:
    """The BLIP model and processor :func:`build_tiny_model` saves, in memory (benches skip the disk)."""
    model, (processor,) = _blip(size)
    return model, processor


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


def trained_bpe(
    special_tokens: list[str], vocab_size: int = 800
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE trained here with ``tokenizers`` on :data:`_WORDS`: ``(vocab, merges)``.

    ``special_tokens`` take the first ids, in order (``<s>`` = 0, ``<pad>`` = 1 ... as BART has them).
    Trained, not hand-written, so words split the way a real BPE splits them.
    """
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([" ".join(_WORDS)] * 3 + [f" {word}" for word in _WORDS], trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    return model["vocab"], [tuple(merge) for merge in model["merges"]]


#: Florence-2's added tokens besides its 1,000 ``<loc_N>``: the task and region markers of its tokenizer.
_FLORENCE2_MARKERS = (
    "<od>", "</od>", "<ocr>", "</ocr>", "<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>",
    "<poly>", "</poly>", "<sep>", "<region_cap>", "</region_cap>", "<grounding>", "</grounding>",
    "<seg>", "</seg>", "<and>",
)  # fmt: skip


def build_tiny_florence2(path: str | Path, *, size: str = "tiny") -> Path:
    """A random-weight Florence-2 (DaViT + BART) with a real ``Florence2Processor``, saved under ``path``.

    ``size``: ``tiny`` (64 px, a few thousand parameters per layer, builds in a second), or ``base`` /
    ``large``, the architecture of florence-community/Florence-2-base / -large (768 px, 577 image tokens,
    0.23B / 0.77B parameters, the real 51,289-token vocabulary) for benchmarks. The tokenizer is a BPE
    trained here, with the tokens the processor and the parser need: ``<image>``, ``<loc_0>`` ..
    ``<loc_999>`` and the task markers.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model, processor = florence2_parts(size)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def florence2_parts(size: str = "tiny") -> tuple[Any, Any]:
    """The model and processor :func:`build_tiny_florence2` saves, in memory (benches skip the disk)."""
    from transformers import (
        BartTokenizer,
        CLIPImageProcessorPil,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    if size not in {"tiny", "base", "large"}:
        raise ValueError(f"unknown Florence-2 size {size!r}; expected tiny, base or large")
    torch.manual_seed(0)
    vocab, merges = trained_bpe(["<s>", "<pad>", "</s>", "<unk>"])
    vocab["<mask>"] = len(vocab)
    tokenizer = BartTokenizer(vocab=vocab, merges=merges, extra_special_tokens={"image_token": "<image>"})
    tokenizer.add_tokens([*_FLORENCE2_MARKERS, *(f"<loc_{i}>" for i in range(1000))])
    ids = {"bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 2}
    if size == "tiny":
        image_size = 64
        text: dict[str, Any] = {
            "d_model": 32,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "decoder_ffn_dim": 64,
            "max_position_embeddings": 128,
            "init_std": 0.2,
        }
        vision: dict[str, Any] = {
            "depths": [1, 1, 1, 1],
            "embed_dim": [8, 16, 16, 32],
            "num_heads": [1, 2, 2, 2],
            "num_groups": [1, 2, 2, 2],
            "window_size": 2,
            "projection_dim": 32,
        }
    else:  # values from florence-community/Florence-2-base / -large config.json
        image_size = 768
        large = size == "large"
        width = 1024 if large else 768
        text = {
            "d_model": width,
            "encoder_layers": 12 if large else 6,
            "decoder_layers": 12 if large else 6,
            "encoder_attention_heads": 16 if large else 12,
            "decoder_attention_heads": 16 if large else 12,
            "encoder_ffn_dim": 4 * width,
            "decoder_ffn_dim": 4 * width,
            "max_position_embeddings": 1024,
        }
        vision = {
            "depths": [1, 1, 9, 1],
            "embed_dim": [256, 512, 1024, 2048] if large else [128, 256, 512, 1024],
            "num_heads": [8, 16, 32, 64] if large else [4, 8, 16, 32],
            "num_groups": [8, 16, 32, 64] if large else [4, 8, 16, 32],
            "window_size": 12,
            "projection_dim": width,
        }
    # Real sizes keep the released vocabulary: its output layer is a good part of each token's cost.
    vocab_size = len(tokenizer) if size == "tiny" else max(len(tokenizer), 51289)
    text |= {"vocab_size": vocab_size, "forced_bos_token_id": 0, **ids}
    vision["drop_path_rate"] = 0.0
    config = Florence2Config(text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id)
    model = Florence2ForConditionalGeneration(config).eval()
    model.generation_config.update(
        **ids, forced_bos_token_id=0, forced_eos_token_id=2, no_repeat_ngram_size=3
    )
    if size == "tiny":  # random weights often say </s> at once: a few tokens give the tests something to read
        model.generation_config.min_new_tokens = 4
    # DaViT downsamples by 32: (side / 32)² spatial tokens and one pooled token.
    seq_length = (image_size // 32) ** 2 + 1
    image_processor = CLIPImageProcessorPil(
        size={"height": image_size, "width": image_size},
        do_center_crop=False,
        image_seq_length=seq_length,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    return model, Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)


#: SmolVLM's chat template, as its Instruct checkpoints ship it: ``User:<image>question<end_of_utterance>``.
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_tiny_smolvlm(path: str | Path, *, size: str = "tiny") -> Path:
    """A random-weight SmolVLM (SigLIP encoder, pixel shuffle, Llama decoder), saved under ``path``.

    Saved as SmolVLM checkpoints are (``model_type`` ``smolvlm``, a ``SmolVLMProcessor`` config), but
    the processor is written with ``Idefics3Processor`` and the PIL image processor: ``SmolVLMProcessor``
    needs torchvision, and the worker loads these checkpoints the same way. ``size``: ``tiny``, or
    ``256m`` / ``500m``, the dimensions of HuggingFaceTB/SmolVLM-256M-Instruct / -500M-Instruct.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model, processor = smolvlm_parts(size)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    # What the released checkpoints name: the worker must get past it without torchvision.
    saved = path / "processor_config.json"
    saved.write_text(saved.read_text("utf-8").replace('"Idefics3Processor"', '"SmolVLMProcessor"'), "utf-8")
    return path


def smolvlm_parts(size: str = "tiny") -> tuple[Any, Any]:
    """The model and processor :func:`build_tiny_smolvlm` saves, in memory (benches skip the disk)."""
    from transformers import (
        GPT2Tokenizer,
        Idefics3Processor,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessorPil,
    )

    if size not in {"tiny", "256m", "500m"}:
        raise ValueError(f"unknown SmolVLM size {size!r}; expected tiny, 256m or 500m")
    torch.manual_seed(0)
    specials = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>"]
    specials += ["<global-img>", *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))]
    vocab, merges = trained_bpe(specials)
    tokenizer = GPT2Tokenizer(
        vocab=vocab,
        merges=merges,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials[2:]})
    if size == "tiny":
        image_size, scale = 32, 2
        vision: dict[str, Any] = {**_TINY_LAYERS, "image_size": image_size, "patch_size": 8}
        text: dict[str, Any] = {**_TINY_LAYERS, "num_key_value_heads": 1, "max_position_embeddings": 512}
        longest_edge = 2 * image_size
    else:  # values from HuggingFaceTB/SmolVLM-256M-Instruct / -500M-Instruct config.json
        image_size, scale = 512, 4
        vision = {**_layers(768, 12, 12, 3072), "image_size": image_size, "patch_size": 16}
        text = (
            {**_layers(576, 30, 9, 1536), "num_key_value_heads": 3}
            if size == "256m"
            else {**_layers(960, 32, 15, 2560), "num_key_value_heads": 5}
        )
        text |= {"max_position_embeddings": 8192, "rope_theta": 100000.0}
        longest_edge = 4 * image_size
    ids = tokenizer.convert_tokens_to_ids
    text |= {
        "vocab_size": len(tokenizer) if size == "tiny" else max(len(tokenizer), 49280),
        "bos_token_id": ids("<|im_start|>"),
        "eos_token_id": ids("<end_of_utterance>"),
        "pad_token_id": ids("<|endoftext|>"),
        "model_type": "llama",
    }
    config = SmolVLMConfig(
        vision_config=vision,
        text_config=text,
        scale_factor=scale,
        image_token_id=ids("<image>"),
        pad_token_id=ids("<|endoftext|>"),
    )
    model = SmolVLMForConditionalGeneration(config).eval()
    model.generation_config.update(
        bos_token_id=ids("<|im_start|>"),
        eos_token_id=ids("<end_of_utterance>"),
        pad_token_id=ids("<|endoftext|>"),
    )
    image_processor = SmolVLMImageProcessorPil(
        size={"longest_edge": longest_edge},
        max_image_size={"longest_edge": image_size},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    seq_len = (image_size // vision["patch_size"]) ** 2 // scale**2
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=seq_len,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )
    return model, processor
