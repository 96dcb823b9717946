// DEFLATE (RFC 1951) decoding and CRC-32, for the compressed members of .npz archives (np.savez_compressed:
// the tracked expression sequences). A small decoder written from the RFC, so that the runtime reads them
// without a zlib dependency on every platform it is built for (Linux, aarch64, Windows under MinGW).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace flexavatar {
namespace runtime {

// The CRC-32 of ZIP (polynomial 0xEDB88320, reflected, initial and final XOR 0xFFFFFFFF).
uint32_t crc32(const unsigned char* bytes, size_t size);

// Decodes the raw DEFLATE stream in [in, in + in_size) into exactly out_size bytes at `out`. Returns "" on
// success, else why the stream is not one: a truncated stream, an invalid block type, Huffman code or
// distance, or a stream that decodes to more or fewer than out_size bytes. Never reads or writes outside the
// two buffers, whatever the input.
std::string inflate_raw(const unsigned char* in, size_t in_size, unsigned char* out, size_t out_size);

// The most bytes a DEFLATE stream of in_size bytes can decode to (258 bytes per 2-bit match code, plus a
// stored block's worth): a member that claims more is not a DEFLATE stream, and nothing is allocated for it.
inline uint64_t inflate_bound(uint64_t in_size) { return in_size * 1032 + 65536; }

}  // namespace runtime
}  // namespace flexavatar
