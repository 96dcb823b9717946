// Blending: the tiled CPU rasterizer against a tile-free per-pixel evaluation, closed forms,
// early-stop semantics, empty scenes, batching and thread-count independence.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "flexavatar/cpu_rasterizer.h"
#include "flexavatar/gaussian_math.h"
#include "harness.h"
#include "scene_util.h"

using namespace flexavatar;
using namespace flexavatar::math;

namespace {

struct Images {
  std::vector<float> image, alpha, depth;
  explicit Images(const testutil::Scene& s)
      : image(size_t(s.B * s.C * s.H * s.W * 3)), alpha(size_t(s.B * s.C * s.H * s.W)), depth(alpha.size()) {}
  RasterOutputs outputs() { return {image.data(), alpha.data(), depth.data()}; }
};

Images render(const testutil::Scene& s, int threads = 0) {
  Images out(s);
  const Status st = rasterize_cpu(s.gaussians(), s.cameras(), s.settings(threads), out.outputs());
  CHECK(st.ok());
  return out;
}

// Tile-free reference: every pixel composites every visible Gaussian in depth order.
Images brute_force(const testutil::Scene& s) {
  Images out(s);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t c = 0; c < s.C; ++c) {
      const int64_t v = b * s.C + c;
      const Camera<float> cam = make_camera<float>(s.viewmats.data() + 16 * v, s.Ks.data() + 9 * v, int(s.W), int(s.H));
      std::vector<Projected<float>> proj;
      std::vector<int64_t> ids;
      for (int64_t g = 0; g < s.G; ++g) {
        const int64_t gi = b * s.G + g;
        const Projected<float> p = project_gaussian<float>(cam, s.means.data() + 3 * gi, s.quats.data() + 4 * gi,
                                                           s.scales.data() + 3 * gi, s.opacities[gi], 0.3f, 0.01f, 1e10f);
        if (p.visible) {
          proj.push_back(p);
          ids.push_back(gi);
        }
      }
      std::vector<size_t> order(proj.size());
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return proj[x].depth < proj[y].depth; });
      for (int64_t y = 0; y < s.H; ++y)
        for (int64_t x = 0; x < s.W; ++x) {
          float T = 1, rgb[3] = {0, 0, 0}, d = 0;
          for (const size_t k : order) {
            const Projected<float>& p = proj[k];
            const float dx = p.mean_x - (x + 0.5f), dy = p.mean_y - (y + 0.5f);
            const float sigma = 0.5f * (p.conic_a * dx * dx + p.conic_c * dy * dy) + p.conic_b * dx * dy;
            const float a = std::min(kMaxAlpha, s.opacities[ids[k]] * std::exp(-sigma));
            if (sigma < 0 || a < kAlphaThreshold) continue;
            if (T * (1 - a) <= kMinTransmittance) break;
            for (int ch = 0; ch < 3; ++ch) rgb[ch] += a * T * sh0_to_color(s.sh0[3 * ids[k] + ch]);
            d += a * T * p.depth;
            T *= 1 - a;
          }
          const int64_t o = (v * s.H + y) * s.W + x;
          for (int ch = 0; ch < 3; ++ch) out.image[3 * o + ch] = rgb[ch] + T * s.backgrounds[3 * v + ch];
          out.alpha[o] = 1 - T;
          out.depth[o] = d / std::max(1 - T, kDepthAlphaFloor);
        }
    }
  return out;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  // NaN-propagating (a NaN pixel fails the caller's check; std::fmax would skip it), and not an fmax reduction:
  // GCC 12.2 for aarch64 (Debian 12, Raspberry Pi OS) crashes vectorizing one at -O3
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(double(a[i]) - double(b[i]));
    if (!(d <= m)) m = d;
  }
  return m;
}

}  // namespace

TEST_CASE(tiled_equals_tile_free_on_random_scenes) {
  // Non-square, not multiples of 16, several batches and cameras.
  const testutil::Scene s = testutil::random_scene(21, 2, 400, 2, 75, 53);
  const Images tiled = render(s), ref = brute_force(s);
  CHECK(max_abs_diff(tiled.image, ref.image) <= 1e-5);
  CHECK(max_abs_diff(tiled.alpha, ref.alpha) <= 1e-5);
  CHECK(max_abs_diff(tiled.depth, ref.depth) <= 1e-4);
  double coverage = 0;
  for (const float a : tiled.alpha) coverage += a;
  CHECK(coverage / tiled.alpha.size() > 0.2);  // the scene really covers the image
}

TEST_CASE(single_gaussian_matches_closed_form_footprint) {
  testutil::Scene s;
  s.G = 1;
  s.W = 64;
  s.H = 64;
  const double z = 3.0, f = 120.0, sc = 0.04, o = 0.7;
  s.means = {0, 0, 0};
  s.quats = {1, 0, 0, 0};
  s.scales = {float(sc), float(sc), float(sc)};
  s.opacities = {float(o)};
  s.sh0 = {1.0f, 0.0f, -1.0f};
  testutil::add_camera(s, 0, 0, float(z), float(f), float(f), 32, 32);
  s.backgrounds = {0.2f, 0.3f, 0.4f};
  const Images out = render(s);
  const double var = (f * sc / z) * (f * sc / z) + 0.3;
  const double color[3] = {0.28209479177387814 + 0.5, 0.5, 0.5 - 0.28209479177387814};
  for (int y = 20; y < 44; ++y)
    for (int x = 20; x < 44; ++x) {
      const double dx = 32.0 - (x + 0.5), dy = 32.0 - (y + 0.5);
      double a = o * std::exp(-0.5 * (dx * dx + dy * dy) / var);
      if (a < 1.0 / 255) a = 0;
      const int64_t p = y * 64 + x;
      CHECK_NEAR(out.alpha[p], a, 1e-5);
      for (int ch = 0; ch < 3; ++ch) CHECK_NEAR(out.image[3 * p + ch], a * color[ch] + (1 - a) * s.backgrounds[ch], 1e-5);
      if (a > 0) CHECK_NEAR(out.depth[p], z, 1e-4);
    }
}

