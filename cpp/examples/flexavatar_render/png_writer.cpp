#include "png_writer.h"

#include <fstream>
#include <vector>

namespace {

uint32_t crc32(const uint8_t* data, size_t size, uint32_t crc = 0) {
  static uint32_t table[256];
  static bool ready = false;
  if (!ready) {  // reflected CRC-32, polynomial 0xEDB88320 (PNG spec, annex D)
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[n] = c;
    }
    ready = true;
  }
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

void put_u32(std::vector<uint8_t>* out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out->push_back(uint8_t(v >> s));
}

void chunk(std::vector<uint8_t>* out, const char type[4], const std::vector<uint8_t>& data) {
  put_u32(out, uint32_t(data.size()));
  std::vector<uint8_t> body(type, type + 4);
  body.insert(body.end(), data.begin(), data.end());
  out->insert(out->end(), body.begin(), body.end());
  put_u32(out, crc32(body.data(), body.size()));
}

}  // namespace

bool write_png_rgba(const std::filesystem::path& path, const uint8_t* rgba, int width, int height, std::string* error) {
  // Raw scanlines, each prefixed by filter type 0 (none).
  const size_t row = size_t(width) * 4;
  std::vector<uint8_t> raw;
  raw.reserve((row + 1) * size_t(height));
  for (int y = 0; y < height; ++y) {
    raw.push_back(0);
    raw.insert(raw.end(), rgba + y * row, rgba + (y + 1) * row);
  }
  // zlib stream: header 0x78 0x01, stored deflate blocks of ≤ 65535 bytes, Adler-32 of the raw data.
  std::vector<uint8_t> z = {0x78, 0x01};
  uint32_t a = 1, b = 0;
  for (uint8_t v : raw) {
    a = (a + v) % 65521;
    b = (b + a) % 65521;
  }
  size_t pos = 0;
  do {
    const size_t n = std::min<size_t>(65535, raw.size() - pos);
    const bool last = pos + n == raw.size();
    z.push_back(last ? 1 : 0);
    z.push_back(uint8_t(n & 0xFF));
    z.push_back(uint8_t(n >> 8));
    z.push_back(uint8_t(~n & 0xFF));
    z.push_back(uint8_t((~n >> 8) & 0xFF));
    z.insert(z.end(), raw.begin() + pos, raw.begin() + pos + n);
    pos += n;
  } while (pos < raw.size());
  put_u32(&z, (b << 16) | a);

  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  std::vector<uint8_t> header;
  put_u32(&header, uint32_t(width));
  put_u32(&header, uint32_t(height));
  header.insert(header.end(), {8, 6, 0, 0, 0});  // 8-bit, RGBA, deflate, filter 0, no interlace
  chunk(&png, "IHDR", header);
  chunk(&png, "IDAT", z);
  chunk(&png, "IEND", {});

  std::ofstream file(path, std::ios::binary);
  if (!file) {
    *error = "cannot open " + path.u8string() + " for writing";
    return false;
  }
  file.write(reinterpret_cast<const char*>(png.data()), std::streamsize(png.size()));
  file.close();
  if (!file) {
    *error = "write error on " + path.u8string();
    return false;
  }
  return true;
}
