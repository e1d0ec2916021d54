// libFuzzer harness: a compressed minfer folder's metadata and weights. The input is the
// folder's config.json text, a NUL byte, then a model.safetensors image. Every quantization
// entry naming a `<prefix>.weight` is loaded as a Linear through the format table (load_linear,
// check_linear) with the (in, out) its entry states, then dequantized; the HF part of the config
// goes through parse_config. See docs/fuzzing.md.
#include <nlohmann/json.hpp>

#include "engine/compressed_folder.h"
#include "engine/config.h"
#include "engine/linear.h"
#include "engine/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

using namespace minfer;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = fuzz::split_nul(data, size);
  const std::string& config = parts.first;
  const std::string& image = parts.second;
  fuzz::expect_clean([&] { (void)parse_config(config, "config.json"); });
  fuzz::expect_clean([&] {
    auto st = SafetensorsFile::open_memory(borrowed_storage(image.data(), image.size()),
                                           "model.safetensors");
    CompressedSource src(config, WeightStore::from_file(st), "fuzz-folder");
    // The entries, as the model loader would meet them (in/out come from the model's config
    // there; here from the entry itself, bounded so a dequantized copy stays small).
    const auto j = nlohmann::json::parse(config, nullptr, false);
    for (const auto& [name, e] : j["quantization"]["tensors"].items()) {
      const std::string suffix = ".weight";
      if (name.size() <= suffix.size() ||
          name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
        continue;
      const auto in = e.find("in"), out = e.find("out");
      if (in == e.end() || out == e.end() || !in->is_number_integer() || !out->is_number_integer())
        continue;
      const int64_t n_in = in->get<int64_t>(), n_out = out->get<int64_t>();
      if (n_in < 1 || n_out < 1 || n_in > 4096 || n_out > 4096 || n_in * n_out > (1 << 20))
        continue;
      const std::string prefix = name.substr(0, name.size() - suffix.size());
      fuzz::expect_clean([&] {
        Linear l = src.linear(prefix, n_in, n_out, src.has(prefix + ".bias"));
        (void)dequantize_weight(l);
        (void)linear_format(l);
        (void)bits_per_weight(l);
      });
    }
  });
  return 0;
}
