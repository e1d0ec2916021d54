// embed: sentence embeddings from a BERT encoder, pooled, normalised and truncated as the model
// folder's sentence-transformers files say (modules.json, sentence_bert_config.json,
// 1_Pooling/config.json; without them: mean pooling, L2 normalisation, 256 tokens), one line of
// output per input line.
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "app/model_hub.h"
#include "models/eval.h"
#include "models/loader.h"
#include "tools/common.h"

using namespace minfer;

int main(int argc, char** argv) {
  CLI::App app{"Sentence embeddings, one per input line.", "embed"};
  std::string model = "minilm", text_path = "-", backend = "cpu";
  int threads = 0, device = 0, batch = 32;
  bool similarity = false, json = false, verbose = false;
  app.add_option("--model,-m", model, "minilm | HF folder (config.json + *.safetensors)");
  app.add_option("--text,-f", text_path, "input file, one sentence per line (- = stdin)");
  app.add_flag("--similarity", similarity, "print the cosine similarity matrix instead");
  app.add_option("--batch", batch, "sentences per forward pass")->check(CLI::Range(1, 4096));
  app.add_option("--threads,-t", threads, "threads")->check(CLI::NonNegativeNumber);
  app.add_option("--backend", backend, "cpu | cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--device", device, "GPU index")->check(CLI::NonNegativeNumber);
  app.add_flag("--json", json, "JSON output");
  app.add_flag("--verbose,-v", verbose,
               "print the pooling, normalisation and max_seq_length in use (stderr)");
  return tool::run(app, argc, argv, [&] {
    std::vector<std::string> lines;
    {
      std::ifstream f;
      if (text_path != "-") {
        f.open(text_path);
        MINFER_CHECK(f.good(), "{}: cannot open", text_path);
      }
      std::istream& in = text_path == "-" ? std::cin : f;
      for (std::string l; std::getline(in, l);) lines.push_back(l);
    }
    MINFER_CHECK(!lines.empty(), "no input lines");
    auto be = make_backend(backend, threads, device);
    LoadedModel lm = open_named_model(model, *be);
    const SentenceEmbeddingConfig st = read_sentence_embedding_config(lm.path);
    if (verbose) std::fprintf(stderr, "embedding config: %s\n", st.source.c_str());
    auto emb = embed_texts(*lm.model, *lm.tokenizer, lines, st, batch);
    if (similarity) {
      nlohmann::json j = nlohmann::json::array();
      for (size_t a = 0; a < emb.size(); ++a) {
        std::vector<double> row;
        for (size_t b = 0; b < emb.size(); ++b) row.push_back(cosine(emb[a], emb[b]));
        if (json) {
          j.push_back(row);
        } else {
          for (double v : row) std::printf("%7.4f ", v);
          std::printf("\n");
        }
      }
      if (json) std::printf("%s\n", j.dump().c_str());
      return 0;
    }
    for (auto& e : emb) {
      if (json) {
        std::printf("%s\n", nlohmann::json(e).dump().c_str());
      } else {
        for (size_t i = 0; i < e.size(); ++i) std::printf(i ? " %.6f" : "%.6f", e[i]);
        std::printf("\n");
      }
    }
    return 0;
  });
}
