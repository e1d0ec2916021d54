#!/usr/bin/env python3
"""One case of scripts/llamacpp_greedy.sh: llama.cpp's greedy bytes against minfer's.

    llamacpp_greedy_case.py NAME MODEL.gguf PROMPT MODE LLAMA_COMPLETION RUN_MODEL N THREADS

MODE: `native` (run-model as a user runs it, llama-completion with its defaults: F16 KV cache,
flash attention auto), `f32` (run-model --dtype f32, llama.cpp defaults), or `q8` (run-model with
MINFER_GGML_PATH=q8, i.e. 8-bit activations at every T as llama.cpp, against llama-completion
with an F32 KV cache and flash attention off: the closest arithmetic the two engines have).

llama-completion prints the raw bytes of its tokens; run-model --json gives the token ids, which
are turned into bytes with the GGUF's byte-level vocabulary (GPT-2's bytes_to_unicode inverse;
control tokens print nothing, as llama.cpp does). A random model emits partial UTF-8 sequences,
which a comparison of decoded text would blur. Prints one line: identical, or differs with the
first differing byte and the minfer token it falls in, or prefix when llama.cpp's output is a
truncated start of minfer's. A difference also gives minfer's top-1 minus top-2 logit at the
differing token (run-model --json margins): below ~0.05 the choice is a near-tie that f32
summation order or 8-bit activation rounding can flip.
"""
import json
import os
import subprocess
import sys

import gguf


def byte_decoder():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, k = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + k)
            k += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def main() -> int:
    name, model, prompt, dtype, lc, rm, n, threads = sys.argv[1:]
    assert dtype in ("native", "f32", "q8"), dtype
    # Greedy: temperature 0 (llama.cpp then takes the argmax, no other sampler runs), top-k 1,
    # no repetition penalty, plain completion (no chat template).
    extra = ["-ctk", "f32", "-ctv", "f32", "-fa", "off"] if dtype == "q8" else []
    run = subprocess.run([lc, "-m", model, "-p", prompt, "-n", n, "--temp", "0", "--top-k", "1",
                          "--repeat-penalty", "1", "-no-cnv", "--no-display-prompt",
                          "--simple-io", "-t", threads, "--seed", "0"] + extra,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if run.returncode != 0:
        err = [l for l in run.stderr.decode(errors="replace").splitlines() if "error" in l.lower()]
        print(f"{name:12s} {dtype:6s} llama.cpp fails: {(err or ['exit %d' % run.returncode])[-1]}")
        return 0
    ref = run.stdout
    # llama-completion ends its output with " [end of text]\n" at an end-of-generation token,
    # else with "\n\n" after the last token.
    # (also right at the start, with or without newlines after it).
    if ref.rstrip(b"\n").endswith(b" [end of text]"):
        ref = ref.rstrip(b"\n")[: -len(b" [end of text]")]
    elif ref.endswith(b"\n\n"):
        ref = ref[:-2]
    env = dict(os.environ, MINFER_GGML_PATH="q8" if dtype == "q8" else "auto")
    res = json.loads(subprocess.run([rm, "--model", model, "--prompt", prompt, "-n", n, "--temp",
                                     "0", "--json", "-t", threads, "--dtype",
                                     "f32" if dtype == "f32" else "native"],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                    check=True).stdout)
    r = gguf.GGUFReader(model)
    assert r.fields["tokenizer.ggml.model"].contents() == "gpt2", "byte-level BPE vocabularies only"
    f = r.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    tf = r.fields.get("tokenizer.ggml.token_type")
    types = [int(tf.parts[i][0]) for i in tf.data] if tf else [1] * len(tokens)
    dec = byte_decoder()
    pieces = [b"" if types[t] == 3 else
              b"".join(bytes([dec[ch]]) if ch in dec else ch.encode() for ch in tokens[t])
              for t in res["ids"]]
    mine = b"".join(pieces)
    if mine == ref:
        print(f"{name:12s} {dtype:6s} identical  {prompt[:32]!r} ({len(pieces)} tokens)")
        return 0
    if len(ref) < len(mine) and mine.startswith(ref):
        # Seen with llama-completion: the same command's piped output is sometimes cut short
        # (52 then 34 bytes for one prompt), most likely unflushed partial UTF-8 at exit.
        print(f"{name:12s} {dtype:6s} prefix     {prompt[:32]!r}: llama.cpp's {len(ref)} bytes are "
              f"the start of minfer's {len(mine)} ({len(pieces)} tokens)")
        return 0
    i = next((j for j, (a, b) in enumerate(zip(ref, mine)) if a != b), min(len(ref), len(mine)))
    at, acc = 0, 0
    while at < len(pieces) and acc + len(pieces[at]) <= i:
        acc += len(pieces[at])
        at += 1
    margins = res.get("margins", [])
    margin = f"{margins[at]:.3f}" if at < len(margins) else "?"
    print(f"{name:12s} {dtype:6s} differs    {prompt[:32]!r}: first difference at byte {i} "
          f"(minfer token {at} of {len(pieces)}, its top-2 margin {margin}): "
          f"llama.cpp {ref[max(0, i - 12):i + 12]!r} | minfer {mine[max(0, i - 12):i + 12]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
