// Device-wide scan and radix sort. The only translation unit that includes CUB: it is by far the
// slowest to compile, and it only needs compiling once per architecture.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "internal.cuh"

namespace flexavatar {
namespace cuda {
namespace {

// CUB sizes its offsets by the count's type: a 32-bit count gets its 32-bit kernels (a 64-bit one, 64-bit offsets
// in every pass). Every count here is at most 2^32 - 1: (view, Gaussian)s are numbered by uint32 ids and the
// intersection slots are at most 2^31 - 1.
uint32_t cub_count(int64_t n, const char* what) {
  if (n > int64_t(UINT32_MAX))
    throw CudaFailure{StatusCode::kInvalidSize, std::string(what) + ": " + std::to_string(n) +
                                                    " items, expected at most 2^32 - 1"};
  return uint32_t(n);
}

}  // namespace

void inclusive_scan_int64_async(const int64_t* in, int64_t* out, int64_t n, DeviceArena& arena, cudaStream_t stream) {
  if (n <= 0) return;
  const uint32_t count = cub_count(n, "scan");
  size_t temp_bytes = 0;
  check(cub::DeviceScan::InclusiveSum(nullptr, temp_bytes, in, out, count, stream), "cub::DeviceScan (size)");
  void* temp = arena.alloc<unsigned char>(static_cast<int64_t>(temp_bytes));
  check(cub::DeviceScan::InclusiveSum(temp, temp_bytes, in, out, count, stream), "cub::DeviceScan");
}

int64_t inclusive_scan_int64(const int64_t* in, int64_t* out, int64_t n, DeviceArena& arena, cudaStream_t stream) {
  if (n <= 0) return 0;
  inclusive_scan_int64_async(in, out, n, arena, stream);
  int64_t total = 0;
  check(cudaMemcpyAsync(&total, out + (n - 1), sizeof(int64_t), cudaMemcpyDeviceToHost, stream), "copy scan total");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize (scan total)");
  return total;
}

namespace {

template <typename Key>
void sort_pairs_impl(Key* keys_in, Key* keys_out, uint32_t* values_in, uint32_t* values_out, int64_t n, int end_bit,
                     DeviceArena& arena, cudaStream_t stream) {
  if (n <= 0) return;
  const uint32_t count = cub_count(n, "radix sort");
  size_t temp_bytes = 0;
  check(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in, keys_out, values_in, values_out, count, 0,
                                        end_bit, stream),
        "cub::DeviceRadixSort (size)");
  void* temp = arena.alloc<unsigned char>(static_cast<int64_t>(temp_bytes));
  check(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, values_in, values_out, count, 0,
                                        end_bit, stream),
        "cub::DeviceRadixSort");
}

}  // namespace

void sort_pairs(uint64_t* keys_in, uint64_t* keys_out, uint32_t* values_in, uint32_t* values_out, int64_t n,
                int end_bit, DeviceArena& arena, cudaStream_t stream) {
  sort_pairs_impl(keys_in, keys_out, values_in, values_out, n, end_bit, arena, stream);
}

void sort_pairs(uint32_t* keys_in, uint32_t* keys_out, uint32_t* values_in, uint32_t* values_out, int64_t n,
                int end_bit, DeviceArena& arena, cudaStream_t stream) {
  sort_pairs_impl(keys_in, keys_out, values_in, values_out, n, end_bit, arena, stream);
}

}  // namespace cuda
}  // namespace flexavatar
