// `m3embed download`: fetch a hub model into the HF cache (or find it there) and print
// the snapshot directory.
#include <iostream>
#include <memory>

#include "m3/cli/commands.h"
#include "m3/hub/hub.h"

namespace m3::cli {

void add_download_command(CLI::App& app) {
  auto model = std::make_shared<std::string>("BAAI/bge-m3");
  auto* cmd = app.add_subcommand("download", "Download a hub model into the Hugging Face cache and print its path");
  cmd->footer(
      "Uses the cache layout of huggingface_hub (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub), "
      "so an existing download is reused and ours is reused by Python tools. Environment: HF_ENDPOINT, HF_TOKEN, "
      "HF_HUB_OFFLINE. Interrupted downloads resume.");
  cmd->add_option("-m,--model", *model, "Hub id, e.g. BAAI/bge-m3")->envname("M3_MODEL")->capture_default_str();
  cmd->callback([model] { std::cout << resolve_model(*model, hub_options_from_env()).string() << std::endl; });
}

}  // namespace m3::cli
