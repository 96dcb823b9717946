// The bundle's manifest.json, parsed and validated like flexavatar/bundle.py's Manifest.from_dict:
// same schema name and version, same required fields and types, same error wording (field path + what was
// expected). Only what the C++ runtime uses is kept in the structs; everything else is still checked.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "flexavatar/status.h"

namespace flexavatar {
namespace runtime {

constexpr const char* kSchema = "flexavatar-bundle";
constexpr int64_t kSchemaVersion = 1;
constexpr const char* kManifestName = "manifest.json";

struct FileRecord {
  std::string path;    // relative to the bundle folder, POSIX separators, no '..'
  std::string sha256;  // 64 lowercase hex digits
  int64_t size = 0;
};

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;  // -1 for a named dynamic dimension
  std::vector<std::string> dim_names;  // "" for fixed dimensions
  std::string dtype;
};

struct ModelArtifact {
  std::string name, role, format, precision;
  std::vector<FileRecord> files;  // files[0] is the model file
  std::vector<TensorSpec> inputs, outputs;
  const TensorSpec* input(const std::string& tensor) const;
  const TensorSpec* output(const std::string& tensor) const;
};

struct Conventions {
  std::string axes, intrinsics, quaternion_order, color;
  int64_t image_size = 0, sh_degree = 0, n_gaussians = 0, n_head_tokens = 0, d_code = 0, expression_dim = 0,
          dataset_id = 0;
  std::map<std::string, std::pair<int64_t, int64_t>> expression_layout;
};

struct AvatarInfo {
  FileRecord code;
  float cam2world[16];
  float intrinsics[9];
};

struct Manifest {
  int64_t schema_version = 0;
  int64_t opset = 0;
  std::string template_sha256;
  Conventions conventions;
  std::vector<ModelArtifact> artifacts;
  // Artifacts of a format, role or precision this runtime does not know (a newer exporter's), left aside rather than
  // refused, as in Python (Manifest.ignored): "NAME (format 'x', ...)". Their files are never opened nor hashed.
  std::vector<std::string> ignored;
  bool has_avatar = false;
  AvatarInfo avatar{};
  bool has_check = false;
  FileRecord check_file;  // check.npz: the numerics check set (flexavatar-verify); hashed like every file

  // The first artifact with this role/format/precision, or null.
  const ModelArtifact* find(const std::string& role, const std::string& format, const std::string& precision) const;
  std::vector<FileRecord> files() const;  // every file listed (artifacts, the avatar code, the check set)
  // The artifacts by name, and those left aside, for error messages (Python's Manifest.inventory).
  std::string inventory() const;
};

// Parses manifest.json text. Errors: kBundleInvalid with "manifest.<field path> ..." messages.
Status parse_manifest(const char* text, size_t size, Manifest* out);
Status read_manifest(const std::string& bundle_dir, Manifest* out);

}  // namespace runtime
}  // namespace flexavatar
