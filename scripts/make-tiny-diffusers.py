#!/usr/bin/env python3
"""Builds a tiny, random, deterministic StableDiffusionPipeline for tests, offline, on CPU, in seconds.

    make-tiny-diffusers.py OUTDIR [--dduf]

Writes a diffusers pipeline directory (model_index.json, unet/, vae/, text_encoder/, tokenizer/,
scheduler/; safetensors weights) at OUTDIR, and with --dduf also OUTDIR.dduf (the same pipeline as one
DDUF file). Nothing is downloaded: the CLIP tokenizer comes from a hand-written byte-level vocab.json and
merges.txt; every weight is random from fixed seeds, so two runs give identical files and the pipeline's
output depends only on the request's seed. The images are noise, of course.

Sizes: UNet 4/8 channels, VAE 4/8 channels (scale factor 2: any width/height that is a multiple of 8
works), CLIP text encoder hidden 16 with 2 layers, 32-token prompts; about 0.2 MB of weights.
Needs torch, diffusers and transformers (engines/diffusers/install.sh's venv has them).
"""

import argparse
import json
import os
import sys
import tempfile

MAX_TOKENS = 32
# A few merges so the BPE path is exercised; every merged token is in the vocabulary too.
MERGES = [("t", "h"), ("th", "e</w>"), ("a", "t</w>"), ("c", "at</w>"), ("o", "g</w>"), ("d", "og</w>")]


def bytes_to_unicode() -> dict:
    """CLIP's (GPT-2's) reversible byte → printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def tiny_vocab() -> dict:
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}


def build(outdir: str) -> None:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    vocab = tiny_vocab()
    with tempfile.TemporaryDirectory() as tok_dir:
        with open(os.path.join(tok_dir, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        with open(os.path.join(tok_dir, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join("%s %s\n" % m for m in MERGES))
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=MAX_TOKENS)

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(4, 8),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=2,
    )
    torch.manual_seed(1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(4, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=16,
    )
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=16,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    ))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(outdir, safe_serialization=True)


def export_dduf(outdir: str, dduf_path: str) -> None:
    try:
        from huggingface_hub import export_folder_as_dduf
    except ImportError:
        from huggingface_hub.serialization import export_folder_as_dduf  # older layouts
    export_folder_as_dduf(dduf_path, folder_path=outdir)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir")
    p.add_argument("--dduf", action="store_true", help="also write OUTDIR.dduf")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    outdir = os.path.abspath(args.outdir).rstrip(os.sep)
    build(outdir)
    print(outdir)
    if args.dduf:
        dduf_path = outdir + ".dduf"
        export_dduf(outdir, dduf_path)
        print(dduf_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
