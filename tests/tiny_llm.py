"""A tiny Llama and a byte-level BPE tokenizer built in code, for fast LLM tests (no network)."""
from __future__ import annotations

from pathlib import Path

CORPUS = [
    '#Question: A user has given high ratings to the following movies: "Alpha (1999)", "Beta (2000)". '
    'Additionally, we have information about the user\'s preferences encoded in the feature 12.200.3.44. '
    'Using all available information, make a prediction about whether the user would enjoy the movie titled '
    '"Gamma (1990)" with the feature 1.2.3.4? Answer with "Yes" or "No". \n#Answer: Yes No',
    "Leverage the information to predict whether the user would enjoy 0123456789 . , None Yes No",
] * 50


def make_tiny_llm(folder: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=400, min_frequency=1, special_tokens=["<pad>", "<eos>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<pad>", eos_token="<eos>")
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder
