"""Build CLIPTokenizer's vocab.json and merges.txt from OpenAI's BPE file.

The BPE merges ship inside the `open-clip-torch` wheel on PyPI as
`open_clip/bpe_simple_vocab_16e6.txt.gz`. This script reproduces how the
published `openai/clip-vit-*` tokenizers were made from it (the same recipe as
OpenAI's `simple_tokenizer.py`): 256 byte symbols, the same with `</w>`, one
entry per merge, then the two special tokens -- 49 408 tokens in all.

    python scripts/make_clip_vocab.py path/to/bpe_simple_vocab_16e6.txt.gz OUTDIR
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible byte -> printable-unicode map used by GPT-2 and CLIP BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def build(bpe_gz: Path, out: Path) -> None:
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    )


if __name__ == "__main__":
    build(Path(sys.argv[1]), Path(sys.argv[2]))
