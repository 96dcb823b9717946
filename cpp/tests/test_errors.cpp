// Bad input at the C++ boundary returns an error status (never crashes or aborts).
#include <string>

#include "flexavatar/cpu_rasterizer.h"
#include "flexavatar/cuda_rasterizer.h"
#include "harness.h"
#include "scene_util.h"

using namespace flexavatar;

namespace {

StatusCode render_code(const GaussianBuffers& g, const CameraBuffers& c, const RasterSettings& s, RasterOutputs o) {
  return rasterize_cpu(g, c, s, o).code();
}

bool mentions(const Status& st, const char* word) { return st.message().find(word) != std::string::npos; }

}  // namespace

TEST_CASE(bad_sizes_and_pointers_return_status_codes) {
  const testutil::Scene s = testutil::random_scene(1, 1, 10, 1, 32, 32);
  std::vector<float> image(32 * 32 * 3), alpha(32 * 32), depth(32 * 32);
  const RasterOutputs out{image.data(), alpha.data(), depth.data()};

  RasterSettings neg = s.settings();
  neg.width = -4;
  const Status st = rasterize_cpu(s.gaussians(), s.cameras(), neg, out);
  CHECK(st.code() == StatusCode::kInvalidSize && mentions(st, "width"));

  GaussianBuffers g = s.gaussians();
  g.num_gaussians = -1;
  CHECK(render_code(g, s.cameras(), s.settings(), out) == StatusCode::kInvalidSize);
  g = s.gaussians();
  g.num_batches = 0;
  CHECK(render_code(g, s.cameras(), s.settings(), out) == StatusCode::kInvalidSize);
  g = s.gaussians();
  g.means = nullptr;
  const Status null_means = rasterize_cpu(g, s.cameras(), s.settings(), out);
  CHECK(null_means.code() == StatusCode::kNullPointer && mentions(null_means, "means"));
  g.num_gaussians = 0;  // zero Gaussians: null attribute buffers are fine
  CHECK(render_code(g, s.cameras(), s.settings(), out) == StatusCode::kOk);

  CameraBuffers c = s.cameras();
  c.num_cameras = 0;
  CHECK(render_code(s.gaussians(), c, s.settings(), out) == StatusCode::kInvalidSize);
  // At most 65535 views (the CUDA blend grid's z extent); the size check comes before any buffer is read.
  c.num_cameras = 65536;
  const Status views = rasterize_cpu(s.gaussians(), c, s.settings(), out);
  CHECK(views.code() == StatusCode::kInvalidSize && mentions(views, "at most 65535"));
  g = s.gaussians();
  g.num_batches = int64_t(1) << 62;  // B*C would overflow int64 (UBSan)
  c.num_cameras = 4;
  CHECK(render_code(g, c, s.settings(), out) == StatusCode::kInvalidSize);
  c = s.cameras();
  c.viewmats = nullptr;
  CHECK(render_code(s.gaussians(), c, s.settings(), out) == StatusCode::kNullPointer);

  RasterOutputs no_alpha = out;
  no_alpha.alpha = nullptr;
  CHECK(render_code(s.gaussians(), s.cameras(), s.settings(), no_alpha) == StatusCode::kNullPointer);

  testutil::Scene bad_k = s;
  bad_k.Ks[0] = 0.0f;  // fx = 0
  const Status k_st = rasterize_cpu(bad_k.gaussians(), bad_k.cameras(), bad_k.settings(), out);
  CHECK(k_st.code() == StatusCode::kInvalidArgument && mentions(k_st, "Ks"));

  RasterSettings planes = s.settings();
  planes.near_plane = 2.0f;
  planes.far_plane = 1.0f;
  CHECK(render_code(s.gaussians(), s.cameras(), planes, out) == StatusCode::kInvalidArgument);
}

TEST_CASE(missing_or_foreign_cuda_library_is_unavailable) {
  std::shared_ptr<CudaLibrary> lib;
  Status st = CudaLibrary::load("/nonexistent/libflexavatar_cuda.so", &lib);
  CHECK(st.code() == StatusCode::kUnavailable && !lib);
#if defined(_WIN32)
  st = CudaLibrary::load("kernel32.dll", &lib);  // loads, but has no flexavatar entry point
#else
  st = CudaLibrary::load("libm.so.6", &lib);  // loads, but has no flexavatar entry point
#endif
  CHECK(st.code() == StatusCode::kUnavailable && mentions(st, "ABI"));
  CHECK(CudaLibrary::load("", nullptr).code() == StatusCode::kNullPointer);
}

HARNESS_MAIN()
