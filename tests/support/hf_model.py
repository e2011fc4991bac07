"""A tiny real Hugging Face model built locally (nothing downloaded), for the hf parity test
and benchmark 13: a randomly initialised one-layer GPT-2 (fixed seed) with a byte-level BPE
tokenizer trained on the ``tiny_mc`` task's own text."""

from __future__ import annotations

import importlib
from pathlib import Path

TASKS = Path(__file__).resolve().parent / "tasks"


def build_tiny_hf_model(folder: Path) -> Path:
    """Write the model and its tokenizer to ``folder`` (``pretrained=folder``); needs torch,
    tokenizers and transformers installed (imported here, as values: mypy needs none)."""
    torch = importlib.import_module("torch")
    tokenizers = importlib.import_module("tokenizers")
    transformers = importlib.import_module("transformers")
    models, pre_tokenizers = tokenizers.models, tokenizers.pre_tokenizers
    decoders, trainers = tokenizers.decoders, tokenizers.trainers

    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train([str(TASKS / "tiny_mc.jsonl")], trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    eos = bpe.token_to_id("<|endoftext|>")
    config = transformers.GPT2Config(
        vocab_size=bpe.get_vocab_size(),
        n_positions=256,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    folder.mkdir(parents=True, exist_ok=True)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
