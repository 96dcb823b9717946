// Deterministic random scenes for the C++ tests.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "flexavatar/raster_types.h"

namespace testutil {

struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed * 6364136223846793005ull + 1442695040888963407ull) {}
  double uniform() {  // [0, 1)
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return double(state >> 11) * (1.0 / 9007199254740992.0);
  }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
};

// B batches of G Gaussians in a box in front of C cameras looking down +z (OpenCV axes).
struct Scene {
  int64_t B = 1, G = 0, C = 1, W = 64, H = 48;
  std::vector<float> means, quats, scales, opacities, sh0, viewmats, Ks, backgrounds;

  flexavatar::GaussianBuffers gaussians() const {
    return {B, G, means.data(), quats.data(), scales.data(), opacities.data(), sh0.data()};
  }
  flexavatar::CameraBuffers cameras() const {
    return {C, viewmats.data(), Ks.data(), backgrounds.empty() ? nullptr : backgrounds.data()};
  }
  flexavatar::RasterSettings settings(int threads = 0) const {
    flexavatar::RasterSettings s;
    s.width = W;
    s.height = H;
    s.num_threads = threads;
    return s;
  }
};

inline void add_camera(Scene& s, float tx, float ty, float tz, float fx, float fy, float cx, float cy) {
  const float vm[16] = {1, 0, 0, tx, 0, 1, 0, ty, 0, 0, 1, tz, 0, 0, 0, 1};
  s.viewmats.insert(s.viewmats.end(), vm, vm + 16);
  const float K[9] = {fx, 0, cx, 0, fy, cy, 0, 0, 1};
  s.Ks.insert(s.Ks.end(), K, K + 9);
}

inline Scene random_scene(uint64_t seed, int64_t B, int64_t G, int64_t C, int64_t W, int64_t H) {
  Rng rng(seed);
  Scene s;
  s.B = B;
  s.G = G;
  s.C = C;
  s.W = W;
  s.H = H;
  for (int64_t i = 0; i < B * G; ++i) {
    s.means.insert(s.means.end(), {float(rng.uniform(-1.2, 1.2)), float(rng.uniform(-1.0, 1.0)),
                                   float(rng.uniform(-0.8, 0.8))});
    float q[4];
    double n = 0;
    for (float& v : q) {
      v = float(rng.uniform(-1, 1));
      n += double(v) * v;
    }
    if (n < 1e-3) q[0] = 1.0f;
    s.quats.insert(s.quats.end(), q, q + 4);
    for (int k = 0; k < 3; ++k) s.scales.push_back(float(std::exp(rng.uniform(-4.0, -1.5))));
    s.opacities.push_back(float(rng.uniform(0.0, 1.0)));
    for (int k = 0; k < 3; ++k) s.sh0.push_back(float(rng.uniform(-2.0, 2.0)));
  }
  for (int64_t v = 0; v < B * C; ++v) {
    const float f = float(rng.uniform(0.9, 1.4)) * float(W);
    add_camera(s, float(rng.uniform(-0.2, 0.2)), float(rng.uniform(-0.2, 0.2)), float(rng.uniform(3.0, 4.0)), f,
               f * float(rng.uniform(0.9, 1.1)), float(W) * float(rng.uniform(0.4, 0.6)),
               float(H) * float(rng.uniform(0.4, 0.6)));
    for (int k = 0; k < 3; ++k) s.backgrounds.push_back(float(rng.uniform(0, 1)));
  }
  return s;
}

}  // namespace testutil
