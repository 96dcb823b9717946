#include "inflate.h"

#include <array>
#include <cstring>

namespace flexavatar {
namespace runtime {
namespace {

constexpr int kMaxBits = 15;          // the longest Huffman code DEFLATE allows
constexpr int kLiteralLengthCodes = 288, kDistanceCodes = 32;

// Bits are read least significant first; past the end of the input the stream is truncated.
class BitReader {
 public:
  BitReader(const unsigned char* data, size_t size) : data_(data), size_(size) {}
  // `count` (0..16) bits as an integer, or -1 when the input ends first.
  int bits(int count) {
    while (held_ < count) {
      if (at_ == size_) return -1;
      buffer_ |= uint32_t(data_[at_++]) << held_;
      held_ += 8;
    }
    const int value = int(buffer_ & ((1u << count) - 1));
    buffer_ >>= count;
    held_ -= count;
    return value;
  }
  // Up to `count` (<= 16) next bits without consuming them; *available says how many there are (fewer at the end).
  uint32_t peek(int count, int* available) {
    while (held_ < count && at_ < size_) {
      buffer_ |= uint32_t(data_[at_++]) << held_;
      held_ += 8;
    }
    *available = held_ < count ? held_ : count;
    return buffer_ & ((1u << count) - 1);
  }
  void drop(int count) {
    buffer_ >>= count;
    held_ -= count;
  }
  // Drops the bits left in the current byte (a stored block starts on a byte boundary); whole bytes that peek()
  // buffered are given back to the input.
  void align() {
    at_ -= size_t(held_ / 8);
    buffer_ = 0;
    held_ = 0;
  }
  void skip(size_t bytes) { at_ += bytes; }
  size_t remaining() const { return size_ - at_; }
  const unsigned char* here() const { return data_ + at_; }

 private:
  const unsigned char* data_;
  size_t size_;
  size_t at_ = 0;
  uint32_t buffer_ = 0;
  int held_ = 0;
};

// A canonical Huffman code (RFC 1951 3.2.2) as the number of codes of each length and the symbols ordered by
// (length, symbol): decoding walks the lengths, comparing the code read so far with the first code of each.
struct Huffman {
  static constexpr int kFastBits = 9;  // codes this short are decoded by one table lookup
  std::array<uint16_t, kMaxBits + 1> count{};
  std::array<uint16_t, kLiteralLengthCodes> symbol{};
  // indexed by the next kFastBits input bits: (code length << 12) | symbol for a code of <= kFastBits bits, else 0
  std::array<uint16_t, 1 << kFastBits> fast{};

  // From the code length of each symbol (0: unused). False for an over-subscribed set of lengths (more codes
  // than the bits allow); an incomplete set is accepted (RFC 1951 allows one distance code), its unused codes
  // fail when read.
  bool build(const uint8_t* lengths, int symbols) {
    count.fill(0);
    for (int s = 0; s < symbols; ++s) ++count[lengths[s]];
    count[0] = 0;
    int left = 1;
    for (int len = 1; len <= kMaxBits; ++len) {
      left = 2 * left - count[len];
      if (left < 0) return false;
    }
    std::array<uint16_t, kMaxBits + 2> offset{};
    for (int len = 1; len <= kMaxBits; ++len) offset[len + 1] = uint16_t(offset[len] + count[len]);
    for (int s = 0; s < symbols; ++s)
      if (lengths[s] != 0) symbol[offset[lengths[s]]++] = uint16_t(s);
    // The canonical codes (RFC 1951 3.2.2): the short ones into the table, bit-reversed (the stream holds a code's
    // first bit lowest), in every slot whose low bits are that code.
    fast.fill(0);
    std::array<uint32_t, kMaxBits + 1> next{};
    uint32_t code = 0;
    for (int len = 1; len <= kMaxBits; ++len) next[len] = code = (code + count[len - 1]) << 1;
    for (int s = 0; s < symbols; ++s) {
      const int len = lengths[s];
      if (len == 0) continue;
      const uint32_t c = next[len]++;
      if (len > kFastBits) continue;
      uint32_t reversed = 0;
      for (int b = 0; b < len; ++b) reversed |= ((c >> b) & 1u) << (len - 1 - b);
      for (uint32_t slot = reversed; slot < fast.size(); slot += 1u << len) fast[slot] = uint16_t((len << 12) | s);
    }
    return true;
  }

