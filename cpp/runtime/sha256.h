// SHA-256 (FIPS 180-4), self-written: the bundle loader checks every file against the manifest's digest.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "flexavatar/status.h"

namespace flexavatar {
namespace runtime {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  std::array<uint8_t, 32> finish();  // the object is spent afterwards
  static std::string hex(const std::array<uint8_t, 32>& digest);

 private:
  void compress(const uint8_t block[64]);
  uint32_t state_[8];
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

std::string sha256_hex(const void* data, size_t size);
// Hashes a file in 1 MiB chunks; *hex_out gets 64 lowercase hex digits.
Status sha256_file(const std::string& path, std::string* hex_out);

}  // namespace runtime
}  // namespace flexavatar
