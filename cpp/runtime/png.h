// PNG photos as the encoder's input (flexavatar_read_photo, input_files.h): decoded by the runtime itself (with inflate.h), so that a
// C or C++ app turns a photo file into an avatar code without an image library, on every platform it is built for.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "flexavatar/status.h"

namespace flexavatar {
namespace runtime {

// A PNG file → chw [3, H, W] float32 in [0, 1], as the Python runtime's load_image reads it through Pillow: 8-bit
// samples / 255; 16-bit grey / 65535, other 16-bit samples by their high byte (Pillow keeps 8 bits of those);
// grey 1/2/4-bit scaled to 0-255; palettes looked up; transparency (an alpha channel, a tRNS colour key or palette
// alphas) composited onto white, rgb·α + 1 − α. A colour key is compared with the raw samples, as the PNG
// specification says (Pillow compares it with its rescaled 16-bit or 1/2/4-bit samples and so never applies it). Every colour type and bit depth of the PNG specification, Adam7
// interlacing included; chunk CRCs and the zlib stream's Adler-32 are checked. An EXIF orientation is not applied.
// kInvalidArgument naming `where` for anything else: not a PNG (a JPEG is named as one), damaged or truncated data,
// sizes beyond 16384 pixels a side.
Status parse_png(const unsigned char* bytes, size_t size, const std::string& where, std::vector<float>* chw,
                 int* width, int* height);

}  // namespace runtime
}  // namespace flexavatar