  // The next symbol; kNotACode for a code that is not in this set, kEndOfInput when the input ends first.
  static constexpr int kNotACode = -1, kEndOfInput = -2;
  int decode(BitReader& in) const {
    int available = 0;
    const uint16_t entry = fast[in.peek(kFastBits, &available)];
    if (entry != 0 && (entry >> 12) <= available) {
      in.drop(entry >> 12);
      return entry & 0xFFF;
    }
    // a longer code, or the last bits of the input: bit by bit, comparing with the first code of each length
    int code = 0, first = 0, index = 0;
    for (int len = 1; len <= kMaxBits; ++len) {
      const int bit = in.bits(1);
      if (bit < 0) return kEndOfInput;
      code |= bit;
      const int n = count[len];
      if (code - first < n) return symbol[index + (code - first)];
      index += n;
      first = (first + n) << 1;
      code <<= 1;
    }
    return kNotACode;
  }
};

// Length symbols 257..285 and distance symbols 0..29: base value and extra bits (RFC 1951 3.2.5).
constexpr uint16_t kLengthBase[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                      31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
constexpr uint8_t kLengthExtra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                      2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
constexpr uint16_t kDistanceBase[30] = {1,    2,    3,    4,    5,    7,     9,     13,    17,  25,
                                        33,   49,   65,   97,   129,  193,   257,   385,   513, 769,
                                        1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
constexpr uint8_t kDistanceExtra[30] = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                        6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};

class Inflater {
 public:
  Inflater(const unsigned char* in, size_t in_size, unsigned char* out, size_t out_size)
      : in_(in, in_size), out_(out), out_size_(out_size) {}

  std::string run() {
    for (;;) {
      const int last = in_.bits(1), type = in_.bits(2);
      if (type < 0) return truncated();
      std::string error;
      if (type == 0) error = stored();
      else if (type == 1) error = fixed();
      else if (type == 2) error = dynamic();
      else return "invalid block type 3";
      if (!error.empty()) return error;
      if (last == 1) break;
    }
    if (written_ != out_size_)
      return "the stream ends after " + std::to_string(written_) + " bytes, expected " + std::to_string(out_size_);
    return "";
  }

 private:
  std::string truncated() const {
    return "the compressed stream ends early (truncated?) after " + std::to_string(written_) + " of " +
           std::to_string(out_size_) + " bytes";
  }
  std::string too_long() const {
    return "the stream decodes to more than the " + std::to_string(out_size_) + " bytes its header gives";
  }

  std::string stored() {
    in_.align();
    if (in_.remaining() < 4) return truncated();
    const unsigned char* h = in_.here();
    const unsigned len = h[0] | (h[1] << 8), nlen = h[2] | (h[3] << 8);
    if ((len ^ 0xFFFFu) != nlen) return "a stored block's length and its complement disagree";
    in_.skip(4);
    if (in_.remaining() < len) return truncated();
    if (len > out_size_ - written_) return too_long();
    if (len > 0) std::memcpy(out_ + written_, in_.here(), len);
    in_.skip(len);
    written_ += len;
    return "";
  }

  std::string fixed() {
    if (!fixed_built_) {
      uint8_t lengths[kLiteralLengthCodes + kDistanceCodes];
      int s = 0;
      for (; s < 144; ++s) lengths[s] = 8;
      for (; s < 256; ++s) lengths[s] = 9;
      for (; s < 280; ++s) lengths[s] = 7;
      for (; s < 288; ++s) lengths[s] = 8;
      for (; s < 288 + kDistanceCodes; ++s) lengths[s] = 5;
      fixed_literals_.build(lengths, kLiteralLengthCodes);
      fixed_distances_.build(lengths + kLiteralLengthCodes, kDistanceCodes);
      fixed_built_ = true;
    }
    return codes(fixed_literals_, fixed_distances_);
  }

  std::string dynamic() {
    const int hlit = in_.bits(5), hdist = in_.bits(5), hclen = in_.bits(4);
    if (hclen < 0) return truncated();
    const int literals = hlit + 257, distances = hdist + 1;
    if (literals > 286 || distances > 30)
      return "a dynamic block declares " + std::to_string(literals) + " literal/length and " +
             std::to_string(distances) + " distance codes (at most 286 and 30)";
    static constexpr uint8_t kOrder[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
    uint8_t code_lengths[19] = {};
    for (int i = 0; i < hclen + 4; ++i) {
      const int len = in_.bits(3);
      if (len < 0) return truncated();
      code_lengths[kOrder[i]] = uint8_t(len);
    }
    Huffman lengths_code;
    if (!lengths_code.build(code_lengths, 19)) return "an over-subscribed code length code";
    uint8_t lengths[286 + 30] = {};
    for (int at = 0; at < literals + distances;) {
      const int symbol = lengths_code.decode(in_);
      if (symbol == Huffman::kEndOfInput) return truncated();
      if (symbol < 0) return "an invalid code length code";
      if (symbol < 16) {
        lengths[at++] = uint8_t(symbol);
        continue;
      }
      // 16: the previous length 3-6 times; 17: zero 3-10 times; 18: zero 11-138 times
      if (symbol == 16 && at == 0) return "a code length repeat with no previous length";
      const int value = symbol == 16 ? lengths[at - 1] : 0;
      const int extra = in_.bits(symbol == 16 ? 2 : symbol == 17 ? 3 : 7);
      if (extra < 0) return truncated();
      int repeat = extra + (symbol == 18 ? 11 : 3);
      if (at + repeat > literals + distances) return "code lengths run past the declared number of codes";
      while (repeat-- > 0) lengths[at++] = uint8_t(value);
    }
    if (lengths[256] == 0) return "a dynamic block without an end-of-block code";
    Huffman literals_code, distances_code;
    if (!literals_code.build(lengths, literals) || !distances_code.build(lengths + literals, distances))
      return "an over-subscribed literal/length or distance code";
    return codes(literals_code, distances_code);
  }

  // The compressed data of a block: literals, (length, distance) copies, end of block.
  std::string codes(const Huffman& literals, const Huffman& distances) {
    for (;;) {
      const int symbol = literals.decode(in_);
      if (symbol == Huffman::kEndOfInput) return truncated();
      if (symbol < 0) return "an invalid literal/length code";
      if (symbol < 256) {
        if (written_ == out_size_) return too_long();
        out_[written_++] = uint8_t(symbol);
        continue;
      }
      if (symbol == 256) return "";
      if (symbol > 285) return "invalid length symbol " + std::to_string(symbol);
      const int extra = in_.bits(kLengthExtra[symbol - 257]);
      if (extra < 0) return truncated();
      const size_t length = kLengthBase[symbol - 257] + size_t(extra);
      const int d = distances.decode(in_);
      if (d == Huffman::kEndOfInput) return truncated();
      if (d < 0) return "an invalid distance code";
      if (d > 29) return "invalid distance symbol " + std::to_string(d);
      const int dextra = in_.bits(kDistanceExtra[d]);
      if (dextra < 0) return truncated();
      const size_t distance = kDistanceBase[d] + size_t(dextra);
      if (distance > written_)
        return "a copy from " + std::to_string(distance) + " bytes back, before the start of the data (" +
               std::to_string(written_) + " bytes written)";
      if (length > out_size_ - written_) return too_long();
      // byte by byte: the source may overlap the bytes being written (a run)
      for (size_t k = 0; k < length; ++k, ++written_) out_[written_] = out_[written_ - distance];
    }
  }

  BitReader in_;
  unsigned char* out_;
  size_t out_size_;
  size_t written_ = 0;
  bool fixed_built_ = false;
  Huffman fixed_literals_, fixed_distances_;
};

}  // namespace

uint32_t crc32(const unsigned char* bytes, size_t size) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ bytes[i]) & 0xFFu] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

std::string inflate_raw(const unsigned char* in, size_t in_size, unsigned char* out, size_t out_size) {
  return Inflater(in, in_size, out, out_size).run();
}

}  // namespace runtime
}  // namespace flexavatar
