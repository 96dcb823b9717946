// NumPy .npz archives: a ZIP of .npy members, stored (np.savez) or deflated (np.savez_compressed), with ZIP64
// size fields where numpy forces them. The bundle's check set (check.npz) is one, and so are the tracked
// expression sequences (np.savez_compressed, members of several dtypes).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "bundle.h"
#include "flexavatar/status.h"

namespace flexavatar {
namespace runtime {

// A member as the central directory describes it.
struct NpzMember {
  std::string name;              // without ".npy"; bytes outside printable ASCII as \xNN
  uint16_t method = 0;           // 0 stored, 8 deflate
  uint32_t crc32 = 0;            // of the uncompressed bytes
  uint64_t compressed_size = 0;  // bytes at data_offset
  uint64_t size = 0;             // uncompressed bytes
  uint64_t data_offset = 0;
};

// The archive's members. kBundleInvalid naming `where` for a truncated or malformed archive or a member
// compressed by another method than deflate.
Status list_npz_members(const unsigned char* bytes, size_t size, const std::string& where,
                        std::vector<NpzMember>* out);
// One member's uncompressed bytes (the .npy file), its CRC-32 checked. kBundleInvalid for a damaged member
// (invalid DEFLATE data, wrong size or CRC), kOutOfMemory when its size cannot be allocated.
Status read_npz_member(const unsigned char* bytes, size_t size, const std::string& where, const NpzMember& member,
                       std::vector<unsigned char>* out);

// name (without ".npy") → array, for archives of float32 arrays only. kBundleInvalid naming `where` and the
// entry for anything else: a truncated or malformed archive, an entry that is not float32 C-order .npy.
Status parse_npz_float32(const unsigned char* bytes, size_t size, const std::string& where,
                         std::map<std::string, NpyArray>* out);
Status read_npz_float32(const std::string& path, std::map<std::string, NpyArray>* out);

}  // namespace runtime
}  // namespace flexavatar
