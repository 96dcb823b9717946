// Runtime::check_numerics: the bundle's check set (check.npz, written at export: the check inputs and the
// PyTorch fp32 outputs) through this runtime's decoder and rasterizer, as runtime/numerics.py does in Python
// (flexavatar-verify): per output the max |error| of the decoded Gaussians, and the worst frame's PSNR between
// the decoded and the reference Gaussians rendered by this runtime's own rasterizer on white.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "cuda_frames.h"
#include "npz.h"
#include "runtime.h"

namespace flexavatar {
namespace runtime {
namespace {

constexpr int64_t kWidths[5] = {3, 4, 3, 1, 3};
const char* const kOutputs[5] = {"means", "quats", "scales", "opacities", "sh0"};

double psnr_db(const std::vector<float>& a, const std::vector<float>& b) {
  double sum = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = double(std::clamp(a[i], 0.f, 1.f)) - double(std::clamp(b[i], 0.f, 1.f));
    sum += d * d;
  }
  const double mse = a.empty() ? 0 : sum / double(a.size());
  return mse == 0 ? std::numeric_limits<double>::infinity() : 10 * std::log10(1.0 / mse);
}

Status expect_size(const std::map<std::string, NpyArray>& arrays, const std::string& name, int64_t floats,
                   const std::string& what) {
  const auto it = arrays.find(name);
  if (it == arrays.end())
    return Status(StatusCode::kBundleInvalid, "check.npz: no array '" + name + "' (" + what + "); re-export");
  if (int64_t(it->second.values.size()) != floats)
    return Status(StatusCode::kBundleInvalid, "check.npz: '" + name + "' has " +
                                                  std::to_string(it->second.values.size()) + " values, expected " +
                                                  std::to_string(floats) + " (" + what + ")");
  return Status::ok_status();
}

}  // namespace

// Keep in sync with flexavatar/bundle.py PSNR_TARGET_DB.
double psnr_target_db(const std::string& precision) {
  static const std::map<std::string, double> kTargets = {{"fp32", 60.0}, {"fp16", 40.0}, {"int8", 30.0}};
  const auto it = kTargets.find(precision);
  return it != kTargets.end() ? it->second : kTargets.at("fp32");  // the manifest admits no other precision
}

Status Runtime::rasterize_gaussians(const GaussiansView& g, const Camera& camera, std::vector<float>* rgb) {
  float viewmat[16], k[9];
  Status s = prepare_camera(camera, viewmat, k);
  if (!s.ok()) return s;
  const size_t pixels = size_t(camera.width) * size_t(camera.height);
  if (cuda_) {
    // the CUDA rasterizer reads its device block: the Gaussians go up through the page-locked host block
    s = cuda_->wait();
    if (s.ok()) s = cuda_->ensure_frame(camera.width, camera.height);
    if (!s.ok()) return s;
    float* stage = cuda_->host_stage();
    std::copy(viewmat, viewmat + 16, stage);
    std::copy(k, k + 9, stage + 16);
    std::copy(camera.background, camera.background + 3, stage + 25);
    const float* fields[5] = {g.means, g.quats, g.scales, g.opacities, g.sh0};
    for (int i = 0; i < 5; ++i)
      std::copy(fields[i], fields[i] + kWidths[i] * g.num_gaussians,
                host_gaussians_ + GaussianLayout::offset(i, g.num_gaussians));
    s = cuda_->upload_stage();
    if (s.ok()) s = cuda_->upload_gaussians();
    if (s.ok()) s = cuda_->rasterize(camera.width, camera.height, /*exact=*/true);  // check set: other Gaussians
    HostFrame frame;
    if (s.ok()) s = cuda_->download_frame(&frame, kFrameRgb);
    if (!s.ok()) return s;
    rgb->assign(frame.rgb, frame.rgb + 3 * pixels);
    return Status::ok_status();
  }
  std::vector<float> alpha(pixels), depth(pixels);
  rgb->assign(3 * pixels, 0.f);
  return rasterize_on_cpu(g, viewmat, k, camera, rgb->data(), alpha.data(), depth.data());
}

Status Runtime::check_numerics(NumericsCheck* out) {
  frame_decoded_ = false;  // the check decodes its own expressions (whether or not it gets that far)
  if (!out) return Status(StatusCode::kNullPointer, "out: got a null pointer");
  const Manifest& m = bundle_.manifest;
  if (!m.has_check)
    return Status(StatusCode::kUnavailable, "this bundle has no numerics check set (manifest 'check', check.npz): "
                                            "re-export it with this version of flexavatar-export");
  std::map<std::string, NpyArray> arrays;
  Status s = read_npz_float32(bundle_.path(m.check_file.path), &arrays);
  if (!s.ok()) return s;
  const int64_t g = num_gaussians_;
  const auto expressions_it = arrays.find("expressions");
  if (expressions_it == arrays.end() || expressions_it->second.shape.size() != 2 ||
      expressions_it->second.shape[1] != expression_dim_ || expressions_it->second.shape[0] < 1)
    return Status(StatusCode::kBundleInvalid, "check.npz: 'expressions' is missing or not [E, " +
                                                  std::to_string(expression_dim_) + "]; re-export");
  const int64_t e_count = expressions_it->second.shape[0];
  for (int i = 0; i < 5; ++i) {
    s = expect_size(arrays, kOutputs[i], e_count * g * kWidths[i], "the reference Gaussians [E, G, " +
                                                                      std::to_string(kWidths[i]) + "]");
    if (!s.ok()) return s;
  }
  s = expect_size(arrays, "cam2world", 16, "the check camera [1, 4, 4]");
  if (s.ok()) s = expect_size(arrays, "intrinsics", 9, "its normalised intrinsics [1, 3, 3]");
  if (s.ok() && !code_folded_in_)
    s = expect_size(arrays, "code", num_head_tokens_ * code_dim_, "the avatar code [1, R², D]");
  if (!s.ok()) return s;

  // The check's avatar code replaces the runtime's for the check; the runtime's comes back afterwards.
  const bool had_code = has_code_;
  const std::vector<float> saved_code = had_code && !code_folded_in_ ? code_ : std::vector<float>();
  if (!code_folded_in_) {
    const std::vector<float>& code = arrays["code"].values;
    s = set_avatar_code(code.data(), int64_t(code.size()));
    if (!s.ok()) return s;
  }
  Camera camera;
  std::copy_n(arrays["cam2world"].values.data(), 16, camera.cam2world);
  std::copy_n(arrays["intrinsics"].values.data(), 9, camera.intrinsics);
  camera.width = camera.height = int32_t(image_size());

  NumericsCheck result;
  result.expressions = e_count;
  // The decoder's precision: every frame judged here comes out of it, the encoder row's too (its code goes through
  // the decoder), so an fp32 encoder beside an fp16 or int8 decoder is held to the decoder's looser target.
  result.target_db = psnr_target_db(decoder_precision_);
  // the check's expressions through the decoder with the runtime's current code: max |error| per output against
  // the reference Gaussians, and the worst frame's PSNR
  auto judge = [&](double errors[5], double* worst, bool* finite) -> Status {
    *worst = std::numeric_limits<double>::infinity();
    std::fill(errors, errors + 5, 0.0);
    for (int64_t e = 0; e < e_count; ++e) {
      const float* expression = expressions_it->second.values.data() + e * expression_dim_;
      GaussiansView reference;
      reference.num_gaussians = g;
      const float** fields[5] = {&reference.means, &reference.quats, &reference.scales, &reference.opacities,
                                 &reference.sh0};
      for (int i = 0; i < 5; ++i) *fields[i] = arrays[kOutputs[i]].values.data() + e * g * kWidths[i];
      GaussiansView got;
      Status st = decode(expression, expression_dim_, &got);
      if (!st.ok()) return st;
      const float* got_fields[5] = {got.means, got.quats, got.scales, got.opacities, got.sh0};
      for (int i = 0; i < 5; ++i) {
        for (int64_t j = 0; j < g * kWidths[i]; ++j) {
          const double d = std::fabs(double(got_fields[i][j]) - double((*fields[i])[j]));
          if (!std::isfinite(d)) *finite = false;
          errors[i] = std::max(errors[i], std::isfinite(d) ? d : HUGE_VAL);
        }
      }
      FrameView frame;
      st = render_fields(expression, expression_dim_, camera, kFrameRgb, &frame);
      if (!st.ok()) return st;
      const std::vector<float> decoded(frame.rgb, frame.rgb + 3 * size_t(camera.width) * size_t(camera.height));
      std::vector<float> expected;
      st = rasterize_gaussians(reference, camera, &expected);
      if (!st.ok()) return st;
      *worst = std::min(*worst, psnr_db(decoded, expected));
    }
    return Status::ok_status();
  };
  bool finite = true;
  s = judge(result.max_abs_error, &result.psnr_db, &finite);
  // The encoder, when the runtime has one for the check's inputs: the check photo → a code (against PyTorch's)
  // → the decoder → Gaussians and frames, as flexavatar-verify's "encoder" row.
  const auto features = arrays.find("features");
  const bool with_features = features != arrays.end() && features->second.shape.size() == 4;
  const bool encoder = !code_folded_in_ && (with_features ? encoder_features_artifact_ : encoder_artifact_) &&
                       arrays.count("image");
  if (s.ok() && encoder) {
    EncoderInput in;
    in.image = arrays["image"].values.data();
    in.image_count = int64_t(arrays["image"].values.size());
    std::copy_n(camera.cam2world, 16, in.cam2world);
    std::copy_n(camera.intrinsics, 9, in.intrinsics);
    if (with_features) {
      in.features = features->second.values.data();
      in.feature_channels = features->second.shape[1];
      in.feature_height = features->second.shape[2];
      in.feature_width = features->second.shape[3];
    }
    s = create_avatar_code(in);
    if (s.ok()) {
      result.encoder_checked = true;
      const std::vector<float>& want = arrays["code"].values;
      for (size_t i = 0; i < want.size(); ++i) {
        const double d = std::fabs(double(code_[i]) - double(want[i]));
        if (!std::isfinite(d)) finite = false;
        result.code_max_abs_error = std::max(result.code_max_abs_error, std::isfinite(d) ? d : HUGE_VAL);
      }
      double encoder_errors[5];
      s = judge(encoder_errors, &result.encoder_psnr_db, &finite);
    }
  }
  // restore what the caller had (a failed check leaves the code as it was too); the decoded frame is the check's
  frame_decoded_ = false;
  Status restored = Status::ok_status();
  if (!code_folded_in_) {
    if (had_code)
      restored = set_avatar_code(saved_code.data(), int64_t(saved_code.size()));
    else
      has_code_ = false;
  }
  if (!s.ok()) return s;
  if (!restored.ok()) return restored;
  result.passed = finite && result.psnr_db >= result.target_db &&
                  (!result.encoder_checked || result.encoder_psnr_db >= result.target_db);
  *out = result;
  return Status::ok_status();
}

}  // namespace runtime
}  // namespace flexavatar
