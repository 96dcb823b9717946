// Bundles written by the runtime unit tests (no exported bundle, no Python): a manifest in bundle.py's schema,
// and a tiny bundle whose decoder really loads (tiny_onnx.h), for tests that need a live runtime.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "sha256.h"
#include "tiny_onnx.h"

namespace test_bundle {

namespace fs = std::filesystem;

inline std::string file_json(const std::string& path, const std::string& sha, long size) {
  return R"({"path": ")" + path + R"(", "sha256": ")" + sha + R"(", "size": )" + std::to_string(size) + "}";
}

// A complete manifest in bundle.py's schema, with one decoder artifact (G = 4, R2 = 4, D = 8, E = 135).
inline std::string valid_manifest(const std::string& model_path = "decoder.fp32.onnx",
                                  const std::string& sha = std::string(64, 'a'), long size = 10) {
  return R"({
  "schema": "flexavatar-bundle", "schema_version": 1, "created": "2026-01-01T00:00:00+00:00",
  "versions": {"flexavatar": "0.1.0"}, "opset": 18,
  "model": {"config": {}, "checkpoint": "c.safetensors", "checkpoint_sha256": "x", "n_parameters": 5, "dinov2": null},
  "template": {"sha256": "t", "n_gaussians": 4, "res_head_tokens": 2, "res_gaussian_grid": 2, "source": "t.obj"},
  "conventions": {"axes": "opencv", "camera": "c", "intrinsics": "normalised", "image": "i", "image_size": 64,
    "quaternion_order": "wxyz", "color": "sh0", "sh_degree": 0, "sh0_to_rgb": "r", "scales": "s", "opacities": "o",
    "units": "metres", "n_gaussians": 4, "n_head_tokens": 4, "d_code": 8, "code_layout": "l", "code_file_layout": "f",
    "expression_dim": 135, "expression_layout": {"expression": [0, 100]}, "dataset_id": 1},
  "artifacts": [{"name": "decoder.fp32.onnx", "role": "decoder", "format": "onnx", "precision": "fp32",
    "files": [)" + file_json(model_path, sha, size) + R"(],
    "inputs": [{"name": "code", "shape": [1, 4, 8], "dtype": "float32"},
               {"name": "expressions", "shape": ["E", 135], "dtype": "float32"}],
    "outputs": [{"name": "means", "shape": ["E", 4, 3], "dtype": "float32"},
                {"name": "quats", "shape": ["E", 4, 4], "dtype": "float32"},
                {"name": "scales", "shape": ["E", 4, 3], "dtype": "float32"},
                {"name": "opacities", "shape": ["E", 4], "dtype": "float32"},
                {"name": "sh0", "shape": ["E", 4, 3], "dtype": "float32"}],
    "parity": {"reference": "pytorch-fp32", "runtime": "ort", "inputs": "seeded", "passed": true,
               "outputs": [{"name": "means", "max_abs_error": 1e-6, "tolerance": 1e-4, "passed": true}]},
    "fp32_ops": [], "notes": ""}],
  "avatar": null, "export_seconds": 1.5
})";
}

// A .npy file (format 1.0) with this header dict and these float32 values, padded as numpy pads it.
inline std::string npy_from_header(const std::string& dict, const std::vector<float>& values) {
  std::string header = dict;
  while ((10 + header.size() + 1) % 64) header += ' ';
  header += '\n';
  std::string bytes = std::string("\x93NUMPY\x01\x00", 8);
  bytes += char(header.size() & 0xFF);
  bytes += char(header.size() >> 8);
  bytes += header;
  bytes.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  return bytes;
}

// A C-order .npy file of `shape`, as numpy writes it (descr: "<f4" unless a test wants another dtype's header).
inline std::string npy_bytes(const std::vector<int64_t>& shape, const std::vector<float>& values,
                             const std::string& descr = "<f4") {
  std::string dims;
  for (int64_t d : shape) dims += std::to_string(d) + ", ";
  return npy_from_header("{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }", values);
}

