"""The shipped tiny character-level tokenizer (printable ASCII + 4 special tokens).

Built with ``tokenizers`` as a BPE model with no merges (one token per character) and a ``Fuse``
decoder, saved with ``PreTrainedTokenizerFast.save_pretrained`` into ``policyopt/lm/assets/char_tokenizer``.
Rebuild with ``python -m policyopt.lm.tokenizer``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

ASSET = Path(__file__).parent / "assets" / "char_tokenizer"
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def build_char_tokenizer():
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(SPECIALS + chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
    )


def unknown_characters(tok, texts) -> Counter:
    """``{character: occurrences}`` for the characters of ``texts`` that ``tok`` encodes as its unknown token
    (empty for tokenizers without one, such as byte-level BPE)."""
    unk = tok.unk_token_id
    if unk is None:
        return Counter()
    counts = Counter("".join(texts))
    return Counter({c: n for c, n in counts.items() if unk in tok(c, add_special_tokens=False)["input_ids"]})


def load_char_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ASSET))


if __name__ == "__main__":
    build_char_tokenizer().save_pretrained(str(ASSET))
    print(f"saved to {ASSET}")
