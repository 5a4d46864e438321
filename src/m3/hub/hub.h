// Resolving `--model`: a local snapshot directory, or a Hugging Face hub id that is
// looked up in the local HF cache and otherwise downloaded into it (libcurl).
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

namespace m3 {

struct HubOptions {
  std::string endpoint = "https://huggingface.co";  // HF_ENDPOINT
  std::string token;                                  // HF_TOKEN (or the token file)
  std::filesystem::path cache_dir;                    // HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub
  std::string revision = "main";
  bool progress = true;       // progress bar on stderr
  bool offline = false;       // HF_HUB_OFFLINE=1: cache only
};

// Reads HF_ENDPOINT, HF_TOKEN, HF_TOKEN_PATH/HF_HOME token file, HF_HUB_CACHE, HF_HOME,
// HF_HUB_OFFLINE, exactly as huggingface_hub does.
HubOptions hub_options_from_env();

// "owner/name" (no further slashes, not an existing path).
bool looks_like_hub_id(std::string_view model);

// A directory holding the model's files. `model` that is an existing directory is
// returned as is. A hub id is served from a complete cached snapshot when there is one,
// else downloaded (resumable, into the cache in huggingface_hub's layout). Throws
// m3::HubUnreachable when the hub cannot be reached and no complete snapshot is cached,
// m3::Error for other failures (401/403/404 with the URL, disk errors).
std::filesystem::path resolve_model(const std::string& model, const HubOptions& options);

}  // namespace m3