// The CRC-32 of ZIP, bit by bit (an oracle independent of the reader's table-driven one).
inline uint32_t crc32_bitwise(const std::string& bytes) {
  uint32_t crc = 0xFFFFFFFFu;
  for (const char c : bytes) {
    crc ^= static_cast<unsigned char>(c);
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

// `data` as a DEFLATE stream of stored blocks (RFC 1951 3.2.4), the last one final: valid input for any
// inflater, made without a compressor.
inline std::string deflate_stored(const std::string& data) {
  std::string out;
  size_t at = 0;
  do {
    const size_t len = std::min<size_t>(data.size() - at, 65535);
    const bool last = at + len == data.size();
    out += char(last ? 1 : 0);
    out += char(len & 0xFF);
    out += char(len >> 8);
    out += char(~len & 0xFF);
    out += char((~len >> 8) & 0xFF);
    out.append(data, at, len);
    at += len;
  } while (at < data.size());
  return out;
}

// An .npz: a ZIP of the entries (name → .npy bytes) with their CRC-32s and the ZIP64 extra field in each local
// header (sizes 0xFFFFFFFF there), as numpy writes it. `method` 0: stored (np.savez); 8: deflated, as stored
// DEFLATE blocks; any other: the bytes as they are, labelled with that method.
inline std::string npz_bytes(const std::vector<std::pair<std::string, std::string>>& entries, uint16_t method = 0) {
  auto put = [](std::string& out, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out += char((v >> (8 * i)) & 0xFF);
  };
  std::string zip, directory;
  for (const auto& [name, raw] : entries) {
    const std::string data = method == 8 ? deflate_stored(raw) : raw;
    const uint32_t crc = crc32_bitwise(raw);
    const uint64_t offset = zip.size();
    put(zip, 0x04034b50, 4);
    put(zip, 45, 2);
    put(zip, 0, 2);
    put(zip, method, 2);
    put(zip, 0, 4);  // time, date
    put(zip, crc, 4);
    put(zip, 0xFFFFFFFFu, 4);
    put(zip, 0xFFFFFFFFu, 4);
    put(zip, name.size(), 2);
    put(zip, 20, 2);  // the ZIP64 extra field: id, length 16, uncompressed and compressed sizes
    zip += name;
    put(zip, 0x0001, 2);
    put(zip, 16, 2);
    put(zip, raw.size(), 8);
    put(zip, data.size(), 8);
    zip += data;
    put(directory, 0x02014b50, 4);
    put(directory, 45, 2);
    put(directory, 45, 2);
    put(directory, 0, 2);
    put(directory, method, 2);
    put(directory, 0, 4);
    put(directory, crc, 4);
    put(directory, data.size(), 4);
    put(directory, raw.size(), 4);
    put(directory, name.size(), 2);
    put(directory, 0, 2);
    put(directory, 0, 2);
    put(directory, 0, 2);
    put(directory, 0, 2);
    put(directory, 0, 4);
    put(directory, offset, 4);
    directory += name;
  }
  const uint64_t dir_offset = zip.size();
  zip += directory;
  put(zip, 0x06054b50, 4);
  put(zip, 0, 4);
  put(zip, entries.size(), 2);
  put(zip, entries.size(), 2);
  put(zip, directory.size(), 4);
  put(zip, dir_offset, 4);
  put(zip, 0, 2);
  return zip;
}

inline void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

// An empty scratch folder, unique to this process.
inline fs::path scratch(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("flexavatar_units_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// A loadable bundle: valid_manifest() (changed by `edit`, given the manifest text) over the tiny decoder.
template <class Edit>
fs::path tiny_bundle(const std::string& name, Edit edit) {
  const fs::path dir = scratch(name);
  const std::string model = tiny_onnx::decoder(4, 4, 8, 135);
  write_file(dir / "decoder.fp32.onnx", model);
  const std::string sha = flexavatar::runtime::sha256_hex(model.data(), model.size());
  write_file(dir / "manifest.json", edit(valid_manifest("decoder.fp32.onnx", sha, long(model.size()))));
  return dir;
}
inline fs::path tiny_bundle(const std::string& name) {
  return tiny_bundle(name, [](const std::string& text) { return text; });
}

}  // namespace test_bundle
