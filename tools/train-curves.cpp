// train-curves: the curves of one or more `distill` runs in one SVG, from their JSON logs (e.g. a
// KD student next to a CE-only one).
//
//   train-curves --log kd/training_log.json --log ce/training_log.json --label KD --label CE
//                --series eval,ce --smooth 5 --out kd-vs-ce.svg
#include <filesystem>
#include <fstream>
#include <sstream>

#include "app/report.h"
#include "engine/error.h"
#include "tools/common.h"

using namespace minfer;

int main(int argc, char** argv) {
  CLI::App app{
      "Plot the curves of distill runs (their training_log.json) side by side in one SVG: "
      "held-out NLL per evaluation and training loss / KD / CE per step.",
      "train-curves"};
  std::vector<std::string> logs, labels;
  std::string series = "eval,ce", title = "distill runs", out;
  int smooth = 1;
  app.add_option("--log", logs, "a distill training_log.json (repeat for each run)")->required();
  app.add_option("--label", labels,
                 "legend label of each --log, in order (default: the log's folder name)");
  app.add_option("--series", series,
                 "comma-separated: eval (held-out NLL; an encoder run: MSE), loss, kd, ce "
                 "(training, per step)");
  app.add_option("--smooth", smooth, "per-step series: trailing mean over this many steps")
      ->check(CLI::PositiveNumber);
  app.add_option("--title", title, "plot title");
  app.add_option("--out", out, "output .svg (written through a temporary file)")->required();
  return tool::run(app, argc, argv, [&] {
    MINFER_CHECK(labels.empty() || labels.size() == logs.size(),
                 "--label given {} times for {} --log files (give one per log, or none)",
                 labels.size(), logs.size());
    std::vector<std::string> which;
    std::stringstream ss(series);
    for (std::string s; std::getline(ss, s, ',');) which.push_back(s);
    MINFER_CHECK(!which.empty(), "--series '{}': no series named", series);
    std::vector<CurveSeries> curves;
    for (size_t i = 0; i < logs.size(); ++i) {
      std::ifstream in(logs[i], std::ios::binary);
      MINFER_CHECK(in.good(), "--log {}: cannot read the file", logs[i]);
      std::stringstream text;
      text << in.rdbuf();
      const std::filesystem::path p(logs[i]);
      const std::string label = labels.empty() ? p.parent_path().filename().string() : labels[i];
      for (CurveSeries& c : training_log_curves(text.str(), label.empty() ? logs[i] : label, which,
                                                smooth, "--log " + logs[i]))
        curves.push_back(std::move(c));
    }
    write_file_atomic(out, curves_svg(title, "optimizer step", "nats per token", curves));
    std::printf("wrote %s (%zu series)\n", out.c_str(), curves.size());
    return 0;
  });
}
