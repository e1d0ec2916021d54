#!/usr/bin/env python3
"""Writes the fuzzing seed corpora tests/fuzz/corpus/<harness>/ (small valid inputs the fuzzer
mutates). Run from the repository root with a Python that has `gguf` and `numpy` (Debian's
python3 here); the compressed-folder seeds also need build/bin/compress. Re-running rewrites
the same files. See docs/fuzzing.md."""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
import gguf

ROOT = "tests/fuzz/corpus"


def out(harness, name, data):
    d = os.path.join(ROOT, harness)
    os.makedirs(d, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(os.path.join(d, name), mode) as f:
        f.write(data)


def safetensors_image(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, bytes)."""
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, dt, shape, b in tensors:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def seeds_safetensors():
    shutil.copy("tests/fixtures/safetensors/reference.safetensors", f"{ROOT}/safetensors/reference.safetensors")
    f32 = np.arange(6, dtype=np.float32).tobytes()
    out("safetensors", "small.safetensors", safetensors_image(
        [("a", "F32", [2, 3], f32), ("b", "F16", [3], np.ones(3, np.float16).tobytes()),
         ("c", "I8", [4], bytes(4)), ("d", "BF16", [0], b""), ("e", "U8", [], b"\x07")],
        {"format": "pt"}))
    out("safetensors", "empty.safetensors", safetensors_image([]))


def write_gguf(path, arch, kv, tensors):
    w = gguf.GGUFWriter(path, arch)
    for fn, *args in kv:
        getattr(w, fn)(*args)
    for name, arr, qtype in tensors:
        if qtype is None:
            w.add_tensor(name, arr)
        else:
            q = gguf.quants.quantize(arr, qtype)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def seeds_gguf():
    for f in ["tiny_rope_scaling.gguf", "tiny_unknown_arch.gguf", "types.gguf"]:
        shutil.copy(f"tests/fixtures/gguf/{f}", f"{ROOT}/gguf/{f}")
    tokens = ["<s>", "</s>", "H", "e", "l", "o", "Ġ", "w", "r", "d", "He", "ll", "llo", "Hello",
              "Ġw", "Ġwor", "Ġworld", "wor", "or", "ld"]
    merges = ["H e", "l l", "ll o", "He llo", "Ġ w", "o r", "w or", "Ġw or", "l d", "Ġwor ld"]
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((len(tokens), 32)).astype(np.float32)
    with tempfile.TemporaryDirectory() as t:
        p = os.path.join(t, "x.gguf")
        write_gguf(p, "llama", [
            ("add_block_count", 1), ("add_embedding_length", 32), ("add_feed_forward_length", 64),
            ("add_head_count", 4), ("add_head_count_kv", 2), ("add_context_length", 64),
            ("add_layer_norm_rms_eps", 1e-5), ("add_rope_freq_base", 10000.0),
            ("add_tokenizer_model", "gpt2"), ("add_tokenizer_pre", "llama-bpe"),
            ("add_token_list", tokens), ("add_token_merges", merges),
            ("add_token_types", [3, 3] + [1] * (len(tokens) - 2)),
            ("add_bos_token_id", 0), ("add_eos_token_id", 1), ("add_add_bos_token", True),
            ("add_chat_template", "{% for m in messages %}{{ m.content }}{% endfor %}"),
        ], [("token_embd.weight", emb, None),
            ("blk.0.attn_q.weight", emb[:, :32].copy(), gguf.GGMLQuantizationType.Q8_0),
            ("output_norm.weight", np.ones(32, np.float32), None)])
        shutil.copy(p, f"{ROOT}/gguf/llama_gpt2_tokenizer.gguf")
        write_gguf(p, "llama", [("add_tokenizer_model", "gpt2"), ("add_tokenizer_pre", "qwen2"),
                                ("add_token_list", tokens), ("add_token_merges", merges)],
                   [("w.q4_0", rng.standard_normal((2, 64)).astype(np.float32),
                     gguf.GGMLQuantizationType.Q4_0),
                    ("w.q4_1", rng.standard_normal((1, 32)).astype(np.float32),
                     gguf.GGMLQuantizationType.Q4_1),
                    ("w.f16", np.ones((2, 4), np.float16), None)])
        shutil.copy(p, f"{ROOT}/gguf/tokenizer_quant.gguf")


def seeds_config():
    for m in ["llama", "gpt2", "bert", "llama_untied"]:
        shutil.copy(f"tests/fixtures/parity/{m}/config.json", f"{ROOT}/config/{m}.json")
    c = json.load(open("tests/fixtures/parity/llama/config.json"))
    c["num_attention_heads_per_layer"] = [6, 3]
    c["num_key_value_heads_per_layer"] = [2, 1]
    c["intermediate_size_per_layer"] = [80, 40]
    out("config", "llama_pruned.json", json.dumps(c, indent=1))
    g = json.load(open("tests/fixtures/parity/gpt2/config.json"))
    g["pruned_heads"] = {"0": [1], "1": [0, 2]}
    out("config", "gpt2_pruned_heads.json", json.dumps(g, indent=1))


def seeds_tokenizer_json():
    vocab = {"<s>": 0, "</s>": 1, "H": 2, "e": 3, "l": 4, "o": 5, "Ġ": 6, "w": 7, "r": 8, "d": 9,
             "He": 10, "ll": 11, "llo": 12, "Hello": 13}
    bpe = {"version": "1.0", "truncation": None, "padding": None,
           "added_tokens": [{"id": 0, "content": "<s>", "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False, "special": True}],
           "normalizer": None,
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                             "use_regex": True},
           "post_processor": {"type": "TemplateProcessing",
                              "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                         {"Sequence": {"id": "A", "type_id": 0}}],
                              "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                                       {"Sequence": {"id": "B", "type_id": 1}}],
                              "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}},
           "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                       "use_regex": True},
           "model": {"type": "BPE", "dropout": None, "unk_token": None,
                     "continuing_subword_prefix": None, "end_of_word_suffix": None,
                     "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                     "vocab": vocab, "merges": ["H e", "l l", "ll o", "He llo"]}}
    out("tokenizer_json", "bpe_bytelevel.json", json.dumps(bpe, indent=1))
    spm = json.loads(json.dumps(bpe))
    spm["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "},
                                              "content": "▁"}]}
    spm["pre_tokenizer"] = None
    spm["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1,
                                                     "stop": 0}]}
    v = {"<unk>": 0, "<s>": 1, "▁": 2, "H": 3, "e": 4, "l": 5, "o": 6, "▁H": 7, "<0x41>": 8}
    spm["model"].update({"vocab": v, "merges": [["▁", "H"]], "byte_fallback": True,
                         "unk_token": "<unk>", "fuse_unk": True})
    spm["added_tokens"] = [dict(spm["added_tokens"][0], id=1)]
    spm["post_processor"]["special_tokens"]["<s>"]["ids"] = [1]
    out("tokenizer_json", "spm_bytefallback.json", json.dumps(spm, indent=1))
    wp = {"version": "1.0", "added_tokens": [
        {"id": 0, "content": "[PAD]", "special": True, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False},
        {"id": 1, "content": "[UNK]", "special": True, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False},
        {"id": 2, "content": "[CLS]", "special": True, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False},
        {"id": 3, "content": "[SEP]", "special": True, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False}],
          "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                         "strip_accents": None, "lowercase": True},
          "pre_tokenizer": {"type": "BertPreTokenizer"},
          "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
          "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
          "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                    "max_input_chars_per_word": 100,
                    "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "hello": 4,
                              "world": 5, "##s": 6, "h": 7, "##ello": 8, "!": 9}}}
    out("tokenizer_json", "wordpiece.json", json.dumps(wp, indent=1))
    wl = json.loads(json.dumps(wp))
    wl["model"] = {"type": "WordLevel", "vocab": wp["model"]["vocab"], "unk_token": "[UNK]"}
    wl["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Whitespace"}, {"type": "Punctuation", "behavior": "Isolated"},
        {"type": "Digits", "individual_digits": True},
        {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Removed", "invert": False},
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}]}
    wl["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "NFKC"}, {"type": "Lowercase"}, {"type": "Strip", "strip_left": True,
                                                  "strip_right": True}, {"type": "StripAccents"}]}
    wl["post_processor"] = {"type": "RobertaProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2],
                            "trim_offsets": True, "add_prefix_space": False}
    out("tokenizer_json", "wordlevel_sequence.json", json.dumps(wl, indent=1))


def seeds_tokenizer_encode():
    texts = ["Hello world!", "  leading spaces\tand tabs\n\nnew lines", "héllo wörld 日本語 🙂",
             "<s>special</s> <|endoftext|> [CLS]", "1234567890 3.14 don't we'll I'M",
             "a\x00b\x7f", "\xe2\x80\x8b zero width, \u00a0nbsp"]
    for i, t in enumerate(texts):
        for k in range(5):
            out("tokenizer_encode", f"t{i}_{k}", bytes([k]) + t.encode())
    out("tokenizer_encode", "invalid_utf8", b"\x00ab\xff\xfe")


def seeds_chat_template():
    real = json.load(open("tests/fixtures/chat/chat_templates.expected.json"))
    for t in real:
        case = t["cases"][0]
        ctx = {k: v for k, v in case.items() if k not in ("name", "expected")}
        if t.get("bos_token"):
            ctx.setdefault("bos_token", t["bos_token"])
        if t.get("eos_token"):
            ctx.setdefault("eos_token", t["eos_token"])
        out("chat_template", t["name"].replace("/", "_"),
            t["template"].encode() + b"\0" + json.dumps(ctx).encode())
    units = json.load(open("tests/fixtures/chat/chat_units.expected.json"))
    ctx = json.dumps(units["vars"]).encode()
    for i, c in enumerate(units["cases"]):
        out("chat_template", f"unit{i:02d}", c["template"].encode() + b"\0" + ctx)


def seeds_compressed_folder():
    """A tiny llama compressed with several methods; each seed keeps one layer's k_proj entry
    (and the tensors it needs) so the file stays small."""
    methods = ["int8", "int4-g32", "int4-g32-asym", "nf4-dq", "binary", "ternary", "fp16",
               "w8a8", "llm-int8", "lowrank-50+int8", "magnitude-2:4", "magnitude-50+int4-g32",
               "magnitude-80+int8 --sparse-storage csr", "magnitude-70-layer --sparse-storage csr"]
    name = "model.layers.0.self_attn.k_proj.weight"
    with tempfile.TemporaryDirectory() as t:
        for spec in methods:
            m, *extra = spec.split()
            m_name = m + ("-csr" if "csr" in extra else "")
            d = os.path.join(t, m_name)
            r = subprocess.run(["build/bin/compress", "--model", "tests/fixtures/parity/llama",
                                "--method", m, "--out", d] + extra, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"skip {m}: {r.stderr.strip()}", file=sys.stderr)
                continue
            cfg = json.load(open(os.path.join(d, "config.json")))
            q = cfg["quantization"]
            q["tensors"] = {k: v for k, v in q["tensors"].items() if k == name}
            from safetensors.numpy import load_file, save
            st = load_file(os.path.join(d, "model.safetensors"))
            keep = {k: v for k, v in st.items() if k.startswith(name[:-len(".weight")])}
            blob = save(keep)
            out("compressed_folder", m_name.replace(":", "_"),
                json.dumps(cfg, indent=1).encode() + b"\0" + blob)


def dict_entry(s):
    return '"' + "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "\\x%02x" % ord(c)
                         for c in s) + '"'


def write_dicts():
    """libFuzzer dictionaries tests/fuzz/<harness>.dict: the keys and words each reader looks
    for (string literals of its sources), quoted as they appear in the input, plus the input's
    syntax. They let the fuzzer reach past "unknown field" early exits."""
    import re
    sources = {
        "config": ["engine/config.cpp"],
        "safetensors": ["engine/safetensors.cpp", "engine/tensor.cpp"],
        "gguf": ["engine/gguf.cpp", "engine/gguf_source.cpp", "tokenizer/tokenizer_gguf.cpp"],
        "tokenizer_json": ["tokenizer/loader_json.cpp", "tokenizer/models.cpp",
                           "tokenizer/normalizers.cpp", "tokenizer/pretokenize.cpp",
                           "tokenizer/post_processor.cpp", "tokenizer/decoders.cpp",
                           "tokenizer/added_tokens.cpp"],
        "compressed_folder": ["engine/compressed_folder.cpp", "engine/linear.cpp",
                              "engine/config.cpp", "kernels/common/qscheme.h"] +
                             [f"engine/formats/{f}" for f in sorted(os.listdir("engine/formats"))],
        "chat_template": ["tokenizer/chat_template.cpp"],
    }
    json_syntax = ["{", "}", "[", "]", ":", ",", "true", "false", "null", "0", "-1", "1e400",
                   "2147483648", "9223372036854775808", "\\u0000", "\\ud800"]
    for h, files in sources.items():
        words = set()
        for f in files:
            for m in re.finditer(r'"((?:[^"\\\n]|\\.){1,40})"', open(f).read()):
                w = m.group(1)
                if "{}" in w or w.startswith("%"):
                    continue
                words.add(w.encode().decode("unicode_escape", errors="ignore"))
        if h == "gguf":
            entries = sorted(words)
        elif h == "chat_template":
            entries = sorted(words) + ["{%", "%}", "{{", "}}", "{#", "#}", "-%}", "{%-",
                                       "endfor", "endif", "endmacro", "endset", "loop.",
                                       "messages", "message['content']", "|", "~", "**", "//"]
        else:
            entries = sorted('"' + w + '"' for w in words) + json_syntax
        with open(f"tests/fuzz/{h}.dict", "w") as out:
            out.write(f"# {h}: generated by tests/fuzz/make_seeds.py\n")
            for e in entries:
                if e:
                    out.write(dict_entry(e) + "\n")


if __name__ == "__main__":
    write_dicts()
    if "--dicts-only" in sys.argv:
        sys.exit(0)
    seeds_safetensors()
    seeds_gguf()
    seeds_config()
    seeds_tokenizer_json()
    seeds_tokenizer_encode()
    seeds_chat_template()
    seeds_compressed_folder()
