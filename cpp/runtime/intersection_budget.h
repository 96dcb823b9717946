// How many (tile, Gaussian) intersections the CUDA rasterizer sorts, so that a frame needs no host sync
// (flexavatar/cuda_api.h, intersection_capacity). The same policy as the Python runtime's
// runtime/intersections.py: the first frame is sized exactly (its count is read back: one sync), later frames
// sort kHeadroom x the largest count seen, rounded up to a power of two (the same pool blocks frame after frame)
// and at least kMinSlots; a frame over its capacity is rendered again, sized exactly, when its pixels come back.
#pragma once

#include <algorithm>
#include <cstdint>

namespace flexavatar {
namespace runtime {

class IntersectionBudget {
 public:
  static constexpr int64_t kHeadroom = 2;
  static constexpr int64_t kMinSlots = int64_t(1) << 16;
  static constexpr int64_t kMaxSlots = (int64_t(1) << 31) - 1;  // the sort indexes its slots with int32

  // Slots for the next frame; 0 = size it exactly (nothing measured yet, or more than the sort can index).
  int64_t capacity() const {
    if (largest_ == 0) return 0;
    const int64_t need = std::max(kMinSlots, largest_ > kMaxSlots / kHeadroom ? kMaxSlots : largest_ * kHeadroom);
    int64_t slots = 1;
    while (slots < need && slots <= kMaxSlots) slots <<= 1;
    return slots <= kMaxSlots ? slots : 0;
  }
  // Records the exact count of a frame.
  void observe(int64_t count) { largest_ = std::max(largest_, count); }
  int64_t largest() const { return largest_; }

 private:
  int64_t largest_ = 0;
};

}  // namespace runtime
}  // namespace flexavatar
