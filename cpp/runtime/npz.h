// A NumPy .npz archive of float32 arrays as np.savez writes it: a ZIP of stored (uncompressed) .npy entries,
// with ZIP64 size fields where numpy forces them. The bundle's check set (check.npz) is one.
#pragma once

#include <map>
#include <string>

#include "bundle.h"
#include "flexavatar/status.h"

namespace flexavatar {
namespace runtime {

// name (without ".npy") → array. kBundleInvalid naming `where` and the entry for anything else: a compressed
// entry (np.savez_compressed), a truncated or malformed archive, an entry that is not float32 C-order .npy.
Status parse_npz_float32(const unsigned char* bytes, size_t size, const std::string& where,
                         std::map<std::string, NpyArray>* out);
Status read_npz_float32(const std::string& path, std::map<std::string, NpyArray>* out);

}  // namespace runtime
}  // namespace flexavatar