TEST_CASE(opaque_front_gaussian_stops_before_the_one_behind) {
  // Two large opaque Gaussians on the axis; the back one is listed first. At the centre the front
  // one has α = 0.99 (T → 0.01); the back one would bring T to 1e-4 and is therefore not composited.
  testutil::Scene s;
  s.G = 2;
  s.W = 32;
  s.H = 32;
  s.means = {0, 0, 1.0f, 0, 0, 0};  // back (z = 3), front (z = 2) with the camera at z = -2
  s.quats = {1, 0, 0, 0, 1, 0, 0, 0};
  s.scales = {1, 1, 0.01f, 1, 1, 0.01f};
  s.opacities = {1, 1};
  s.sh0 = {-2, -2, 2, 2, -2, -2};  // back blue, front red (colours clamp at 0)
  testutil::add_camera(s, 0, 0, 2, 40, 40, 16, 16);
  s.backgrounds = {0, 1, 0};
  const Images out = render(s);
  const int64_t p = 16 * 32 + 16;
  const double red = 2 * 0.28209479177387814 + 0.5;
  CHECK_NEAR(out.alpha[p], 0.99, 1e-6);
  CHECK_NEAR(out.image[3 * p + 0], 0.99 * red, 1e-5);
  CHECK_NEAR(out.image[3 * p + 1], 0.01, 1e-5);  // background through T = 0.01
  CHECK_NEAR(out.image[3 * p + 2], 0.0, 1e-6);    // the blue one never shows
  CHECK_NEAR(out.depth[p], 2.0, 1e-5);
}

TEST_CASE(empty_scene_and_everything_behind_give_background) {
  testutil::Scene s = testutil::random_scene(2, 1, 0, 1, 40, 24);
  Images out = render(s);
  for (int64_t p = 0; p < 40 * 24; ++p) {
    CHECK(out.alpha[p] == 0.0f && out.depth[p] == 0.0f);
    for (int ch = 0; ch < 3; ++ch) CHECK(out.image[3 * p + ch] == s.backgrounds[ch]);
  }
  s = testutil::random_scene(2, 1, 50, 1, 40, 24);
  for (int64_t g = 0; g < s.G; ++g) s.means[3 * g + 2] = -10.0f;  // behind the camera
  out = render(s);
  CHECK(*std::max_element(out.alpha.begin(), out.alpha.end()) == 0.0f);
}

TEST_CASE(gaussian_wider_than_int_range_covers_the_image) {
  // Pixel radius ≈ 6.7e9 px (σ = 40·1e8/2 px): flat across the image, so α = opacity everywhere.
  // Radius and per-row pixel span once overflowed int and the Gaussian vanished.
  testutil::Scene s;
  s.G = 1;
  s.W = 16;
  s.H = 16;
  s.means = {0, 0, 0};
  s.quats = {1, 0, 0, 0};
  s.scales = {1e8f, 1e8f, 1e8f};
  s.opacities = {0.8f};
  s.sh0 = {0, 0, 0};
  testutil::add_camera(s, 0, 0, 2, 40, 40, 8, 8);
  s.backgrounds = {0, 0, 0};
  const Images out = render(s);
  for (int64_t p = 0; p < 16 * 16; ++p) {
    CHECK_NEAR(out.alpha[p], 0.8, 1e-6);
    CHECK_NEAR(out.depth[p], 2.0, 1e-5);
  }
}

TEST_CASE(batched_views_equal_single_views_and_threads_do_not_matter) {
  const testutil::Scene s = testutil::random_scene(9, 2, 300, 3, 48, 40);
  const Images all = render(s, 2);
  const Images one_thread = render(s, 1);
  CHECK(all.image == one_thread.image && all.alpha == one_thread.alpha && all.depth == one_thread.depth);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t c = 0; c < s.C; ++c) {
      testutil::Scene single = s;
      single.B = 1;
      single.C = 1;
      const int64_t v = b * s.C + c;
      single.means.assign(s.means.begin() + 3 * b * s.G, s.means.begin() + 3 * (b + 1) * s.G);
      single.quats.assign(s.quats.begin() + 4 * b * s.G, s.quats.begin() + 4 * (b + 1) * s.G);
      single.scales.assign(s.scales.begin() + 3 * b * s.G, s.scales.begin() + 3 * (b + 1) * s.G);
      single.opacities.assign(s.opacities.begin() + b * s.G, s.opacities.begin() + (b + 1) * s.G);
      single.sh0.assign(s.sh0.begin() + 3 * b * s.G, s.sh0.begin() + 3 * (b + 1) * s.G);
      single.viewmats.assign(s.viewmats.begin() + 16 * v, s.viewmats.begin() + 16 * (v + 1));
      single.Ks.assign(s.Ks.begin() + 9 * v, s.Ks.begin() + 9 * (v + 1));
      single.backgrounds.assign(s.backgrounds.begin() + 3 * v, s.backgrounds.begin() + 3 * (v + 1));
      const Images one = render(single);
      const int64_t n = s.W * s.H;
      CHECK(std::equal(one.alpha.begin(), one.alpha.end(), all.alpha.begin() + v * n));
      CHECK(std::equal(one.image.begin(), one.image.end(), all.image.begin() + 3 * v * n));
    }
}

HARNESS_MAIN()
