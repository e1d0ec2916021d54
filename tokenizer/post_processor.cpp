// Pipeline stage 5, the post-processor: tokenizer.json parsing of TemplateProcessing,
// BertProcessing, RobertaProcessing, ByteLevel and Sequence into fixed prefix and suffix ids
// (HF tokenizers/src/processors/*.rs, single sequence only).
#include "tokenizer/post_processor.h"

#include <string>

namespace minfer {

using nlohmann::json;

void parse_post_processor(const json& o, const JsonReader& r, std::vector<int32_t>& prefix,
                          std::vector<int32_t>& suffix) {
  if (o.is_null()) return;
  std::string t = r.type(o, "post_processor");
  auto id_of = [&](const json& pair, const char* what) {  // ["[CLS]", 101]
    int32_t id = -1;
    if (!pair.is_array() || pair.size() != 2 || !json_get(pair[1], &id) || id < 0)
      r.fail(fmt::format("{}.{} should be [token, id], found {}", t, what, pair.dump()));
    return id;
  };
  if (t == "Sequence") {
    for (const json& c : r.array(o, "processors", "Sequence post_processor")) {
      std::vector<int32_t> p, s;
      parse_post_processor(c, r, p, s);
      prefix.insert(prefix.begin(), p.begin(), p.end());
      suffix.insert(suffix.end(), s.begin(), s.end());
    }
  } else if (t == "ByteLevel") {
    // Offsets only; no ids.
  } else if (t == "BertProcessing" || t == "RobertaProcessing") {
    prefix.push_back(id_of(r.field(o, "cls", t), "cls"));
    suffix.push_back(id_of(r.field(o, "sep", t), "sep"));
  } else if (t == "TemplateProcessing") {
    const json& single = r.array(o, "single", "TemplateProcessing");
    const json& specials = o.contains("special_tokens") ? o.at("special_tokens") : json::object();
    bool seen_a = false;
    for (const json& item : single) {
      if (item.contains("Sequence")) {
        if (seen_a) r.fail("TemplateProcessing 'single' uses the sequence twice");
        seen_a = true;
      } else if (item.contains("SpecialToken")) {
        std::string id = r.str(item.at("SpecialToken"), "id", "TemplateProcessing SpecialToken");
        if (!specials.contains(id))
          r.fail(fmt::format(
              "TemplateProcessing uses special token '{}' missing from special_tokens", id));
        for (const json& v :
             r.array(specials.at(id), "ids", "TemplateProcessing special_tokens entry")) {
          int32_t id = -1;
          if (!json_get(v, &id) || id < 0)
            r.fail(fmt::format("TemplateProcessing special token '{}': id {} is not a token id",
                               item.at("SpecialToken").dump(), v.dump()));
          (seen_a ? suffix : prefix).push_back(id);
        }
      } else {
        r.fail(fmt::format("TemplateProcessing item {} is not understood", item.dump()));
      }
    }
  } else {
    r.fail(
        fmt::format("post_processor type '{}' is not supported (supported: Sequence, ByteLevel, "
                    "BertProcessing, RobertaProcessing, TemplateProcessing)",
                    t));
  }
}

}  // namespace minfer
