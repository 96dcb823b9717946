#include "png.h"

#include <cstring>

#include "bundle.h"
#include "inflate.h"

namespace flexavatar {
namespace runtime {
namespace {

constexpr unsigned char kSignature[8] = {137, 80, 78, 71, 13, 10, 26, 10};
constexpr uint32_t kMaxSide = 16384;

uint32_t be32(const unsigned char* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

Status bad(const std::string& where, const std::string& what) {
  return Status(StatusCode::kInvalidArgument, where + ": " + what + " (expected a PNG photo)");
}

uint32_t adler32(const unsigned char* data, size_t size) {
  uint32_t a = 1, b = 0;
  while (size > 0) {
    const size_t n = size < 5552 ? size : 5552;  // the most bytes before b can overflow 32 bits
    for (size_t i = 0; i < n; ++i) {
      a += data[i];
      b += a;
    }
    a %= 65521;
    b %= 65521;
    data += n;
    size -= n;
  }
  return (b << 16) | a;
}

struct Header {
  uint32_t width = 0, height = 0;
  int depth = 0, color = 0;
  bool interlaced = false;
  int channels() const { return color == 2 ? 3 : color == 4 ? 2 : color == 6 ? 4 : 1; }
  size_t row_bytes(uint32_t pixels) const { return (size_t(pixels) * size_t(channels() * depth) + 7) / 8; }
  size_t filter_step() const { return size_t(channels() * depth + 7) / 8; }  // bytes of a pixel, at least 1
};

// The colour types and their bit depths (PNG specification 11.2.2).
bool valid_depth(int color, int depth) {
  switch (color) {
    case 0: return depth == 1 || depth == 2 || depth == 4 || depth == 8 || depth == 16;
    case 3: return depth == 1 || depth == 2 || depth == 4 || depth == 8;
    case 2: case 4: case 6: return depth == 8 || depth == 16;
    default: return false;
  }
}

// Adam7: the first pixel and the step of each pass, x then y; a plain image is one pass of step 1.
struct Pass {
  uint32_t x0, y0, dx, dy;
};
constexpr Pass kAdam7[7] = {{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4},
                            {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}};
constexpr Pass kWhole = {0, 0, 1, 1};

uint32_t pass_size(uint32_t size, uint32_t start, uint32_t step) {
  return size > start ? (size - start + step - 1) / step : 0;
}

int paeth(int a, int b, int c) {
  const int p = a + b - c, pa = p > a ? p - a : a - p, pb = p > b ? p - b : b - p, pc = p > c ? p - c : c - p;
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

// Undoes a row's filter in place; `previous` is the unfiltered row above (zeros for the first row of a pass).
bool unfilter(int type, unsigned char* row, const unsigned char* previous, size_t bytes, size_t step) {
  switch (type) {
    case 0: return true;
    case 1:
      for (size_t i = step; i < bytes; ++i) row[i] = uint8_t(row[i] + row[i - step]);
      return true;
    case 2:
      for (size_t i = 0; i < bytes; ++i) row[i] = uint8_t(row[i] + previous[i]);
      return true;
    case 3:
      for (size_t i = 0; i < bytes; ++i)
        row[i] = uint8_t(row[i] + ((i >= step ? row[i - step] : 0) + previous[i]) / 2);
      return true;
    case 4:
      for (size_t i = 0; i < bytes; ++i)
        row[i] = uint8_t(row[i] + paeth(i >= step ? row[i - step] : 0, previous[i], i >= step ? previous[i - step] : 0));
      return true;
    default: return false;
  }
}

// Sample k of a row at `depth` bits (big-endian; sub-byte samples from the most significant bits).
uint32_t sample(const unsigned char* row, size_t k, int depth) {
  if (depth == 8) return row[k];
  if (depth == 16) return (uint32_t(row[2 * k]) << 8) | row[2 * k + 1];
  const size_t bit = k * size_t(depth);
  return (row[bit / 8] >> (8 - depth - int(bit % 8))) & ((1u << depth) - 1);
}

class Decoder {
 public:
  Decoder(const Header& h, const std::vector<unsigned char>& palette, const std::vector<unsigned char>& trns)
      : h_(h), palette_(palette), trns_(trns) {}

  // The colour of pixel x of an unfiltered row, into chw at `at` of each plane. False for a palette index beyond
  // the palette (palette_error says which).
  bool put(const unsigned char* row, uint32_t x, size_t at, float* chw, size_t plane) const {
    float rgb[3];
    float alpha = 1.0f;
    const int c = h_.color, d = h_.depth;
    if (c == 0 && d == 16) {  // Pillow's I;16: the full value; its colour key is not applied there either
      rgb[0] = rgb[1] = rgb[2] = float(sample(row, x, 16)) / 65535.0f;
    } else if (c == 3) {
      const uint32_t index = sample(row, x, d);
      if (3 * size_t(index) + 2 >= palette_.size()) return false;
      for (int k = 0; k < 3; ++k) rgb[k] = float(palette_[3 * index + size_t(k)]) / 255.0f;
      if (!trns_.empty()) alpha = float(index < trns_.size() ? trns_[index] : 255) / 255.0f;
    } else {
      const int n = h_.channels(), colours = c == 0 || c == 4 ? 1 : 3;
      uint32_t raw[4];
      uint32_t value[4];
      for (int k = 0; k < n; ++k) {
        raw[k] = sample(row, size_t(x) * size_t(n) + size_t(k), d);
        // 8 bits as Pillow keeps them: 16-bit samples by their high byte, 1/2/4-bit grey scaled to 0-255
        value[k] = d == 16 ? raw[k] >> 8 : d < 8 ? raw[k] * 255u / ((1u << d) - 1) : raw[k];
      }
      for (int k = 0; k < 3; ++k) rgb[k] = float(value[colours == 1 ? 0 : k]) / 255.0f;
      if (n == 2 || n == 4) alpha = float(value[n - 1]) / 255.0f;
      if (!trns_.empty() && (c == 0 || c == 2)) {  // a colour key: that exact colour is transparent
        bool key = true;
        for (int k = 0; k < colours; ++k)
          key = key && raw[k] == ((uint32_t(trns_[2 * size_t(k)]) << 8) | trns_[2 * size_t(k) + 1]);
        alpha = key ? 0.0f : 1.0f;
      }
    }
    const bool transparent = c == 4 || c == 6 || (!trns_.empty() && !(c == 0 && d == 16));
    for (int k = 0; k < 3; ++k)
      chw[size_t(k) * plane + at] = transparent ? rgb[k] * alpha + (1.0f - alpha) : rgb[k];  // onto white
    return true;
  }

  std::string palette_error(const unsigned char* row, uint32_t x) const {
    return "palette index " + std::to_string(sample(row, x, h_.depth)) + " beyond the PLTE chunk's " +
           std::to_string(palette_.size() / 3) + " entries";
  }

 private:
  const Header& h_;
  const std::vector<unsigned char>& palette_;
  const std::vector<unsigned char>& trns_;
};

}  // namespace

Status parse_png(const unsigned char* bytes, size_t size, const std::string& where, std::vector<float>* chw,
                 int* width, int* height) {
  if (!chw || !width || !height) return Status(StatusCode::kNullPointer, "parse_png: a null output pointer");
  chw->clear();
  if (size < 8 || std::memcmp(bytes, kSignature, 8) != 0) {
    if (size >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF)
      return bad(where, "a JPEG file; this reader takes PNG (convert it, or use flexavatar-render, which reads JPEG)");
    return bad(where, "not a PNG file (no PNG signature)");
  }
  Header h;
  std::vector<unsigned char> idat, palette, trns;
  bool seen_header = false, seen_end = false;
  for (size_t at = 8; !seen_end;) {
    if (size - at < 12) return bad(where, "the file ends inside a chunk (truncated?) and has no IEND");
    const uint32_t length = be32(bytes + at);
    if (length > size - at - 12) return bad(where, "a chunk runs past the end of the file (truncated?)");
    const unsigned char* type = bytes + at + 4;
    const unsigned char* data = type + 4;
    const std::string name(reinterpret_cast<const char*>(type), 4);
    if (crc32(type, size_t(length) + 4) != be32(data + length))
      return bad(where, "the CRC of chunk '" + printable(name) + "' is wrong (damaged file)");
    at += size_t(length) + 12;
    if (!seen_header && name != "IHDR") return bad(where, "the first chunk is '" + printable(name) + "', not IHDR");
    if (name == "IHDR") {
      if (seen_header || length != 13) return bad(where, "a malformed IHDR chunk");
      seen_header = true;
      h.width = be32(data);
      h.height = be32(data + 4);
      h.depth = data[8];
      h.color = data[9];
      if (data[10] != 0 || data[11] != 0 || data[12] > 1)
        return bad(where, "unknown compression, filter or interlace method in IHDR");
      h.interlaced = data[12] == 1;
      if (!valid_depth(h.color, h.depth))
        return bad(where, "colour type " + std::to_string(h.color) + " with bit depth " + std::to_string(h.depth) +
                              " (not a PNG combination)");
      if (h.width < 1 || h.height < 1 || h.width > kMaxSide || h.height > kMaxSide)
        return bad(where, std::to_string(h.width) + "x" + std::to_string(h.height) + " pixels (at most " +
                              std::to_string(kMaxSide) + " a side)");
    } else if (name == "PLTE") {
      if (length % 3 != 0 || length > 3 * 256) return bad(where, "a malformed PLTE chunk");
      palette.assign(data, data + length);
    } else if (name == "tRNS") {
      const size_t want = h.color == 0 ? 2 : h.color == 2 ? 6 : 256;
      if (h.color == 4 || h.color == 6 || length > want || (h.color != 3 && length != want))
        return bad(where, "a tRNS chunk that does not fit colour type " + std::to_string(h.color));
      trns.assign(data, data + length);
    } else if (name == "IDAT") {
      idat.insert(idat.end(), data, data + length);
    } else if (name == "IEND") {
      seen_end = true;
    } else if (!(type[0] & 0x20)) {  // an unknown chunk that is critical (upper-case first letter)
      return bad(where, "an unknown critical chunk '" + printable(name) + "'");
    }
  }
  if (h.color == 3 && palette.empty()) return bad(where, "a palette image without a PLTE chunk");

  // The filtered rows of every pass, each led by its filter type byte.
  const int passes = h.interlaced ? 7 : 1;
  size_t expected = 0;
  for (int p = 0; p < passes; ++p) {
    const Pass& s = h.interlaced ? kAdam7[p] : kWhole;
    const uint32_t w = pass_size(h.width, s.x0, s.dx), rows = pass_size(h.height, s.y0, s.dy);
    if (w > 0) expected += size_t(rows) * (1 + h.row_bytes(w));
  }
  if (idat.size() < 6) return bad(where, "no image data (IDAT)");
  const unsigned cmf = idat[0], flg = idat[1];
  if ((cmf & 0x0F) != 8 || (cmf >> 4) > 7 || (cmf * 256 + flg) % 31 != 0 || (flg & 0x20))
    return bad(where, "the image data is not a zlib stream");
  if (expected > inflate_bound(idat.size()))
    return bad(where, std::to_string(idat.size()) + " bytes of image data cannot hold a " + std::to_string(h.width) +
                          "x" + std::to_string(h.height) + " image (truncated?)");
  std::vector<unsigned char> filtered(expected);
  const std::string error = inflate_raw(idat.data() + 2, idat.size() - 6, filtered.data(), filtered.size());
  if (!error.empty()) return bad(where, "image data: " + error);
  // Checked after the pixels are decoded (below), before they are handed out: that order lets a fuzzer that mends
  // chunk CRCs reach the filters and the palette with any data.
  const bool adler_ok = adler32(filtered.data(), filtered.size()) == be32(idat.data() + idat.size() - 4);

  const size_t plane = size_t(h.width) * size_t(h.height);
  chw->assign(3 * plane, 0.0f);
  const Decoder decoder(h, palette, trns);
  unsigned char* at = filtered.data();
  for (int p = 0; p < passes; ++p) {
    const Pass& s = h.interlaced ? kAdam7[p] : kWhole;
    const uint32_t w = pass_size(h.width, s.x0, s.dx), rows = pass_size(h.height, s.y0, s.dy);
    if (w == 0) continue;
    const size_t bytes = h.row_bytes(w);
    const std::vector<unsigned char> zeros(bytes, 0);
    const unsigned char* previous = zeros.data();
    for (uint32_t r = 0; r < rows; ++r, at += 1 + bytes) {
      if (!unfilter(at[0], at + 1, previous, bytes, h.filter_step())) {
        chw->clear();
        return bad(where, "unknown filter type " + std::to_string(at[0]) + " in row " + std::to_string(r));
      }
      for (uint32_t x = 0; x < w; ++x) {
        const size_t pixel = size_t(s.y0 + r * s.dy) * h.width + (s.x0 + x * s.dx);
        if (!decoder.put(at + 1, x, pixel, chw->data(), plane)) {
          chw->clear();
          return bad(where, decoder.palette_error(at + 1, x));
        }
      }
      previous = at + 1;
    }
  }
  if (!adler_ok) {
    chw->clear();
    return bad(where, "the image data's Adler-32 is wrong (damaged file)");
  }
  *width = int(h.width);
  *height = int(h.height);
  return Status::ok_status();
}

}  // namespace runtime
}  // namespace flexavatar
