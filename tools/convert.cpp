// convert: a GGUF file (llama, qwen2, phi3, gemma or gemma2 architecture) -> a Hugging Face-style
// folder (config.json, model.safetensors, tokenizer.json, tokenizer_config.json) that transformers
// loads.
#include "engine/convert.h"

#include <filesystem>

#include "tools/common.h"

using namespace minfer;

int main(int argc, char** argv) {
  CLI::App app{"Convert a GGUF model into a Hugging Face folder.", "convert"};
  std::string model, out, dtype = "f32";
  bool force = false;
  app.add_option("--model,-m", model,
                 ".gguf file (llama, qwen2, phi3, gemma or gemma2 architecture)")
      ->required();
  app.add_option("--out,-o", out, "output folder (must not exist unless --force)")->required();
  app.add_option("--dtype", dtype, "dtype of every tensor in model.safetensors")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  app.add_flag("--force", force, "replace an existing output folder");
  return tool::run(app, argc, argv, [&] {
    const double t0 = tool::now_s();
    export_hf_folder(model, out, ConvertOptions{parse_export_dtype(dtype), force});
    std::printf(
        "wrote %s (%s, %.1f MB of weights) in %.1f s\n", out.c_str(), dtype.c_str(),
        double(std::filesystem::file_size(std::filesystem::path(out) / "model.safetensors")) / 1e6,
        tool::now_s() - t0);
    return 0;
  });
}
