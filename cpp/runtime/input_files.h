// The input files flexavatar-render reads, for the C API: expression sequences (runtime/expressions.py
// load_expressions: a .npy [E, 135] (or [135], one frame), or an .npz whose 'expression_codes' member is one: the
// layout of the tracked sequences, np.savez_compressed, whose other members are not read), a tracked sequence's
// cameras, and photos (a PNG, or an in-the-wild example .npz: its crop 'image' and its camera).
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

// A photo as the encoder's input, chw [3, H, W] in [0, 1] on white, as the Python runtime's load_image reads it: a
// PNG (parse_png), or an in-the-wild example .npz (../shared/fixtures/driving/einstein.npz and the others): its
// 'image' [H, W, 3] or RGBA [H, W, 4] (composited onto white), uint8 (/ 255) or float in [0, 1] (1e-3 of slack,
// clipped). Told by the bytes. kInvalidArgument naming `where` for anything else (a JPEG is named as one).
Status parse_photo(const unsigned char* bytes, size_t size, const std::string& where, std::vector<float>* chw,
                   int* width, int* height);
Status read_photo(const std::string& path, std::vector<float>* chw, int* width, int* height);
// The photo's camera of an in-the-wild example .npz (runtime/cameras.py photo_camera): cam2world [4, 4] and
// normalised intrinsics [3, 3], row-major, finite. kInvalidArgument for anything else (a PNG carries no camera).
Status parse_photo_camera(const unsigned char* bytes, size_t size, const std::string& where, float cam2world[16],
                          float intrinsics[9]);
Status read_photo_camera(const std::string& path, float cam2world[16], float intrinsics[9]);

}  // namespace runtime
}  // namespace flexavatar
