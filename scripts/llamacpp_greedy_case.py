#!/usr/bin/env python3
"""One case of scripts/llamacpp_greedy.sh: llama.cpp's greedy token ids against minfer's.

    llamacpp_greedy_case.py NAME MODEL.gguf PROMPT MODE LLAMACPP_LOGITS RUN_MODEL N THREADS

LLAMACPP_LOGITS is scripts/llamacpp_logits.cpp built against llama.cpp
(scripts/llamacpp_logits_build.sh): greedy steps through llama.cpp's C API, printing the prompt
ids, the generated ids and each step's top-1 minus top-2 logit (as run-model --json does).
Token ids are compared, not text: a random model emits partial UTF-8 that printed text blurs.

MODE:
  native  both engines as users run them: llama.cpp's defaults (F16 KV cache, flash attention
          auto, weight repacking on) and run-model's (native blocks; prompts of 8+ tokens through
          dequantize + sgemm, decode on 8-bit activations)
  f32     run-model --dtype f32 (weights dequantized at load) against llama.cpp's defaults
  q8      llama.cpp with an F32 KV cache and flash attention off, run-model with
          MINFER_GGML_PATH=q8 (8-bit activations at every T, as llama.cpp)
  q8nr    q8 with llama.cpp's weight repacking off (its reference CPU kernels: on x86 with AVX2
          it otherwise runs Q4_K, and with AVX-512 Q2_K, through repacked 8-row kernels)

Prints one line: `identical` (same prompt ids, same generated ids), or `differs` with the first
differing step and both engines' top-2 margins there, or `prompt ids differ`.
"""
import json
import os
import subprocess
import sys


def main() -> int:
    name, model, prompt, mode, lc, rm, n, threads = sys.argv[1:]
    assert mode in ("native", "f32", "q8", "q8nr"), mode
    lc_mode = "q8" if mode in ("q8", "q8nr") else "native"
    run = subprocess.run([lc, model, lc_mode, n, threads, "--prompt", prompt, "--repack",
                          "0" if mode == "q8nr" else "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if run.returncode != 0:
        err = run.stderr.strip().splitlines() or ["exit %d" % run.returncode]
        print(f"{name:14s} {mode:6s} llama.cpp fails: {err[-1]}")
        return 0
    ref = json.loads(run.stdout)
    env = dict(os.environ, MINFER_GGML_PATH="q8" if mode in ("q8", "q8nr") else "auto")
    res = json.loads(subprocess.run([rm, "--model", model, "--prompt", prompt, "-n", n, "--temp",
                                     "0", "--json", "-t", threads, "--dtype",
                                     "f32" if mode == "f32" else "native"],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                    check=True).stdout)
    tok = os.path.join(os.path.dirname(rm), "tokenize")  # minfer's prompt ids (BOS as run-model)
    mine = [int(t) for t in subprocess.run([tok, "-t", model, "-f", "-", "--lines"],
                                           input=prompt + "\n", stdout=subprocess.PIPE,
                                           stderr=subprocess.DEVNULL, text=True,
                                           check=True).stdout.split()]
    if mine != ref["prompt_ids"] or res["prompt_tokens"] != len(mine):
        print(f"{name:14s} {mode:6s} prompt ids differ {prompt[:32]!r}: llama.cpp "
              f"{ref['prompt_ids']}, minfer {mine}")
        return 0
    a, b = ref["ids"], res["ids"]
    if a == b:
        print(f"{name:14s} {mode:6s} identical  {prompt[:32]!r} ({len(a)} tokens)")
        return 0
    i = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    ma, mb = ref["margins"], res.get("margins", [])
    fa = f"{ma[i]:.3f}" if i < len(ma) else "?"
    fb = f"{mb[i]:.3f}" if i < len(mb) else "?"
    what = (f"llama.cpp {a[i] if i < len(a) else 'end'} | minfer {b[i] if i < len(b) else 'end'}")
    print(f"{name:14s} {mode:6s} differs    {prompt[:32]!r}: first at step {i} ({what}); "
          f"top-2 margin there: llama.cpp {fa}, minfer {fb}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
