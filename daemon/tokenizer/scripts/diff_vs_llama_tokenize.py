#!/usr/bin/env python3
"""Differential check of dwarfstar-tokenizer against llama.cpp's llama-tokenize.

Generates random text (ASCII words, digits, contractions, whitespace runs, many
Unicode blocks including unassigned and supplementary-plane code points, and the
special-token texts of common models), tokenizes it with both tools, with and
without special-token parsing, and compares the id lists.

Usage:
  cargo build --release -p dwarfstar-tokenizer --example tokenize
  python3 daemon/tokenizer/scripts/diff_vs_llama_tokenize.py LLAMA_TOKENIZE MODEL.gguf [SEEDS] [PIECES]
"""
import os
import random
import subprocess
import sys
import tempfile

PIECES = ["<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>", "<s>", "</s>", "<unk>", "<pad>",
          "<bos>", "<eos>", "<table>", "[multimodal]", "<unused5>", "<|endoftext|>", "<reponame>", "  ", "\n\n",
          "\r\n", "\t", " \n ", "'s", "'ll", "'RE", "123456789", "3.14159", "don't", "I'M", "ﬁ", "é", "e\u0301",
          "\u200b", "\u00a0", "\u3000", "\u2028", "\u0085", "\ufeff", "😀", "👨‍👩‍👧", "🇫🇷", "\U0001FAE8",
          "\U000E0001", "\U0010FFFD", "\uE000", "\u0378", "٣", "Ⅻ", "½", "²", "ǅ", "ß"]
RANGES = [(0x20, 0x7e), (0xa0, 0x24f), (0x370, 0x3ff), (0x400, 0x4ff), (0x590, 0x6ff), (0x900, 0x97f),
          (0xe00, 0xe7f), (0x1100, 0x11ff), (0x2000, 0x206f), (0x2100, 0x27bf), (0x3000, 0x30ff),
          (0x4e00, 0x9fff), (0xac00, 0xd7a3), (0xfe00, 0xfe0f), (0x1f300, 0x1faff), (0x20000, 0x2a6df),
          (0x30000, 0x3134f), (0xe0000, 0xe007f)]
ASCII = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"()[]{}<>/\\|-_=+*&^%$#@~` "


def random_text(rng, n):
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.15:
            out.append(rng.choice(PIECES))
        elif r < 0.3:
            out.append(rng.choice([" ", "  ", "\n", "\t", "   \n", " " * rng.randint(1, 40), "\n" * rng.randint(1, 35)]))
        elif r < 0.55:
            out.append("".join(rng.choice(ASCII) for _ in range(rng.randint(1, 12))))
        else:
            lo, hi = rng.choice(RANGES)
            out.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 6))))
    return "".join(c for c in "".join(out) if not 0xD800 <= ord(c) <= 0xDFFF)


def main():
    llama_tokenize, model = sys.argv[1], sys.argv[2]
    seeds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    pieces = int(sys.argv[4]) if len(sys.argv) > 4 else 20000
    ours = os.path.join(os.path.dirname(__file__), "../../../target/release/examples/tokenize")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "text.txt")
        for seed in range(seeds):
            with open(path, "w", encoding="utf-8") as f:
                f.write(random_text(random.Random(seed), pieces))
            for flags in ([], ["--no-parse-special"]):
                ref = subprocess.run([llama_tokenize, "-m", model, "-f", path, "--no-escape", "--ids", "--log-disable"]
                                     + flags, capture_output=True, check=True).stdout
                got = subprocess.run([ours, model, "@" + path] + flags, capture_output=True, check=True).stdout
                same = ref.strip() == got.strip()
                failed += not same
                print(f"seed {seed} {' '.join(flags) or '(parse special)'}: {'same' if same else 'DIFFERENT'}")
    print(f"{2 * seeds - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
