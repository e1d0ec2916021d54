#!/usr/bin/env python3
"""The minfer / llama.cpp ratio table from one bench/llamacpp.sh run's folder.

Usage: llamacpp_table.py RESULTS_DIR "method:TYPE method:TYPE ..."

With round folders RESULTS_DIR/r1, r2, ... (bench/llamacpp.sh with ROUNDS > 1) every figure is
the median over the rounds, and each ratio is followed by its range over the rounds (each round's
ratio is taken within the round: a llama.cpp file and the minfer method right after it).
Reads membw.json (bench_membw), llama-<method>.json (llama-bench -o json), llama-<method>-load.json
(other processes' busy cores just before llama-bench) and minfer-<method>.json (bench --json).
Decode GB/s: bytes of weights read per token x decode tok/s (llama.cpp: llama-bench's model_size,
every tensor, the tied output matrix included; minfer: every Linear, lm_head included); share: of
the read bandwidth bench_membw measured in the same run. Standard library only.
"""
import json
import os
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def fmt(v, d=1):
    return "-" if v is None else f"{v:.{d}f}"


def ratio(a, b):
    return None if a is None or not b else a / b


def median(vals):
    v = sorted(x for x in vals if x is not None)
    if not v:
        return None
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def read_rows(out, pairs, busy, tag):
    """One round's rows (every pair's figures) from folder out; busy collects loaded runs."""
    rows = []
    for pair in pairs:
        method, typ = pair.split(":")
        r = {"method": method, "type": typ}
        try:
            lj = load(os.path.join(out, f"llama-{method}.json"))
            for t in lj:
                if t.get("n_gen", 0) == 0 and t.get("n_prompt", 0) > 0:
                    r["l_pp"] = t["avg_ts"]
                if t.get("n_gen", 0) > 0 and t.get("n_prompt", 0) == 0:
                    r["l_tg"] = t["avg_ts"]
                    r["l_bytes"] = t.get("model_size")
            r["l_load"] = load(os.path.join(out, f"llama-{method}-load.json"))["load_cores"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            r["l_err"] = str(e)
        try:
            mj = load(os.path.join(out, f"minfer-{method}.json"))
            m = mj["rows"][0]
            if m.get("status") == "ok":
                r["m_pp"], r["m_tg"] = m.get("prefill_tps"), m.get("decode_tps")
                r["m_gbps"], r["m_load"] = m.get("decode_gbps"), m.get("load_cores")
                r["m_bpw"] = m.get("bits_per_weight")
            else:
                r["m_err"] = m.get("note", m.get("status"))
        except (OSError, ValueError, KeyError, IndexError) as e:
            r["m_err"] = str(e)
        if r.get("l_tg") and r.get("l_bytes"):
            r["l_gbps"] = r["l_bytes"] * r["l_tg"] / 1e9
        for who in ("l", "m"):
            ld = r.get(f"{who}_load")
            if ld is not None and ld >= 0.25:
                busy.append(f"{'llama.cpp ' + typ if who == 'l' else 'minfer ' + method}{tag} ({ld:.1f})")
        rows.append(r)
    return rows


def combine(rounds):
    """Per pair: the medians of every figure over the rounds, and the range of each ratio."""
    rows = []
    for i, first in enumerate(rounds[0]):
        all_r = [rr[i] for rr in rounds]
        r = {"method": first["method"], "type": first["type"]}
        for key in ("l_pp", "l_tg", "m_pp", "m_tg", "m_gbps", "l_gbps"):
            r[key] = median(x.get(key) for x in all_r)
        for name, m, l in (("pp", "m_pp", "l_pp"), ("tg", "m_tg", "l_tg")):
            rs = [ratio(x.get(m), x.get(l)) for x in all_r]
            r[f"{name}_ratio"] = median(rs)
            ok = [x for x in rs if x is not None]
            r[f"{name}_range"] = (min(ok), max(ok)) if len(ok) > 1 else None
        for who in ("l", "m"):
            errs = [x[f"{who}_err"] for x in all_r if x.get(f"{who}_err")]
            if errs:
                r[f"{who}_err"] = errs[0] + (f" ({len(errs)} of {len(all_r)} rounds)" if len(all_r) > 1 else "")
        rows.append(r)
    return rows


def main():
    out, pairs = sys.argv[1], sys.argv[2].split()
    bw = load(os.path.join(out, "membw.json"))
    read_bw = bw["read_gbps"]
    busy = []
    dirs = sorted((d for d in os.listdir(out) if d[:1] == "r" and d[1:].isdigit()), key=lambda d: int(d[1:]))
    if dirs:
        rows = combine([read_rows(os.path.join(out, d), pairs, busy, f" round {d[1:]}") for d in dirs])
    else:
        rows = combine([read_rows(out, pairs, busy, "")])

    print(f"memory bandwidth ({bw['threads']} threads): read {read_bw:.1f} GB/s, "
          f"triad {bw['triad_gbps']:.1f} GB/s (other processes' load {bw['load_cores']:.1f} cores)")
    print()
    if dirs:
        print(f"Medians over {len(dirs)} rounds; each ratio's range over the rounds in brackets.\n")
    print("| minfer vs llama.cpp | prefill ratio | decode ratio | minfer prefill / decode tok/s "
          "| llama.cpp prefill / decode tok/s | minfer decode GB/s (share of read bw) "
          "| llama.cpp decode GB/s (share) |")
    print("|---|---:|---:|---:|---:|---:|---:|")

    def rat(r, name):
        v, rg = r.get(f"{name}_ratio"), r.get(f"{name}_range")
        return fmt(v, 2) + ("" if rg is None else f" [{rg[0]:.2f}–{rg[1]:.2f}]")

    for r in rows:
        share = lambda g: "-" if g is None else f"{g:.1f} ({100 * g / read_bw:.0f} %)"
        print(f"| {r['method']} vs {r['type']} | {rat(r, 'pp')} "
              f"| {rat(r, 'tg')} "
              f"| {fmt(r.get('m_pp'))} / {fmt(r.get('m_tg'))} "
              f"| {fmt(r.get('l_pp'))} / {fmt(r.get('l_tg'))} "
              f"| {share(r.get('m_gbps'))} | {share(r.get('l_gbps'))} |")
    for r in rows:
        for who, name in (("m", "minfer " + r["method"]), ("l", "llama.cpp " + r["type"])):
            if r.get(f"{who}_err"):
                print(f"\n- {name}: failed: {r[f'{who}_err']}")
    if busy or bw["load_cores"] >= 0.25:
        print("\n**BUSY MACHINE**: other processes kept CPU cores busy while these were timed "
              f"(cores): {', '.join(busy) if busy else 'bandwidth run'}; absolute figures are low "
              "and the ratios carry that noise.")


if __name__ == "__main__":
    main()
