// Default data: where the tools find WikiText-2 raw (Merity et al. 2016, "Pointer Sentinel
// Mixture Models"; the `wikitext-2-raw-v1` files wiki.test.raw / wiki.valid.raw, as Hugging Face's
// perplexity guide and llama.cpp's perplexity tool use them) when no file is given.
#pragma once
#include <string>

namespace minfer {

// The path of `file` ("wiki.test.raw", "wiki.valid.raw") in the wikitext-2-raw folder, looked for
// in order:
//   $MINFER_WIKITEXT when set (and then only there);
//   ../shared/data/wikitext-2-raw, then shared/data/wikitext-2-raw, from the working directory;
//   shared/data/wikitext-2-raw in the nearest folder above the running program that has one
//     (<checkout>/build/bin/<tool> finds <checkout>/../shared/data/...), so a tool run from
//     another directory still finds the data beside its checkout.
// Throws an Error saying where it looked and how to give a file (`how`, e.g. "pass --text FILE")
// when none holds it, or when $MINFER_WIKITEXT names a folder without it.
std::string find_wikitext(const std::string& file, const std::string& how);
// The same lookup for an optional default (distill's held-out text): "" when no place holds the
// file; still an Error when $MINFER_WIKITEXT names a folder without it.
std::string locate_wikitext(const std::string& file);

}  // namespace minfer
