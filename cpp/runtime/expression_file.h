// Expression sequence files (and a tracked sequence's cameras) as flexavatar-render reads them (runtime/expressions.py load_expressions): a .npy
// float32 [E, 135] (or [135], one frame), or an .npz whose 'expression_codes' member is one: the layout of the
// tracked sequences (np.savez_compressed; their other members, of other dtypes, are not read).
#pragma once

#include <string>
#include <vector>

#include "flexavatar/status.h"

namespace flexavatar {
namespace runtime {

constexpr const char* kExpressionSequenceKey = "expression_codes";

// codes := the sequence, row-major [E, 135], E >= 1, every value finite. The format is told by the bytes (ZIP or
// .npy magic), not by the name. kInvalidArgument naming `where` for anything else: not .npy / .npz, a damaged or
// truncated archive, no 'expression_codes' (the message lists the members), another dtype or shape, NaN / inf
// (the first such frame named); kOutOfMemory when the sizes cannot be allocated.
Status parse_expression_file(const unsigned char* bytes, size_t size, const std::string& where,
                             std::vector<float>* codes);
// parse_expression_file of a file's bytes; kIoError when it cannot be opened or read.
Status read_expression_file(const std::string& path, std::vector<float>* codes);

// The tracked camera of every frame of a tracked sequence .npz (flexavatar-render --camera-tracked,
// runtime/cameras.py sequence_cameras): its float32 members cam2world [E, 4, 4] (canonical head frame, OpenCV axes)
// and intrinsics [E, 3, 3] (normalised), row-major, finite. kInvalidArgument naming `where` for anything else.
Status parse_sequence_cameras(const unsigned char* bytes, size_t size, const std::string& where,
                              std::vector<float>* cam2world, std::vector<float>* intrinsics);
Status read_sequence_cameras(const std::string& path, std::vector<float>* cam2world, std::vector<float>* intrinsics);

}  // namespace runtime
}  // namespace flexavatar
