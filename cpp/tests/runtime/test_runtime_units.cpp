// Unit tests of the embedding runtime that need no exported bundle: SHA-256 against FIPS 180-4 vectors,
// the manifest parser (valid manifest, every kind of bad field, every truncation, deep nesting), the .npy
// reader, bundle verification, the C API's error paths (null / destroyed handles, bad options, a bundle whose
// model file is garbage), and, on a tiny generated bundle (test_bundle.h), handle reuse and destroy racing
// calls. Run under ASan/UBSan/LSan by cpp/tests/run_ctest.sh.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <fstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "bundle.h"
#include "flexavatar/flexavatar.h"
#include "harness.h"
#include "intersection_budget.h"
#include "manifest.h"
#include "input_files.h"
#include "inflate.h"
#include "npz.h"
#include "png.h"
#include "ort_session.h"
#include "runtime.h"
#include "runtime_internal.h"
#include "sha256.h"
#include "test_bundle.h"

using namespace flexavatar;
using namespace flexavatar::runtime;
using namespace test_bundle;
namespace fs = std::filesystem;

namespace {

std::string replace_once(std::string text, const std::string& from, const std::string& to) {
  const size_t at = text.find(from);
  if (at == std::string::npos) {
    harness::fail(__FILE__, __LINE__, "test bug: '" + from + "' not in the manifest");
    return text;
  }
  return text.replace(at, from.size(), to);
}

Status parse(const std::string& text, Manifest* m) { return parse_manifest(text.data(), text.size(), m); }

bool mentions(const Status& s, const std::string& word) { return s.message().find(word) != std::string::npos; }

}  // namespace

// The CUDA path's sort sizing (intersection_budget.h), the policy of the Python runtime's intersections.py.
TEST_CASE(intersection_budget_sizes_the_sort_from_the_largest_count) {
  IntersectionBudget budget;
  CHECK(budget.capacity() == 0);  // nothing measured: the first frame is sized exactly
  budget.observe(1000);
  CHECK(budget.capacity() == IntersectionBudget::kMinSlots);
  budget.observe(150000);
  budget.observe(2000);  // a smaller count does not shrink it
  const int64_t cap = budget.capacity();
  CHECK(cap % IntersectionBudget::kGranule == 0);
  CHECK(cap >= 2 * 150000 && cap < 2 * 150000 + IntersectionBudget::kGranule);
  CHECK(budget.largest() == 150000);
  budget.observe(190000);  // 1.5 x 190,000 still fits: the capacity stays put
  CHECK(budget.capacity() == cap);
  budget.observe(210000);  // it does not any more: sized again at 2 x the largest
  CHECK(budget.capacity() >= 2 * 210000 && budget.capacity() < 2 * 210000 + IntersectionBudget::kGranule);
  budget.observe(int64_t(1) << 30);  // 2^31 slots would overflow the sort's int32 index: exact again
  CHECK(budget.capacity() == 0);
}

// ONNX Runtime recreates the CUDA options from its defaults on every UpdateCUDAProviderOptions call, so all of
// them go in one call: one list, each key once, TF32 off and CUDA graphs in it whenever they are asked for.
TEST_CASE(cuda_provider_options_are_one_complete_list) {
  auto find = [](const std::vector<std::pair<std::string, std::string>>& options, const std::string& key) {
    std::string value = "<absent>";
    int count = 0;
    for (const auto& [k, v] : options)
      if (k == key) value = v, ++count;
    CHECK(count <= 1);
    return value;
  };
  SessionConfig config;
  config.cuda_device = 1;
  auto options = find(cuda_provider_options(config), "enable_cuda_graph");
  CHECK(options == "<absent>");
  int stream_stand_in = 0;
  config.cuda_stream = &stream_stand_in;
  config.cuda_graphs = true;
  config.precision = "fp16";
  const auto graphs = cuda_provider_options(config);
  CHECK(find(graphs, "enable_cuda_graph") == "1");
  CHECK(find(graphs, "use_tf32") == "0");
  CHECK(find(graphs, "device_id") == "1");
  CHECK(find(graphs, "cudnn_conv_algo_search") == "HEURISTIC");
  CHECK(find(graphs, "arena_extend_strategy") == "kSameAsRequested");
  config.precision = "fp32";
  config.cuda_stream = nullptr;       // graphs need the rasterizer's stream: without it, none
  const auto plain = cuda_provider_options(config);
  CHECK(find(plain, "enable_cuda_graph") == "<absent>");
  CHECK(find(plain, "cudnn_conv_algo_search") == "EXHAUSTIVE");
  CHECK(find(plain, "use_tf32") == "0");
}

// The read-back check of the effective CUDA options: what a second UpdateCUDAProviderOptions call did (TF32 back
// on, the user stream dropped) is caught; what agrees, or is not reported, passes.
TEST_CASE(cuda_options_mismatch_names_the_key_that_did_not_take) {
  int stream_stand_in = 0;
  SessionConfig config;
  config.cuda_stream = &stream_stand_in;
  config.cuda_graphs = true;
  const auto wanted = cuda_provider_options(config);
  const std::string good = "device_id=0;has_user_compute_stream=1;gpu_mem_limit=18446744073709551615;"
                           "arena_extend_strategy=kSameAsRequested;use_tf32=0;enable_cuda_graph=1;"
                           "do_copy_in_default_stream=1;cudnn_conv_algo_search=EXHAUSTIVE;";
  CHECK(cuda_options_mismatch(good, wanted, true).empty());
  CHECK(cuda_options_mismatch("", wanted, true).empty());                      // nothing reported: not judged
  CHECK(cuda_options_mismatch("use_tf32=false;enable_cuda_graph=true", wanted, true).empty());
  const std::string reset = "device_id=0;has_user_compute_stream=0;use_tf32=1;enable_cuda_graph=1;";
  CHECK(cuda_options_mismatch(reset, wanted, true).find("has_user_compute_stream is 0, expected 1") !=
        std::string::npos);
  CHECK(cuda_options_mismatch("use_tf32=1", wanted, true) == "use_tf32 is 1, expected 0");
  CHECK(cuda_options_mismatch("has_user_compute_stream=0", wanted, false).empty());   // no stream asked for
}

TEST_CASE(sha256_matches_fips_180_4_vectors) {
  CHECK(sha256_hex("abc", 3) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(sha256_hex("", 0) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";  // 448 bits
  CHECK(sha256_hex(two_blocks.data(), two_blocks.size()) ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const std::string million(1000000, 'a');
  CHECK(sha256_hex(million.data(), million.size()) ==
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_CASE(sha256_incremental_equals_one_shot_for_any_chunking) {
  std::string data(1000, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = char((i * 131 + 7) & 0xFF);
  const std::string whole = sha256_hex(data.data(), data.size());
  for (size_t chunk : {1, 3, 55, 56, 63, 64, 65, 127, 999}) {
    Sha256 h;
    for (size_t i = 0; i < data.size(); i += chunk) h.update(data.data() + i, std::min(chunk, data.size() - i));
    CHECK(Sha256::hex(h.finish()) == whole);
  }
}

TEST_CASE(valid_manifest_parses_into_typed_fields) {
  Manifest m;
  const Status s = parse(valid_manifest(), &m);
  CHECK(s.ok());
  CHECK(m.schema_version == 1 && m.opset == 18);
  CHECK(m.conventions.n_gaussians == 4 && m.conventions.n_head_tokens == 4 && m.conventions.d_code == 8);
  CHECK(m.conventions.expression_dim == 135 && m.conventions.image_size == 64);
  CHECK(m.artifacts.size() == 1 && m.find("decoder", "onnx", "fp32") != nullptr);
  CHECK(m.find("decoder", "onnx", "fp16") == nullptr);
  const ModelArtifact& a = m.artifacts[0];
  CHECK(a.input("expressions") && a.input("expressions")->shape[0] == -1 && a.input("expressions")->shape[1] == 135);
  CHECK(a.input("expressions")->dim_names[0] == "E");
  CHECK(m.files().size() == 1 && m.files()[0].size == 10);
  CHECK(!m.has_avatar);
}

// Format "onnx-ort" (ONNX with ONNX Runtime's contrib ops, bundle.py FORMAT_ONNX_ORT): an .onnx model file, found
// by its own format only.
TEST_CASE(onnx_ort_format_parses_with_an_onnx_file) {
  Manifest m;
  const std::string fused =
      replace_once(replace_once(valid_manifest(), R"("format": "onnx")", R"("format": "onnx-ort")"),
                   R"("path": "decoder.fp32.onnx")", R"("path": "decoder.fp32.ort.onnx")");
  const Status s = parse(fused, &m);
  CHECK(s.ok());
  CHECK(m.artifacts.size() == 1 && m.artifacts[0].format == "onnx-ort");
  CHECK(m.find("decoder", "onnx-ort", "fp32") != nullptr && m.find("decoder", "onnx", "fp32") == nullptr);
  CHECK(m.artifacts[0].files[0].path == "decoder.fp32.ort.onnx");
  Status bad = parse(replace_once(fused, R"("path": "decoder.fp32.ort.onnx")", R"("path": "decoder.fp32.xml")"), &m);
  CHECK(bad.code() == StatusCode::kBundleInvalid && mentions(bad, "files[0] must be the .onnx model file") &&
        mentions(bad, "decoder.fp32.xml"));
  // a name it does not know is another format (left aside, see int8_precision_parses_and_unknown_kinds_are_left_aside)
  CHECK(parse(replace_once(valid_manifest(), R"("format": "onnx")", R"("format": "onnx_ort")"), &m).ok());
  CHECK(m.artifacts.empty() && m.ignored == std::vector<std::string>{"decoder.fp32.onnx (format 'onnx_ort')"});
}

TEST_CASE(torch_model_record_is_validated_but_not_hashed) {
  // bundle.py's Manifest.torch_model (export target pytorch): a FileRecord for the Python runtime's torch engines
  const std::string carried = R"("torch_model": )" +
                              test_bundle::file_json("model.safetensors", std::string(64, 'c'), 9) +
                              R"(, "avatar": null)";
  Manifest m;
  CHECK(parse(replace_once(valid_manifest(), R"("avatar": null)", carried), &m).ok());
  CHECK(m.files().size() == 1);  // this runtime never reads it: not hashed
  Status bad = parse(replace_once(replace_once(valid_manifest(), R"("avatar": null)", carried),
                                  R"("path": "model.safetensors")", R"("path": "decoder.fp32.onnx")"),
                     &m);
  CHECK(bad.code() == StatusCode::kBundleInvalid && mentions(bad, "the same file twice ('decoder.fp32.onnx')"));
  bad = parse(replace_once(valid_manifest(), R"("avatar": null)", R"("torch_model": {"path": "m"}, "avatar": null)"),
              &m);
  CHECK(bad.code() == StatusCode::kBundleInvalid && mentions(bad, "torch_model"));
}

TEST_CASE(check_set_file_is_listed_and_hashed_like_every_file) {
  // bundle.py's Manifest.check: {"file": FileRecord, "n_expressions", "description"}; optional (older bundles)
  const std::string check = R"("check": {"file": )" + test_bundle::file_json("check.npz", std::string(64, 'b'), 7) +
                            R"(, "n_expressions": 3, "description": "d"}, "avatar": null)";
  Manifest m;
  CHECK(parse(replace_once(valid_manifest(), R"("avatar": null)", check), &m).ok());
  CHECK(m.has_check && m.check_file.path == "check.npz" && m.check_file.size == 7);
  CHECK(m.files().size() == 2 && m.files()[1].path == "check.npz");
  const struct {
    std::string from, to, expect;
  } cases[] = {
      {R"("n_expressions": 3)", R"("n_expressions": -1)", "manifest.check.n_expressions must be >= 0"},
      {R"(, "description": "d")", "", "manifest.check.description is missing"},
      {R"("path": "check.npz")", R"("path": "decoder.fp32.onnx")", "the same file twice ('decoder.fp32.onnx')"},
      {R"("path": "check.npz")", R"("path": "../check.npz")", "without '..'"},
  };
  for (const auto& c : cases) {
    const Status s = parse(replace_once(replace_once(valid_manifest(), R"("avatar": null)", check), c.from, c.to), &m);
    CHECK(s.code() == StatusCode::kBundleInvalid);
    if (!mentions(s, c.expect)) harness::fail(__FILE__, __LINE__, "'" + c.expect + "' not in: " + s.message());
  }
}

TEST_CASE(bad_fields_are_rejected_with_the_field_named) {
  struct Case {
    std::string from, to, expect;
  };
  const std::vector<Case> cases = {
      {R"("schema": "flexavatar-bundle")", R"("schema": "other")", "manifest.schema"},
      {R"("schema_version": 1)", R"("schema_version": 2)", "schema_version is 2"},
      {R"("schema_version": 1)", R"("schema_version": true)", "must be an integer"},
      {R"("schema_version": 1)", R"("schema_version": 1.0)", "must be an integer"},
      {R"("opset": 18)", R"("opset": "18")", "manifest.opset must be an integer"},
      {R"("role": "decoder")", R"("role": 3)", "artifacts[0].role must be a string"},
      {R"("precision": "fp32")", R"("precision": null)", "artifacts[0].precision must be a string"},
      {R"("shape": [1, 4, 8], "dtype": "float32")", R"("shape": [1, 4, 8], "dtype": "f64")", "dtype"},
      {R"("shape": [1, 4, 8])", R"("shape": [1, -4, 8])", "non-negative"},
      {R"("n_gaussians": 4, "n_head)", R"("n_gaussians": "4", "n_head)", "conventions.n_gaussians"},
      {R"("axes": "opencv", )", "", "conventions.axes is missing"},
      {R"("expression_layout": {"expression": [0, 100]})", R"("expression_layout": {"expression": 3})",
       "expression_layout"},
      {R"("seeded", "passed": true)", R"("seeded", "passed": "yes")", "true or false"},
      {R"("dinov2": null)", R"("dinov2": 7)", "dinov2"},
      {R"("size": 10)", R"("size": -1)", "size must be >= 0"},
      {"\"" + std::string(64, 'a') + "\"", "\"" + std::string(64, 'A') + "\"", "64 lowercase hex"},
      {"\"" + std::string(64, 'a') + "\"", "\"abc\"", "64 lowercase hex"},
      {R"("path": "decoder.fp32.onnx")", R"("path": "../decoder.fp32.onnx")", "without '..'"},
      {R"("path": "decoder.fp32.onnx")", R"("path": "/etc/decoder.fp32.onnx")", "without '..'"},
      {R"("path": "decoder.fp32.onnx")", R"("path": "decoder.fp32.bin")", "must be the .onnx model file"},
      // the OS would open "a" (the name ends at the NUL), not the file the manifest checks
      {R"("path": "decoder.fp32.onnx")", R"("path": "a\u0000b.onnx")", "NUL characters"},
      // containers are summarised in messages, never dumped
      {R"("schema": "flexavatar-bundle")", R"("schema": [[1, 2]])", "got a list of length 1"},
      {R"("avatar": null)", R"("avatar": {"code": 1})", "avatar.code must be an object"},
      {R"("artifacts": [)", R"("artifacts": {"x": 1}, "old": [)", "must be a list"},
  };
  for (const auto& c : cases) {
    Manifest m;
    const Status s = parse(replace_once(valid_manifest(), c.from, c.to), &m);
    CHECK(s.code() == StatusCode::kBundleInvalid);
    if (!mentions(s, c.expect)) harness::fail(__FILE__, __LINE__, "'" + c.expect + "' not in: " + s.message());
  }
  // Duplicates (two artifacts with the same name / file).
  std::string text = valid_manifest();
  const size_t start = text.find(R"({"name": "decoder.fp32.onnx")");
  const size_t end = text.find(R"(  "avatar")");
  const std::string artifact = text.substr(start, text.rfind(']', end) - start);
  Manifest m;
  Status s = parse(replace_once(text, artifact, artifact + ", " + artifact), &m);
  CHECK(s.code() == StatusCode::kBundleInvalid && mentions(s, "duplicate names"));
  // Not JSON / not an object.
  s = parse("{\"schema\": ", &m);
  CHECK(s.code() == StatusCode::kBundleInvalid && mentions(s, "not valid JSON"));
  s = parse("[1, 2]", &m);
  CHECK(s.code() == StatusCode::kBundleInvalid && mentions(s, "must be a JSON object"));
  s = parse("", &m);
  CHECK(s.code() == StatusCode::kBundleInvalid);
}

// nlohmann's dump() (error messages) and destructors recurse: deep nesting is refused while parsing.
// Precision "int8" (bundle.py PRECISIONS: the int8 ONNX decoders of flexavatar-export --precision fp32,int8) parses
// and is found by its own name. A format, role or precision this runtime does not know (a newer exporter's) leaves
// that artifact aside, as Python's Manifest.from_dict does: named in Manifest::ignored and in lookup errors.
TEST_CASE(int8_precision_parses_and_unknown_kinds_are_left_aside) {
  Manifest m;
  CHECK(parse(replace_once(valid_manifest(), R"("precision": "fp32")", R"("precision": "int8")"), &m).ok());
  CHECK(m.find("decoder", "onnx", "int8") != nullptr && m.find("decoder", "onnx", "fp32") == nullptr);
  CHECK(m.ignored.empty() && m.inventory() == "decoder.fp32.onnx");
  for (const auto& [from, to, why] :
       {std::make_tuple(R"("precision": "fp32")", R"("precision": "int4")", "precision 'int4'"),
        std::make_tuple(R"("format": "onnx")", R"("format": "tensorrt")", "format 'tensorrt'"),
        std::make_tuple(R"("role": "decoder")", R"("role": "decoder_lite")", "role 'decoder_lite'")}) {
    CHECK(parse(replace_once(valid_manifest(), from, to), &m).ok());
    CHECK(m.artifacts.empty() && m.ignored.size() == 1);
    CHECK(m.ignored[0] == std::string("decoder.fp32.onnx (") + why + ")");
    CHECK(m.inventory() == std::string("none (and, unknown to this flexavatar: decoder.fp32.onnx (") + why + "))");
  }
}

// The numerics check's targets: the export's (flexavatar/bundle.py PSNR_TARGET_DB).
TEST_CASE(psnr_targets_are_the_exports_per_precision) {
  CHECK(psnr_target_db("fp32") == 60.0);
  CHECK(psnr_target_db("fp16") == 40.0);
  CHECK(psnr_target_db("int8") == 30.0);
}

TEST_CASE(deep_nesting_is_a_manifest_error_not_a_stack_overflow) {
  auto nested = [](size_t depth) { return std::string(depth, '[') + std::string(depth, ']'); };
  Manifest m;
  // root object (depth 0) > model > config > "a": lists from depth 3; 64 levels in all are fine
  CHECK(parse(replace_once(valid_manifest(), R"("config": {})", R"("config": {"a": )" + nested(61) + "}"), &m).ok());
  Status s = parse(replace_once(valid_manifest(), R"("config": {})", R"("config": {"a": )" + nested(62) + "}"), &m);
  CHECK(s.code() == StatusCode::kBundleInvalid && mentions(s, "deeper than 64 levels"));
  // a million levels, in a field whose error message shows the value, through the C API
  const fs::path dir = scratch("deep");
  write_file(dir / "manifest.json", "{\"schema\": " + nested(1000000) + "}");
  flexavatar_runtime* rt = nullptr;
  CHECK(flexavatar_runtime_create(dir.u8string().c_str(), nullptr, &rt) == FLEXAVATAR_ERROR_BUNDLE_INVALID && rt == nullptr);
  CHECK(std::string(flexavatar_last_error()).find("deeper than 64 levels") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE(every_truncation_of_the_manifest_is_an_error_not_a_crash) {
  const std::string text = valid_manifest();
  int errors = 0;
  const size_t end = text.find_last_of('}');
  for (size_t n = 0; n < end; ++n) {
    Manifest m;
    errors += parse(text.substr(0, n), &m).code() == StatusCode::kBundleInvalid;
  }
  CHECK(errors == int(end));
}

TEST_CASE(npy_reader_accepts_c_order_floats_and_rejects_the_rest) {
  auto npy = [](const std::string& dict, size_t floats) {
    std::vector<float> values(floats);
    for (size_t i = 0; i < floats; ++i) values[i] = float(i) * 0.5f;
    return npy_from_header(dict, values);
  };
  auto parse_npy = [](const std::string& bytes, NpyArray* out) {
    return parse_npy_float32(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), "t.npy", out);
  };
  NpyArray a;
  CHECK(parse_npy(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 1, 2), }", 8), &a).ok());
  CHECK(a.shape == (std::vector<int64_t>{4, 1, 2}) && a.values.size() == 8 && a.values[3] == 1.5f);
  // float64 (numpy's default) and float16 are converted to float32; other dtypes are refused by name
  std::string f8 = npy_from_header("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", {});
  for (const double v : {0.1, -2.5, 1e300}) f8.append(reinterpret_cast<const char*>(&v), 8);
  CHECK(parse_npy(f8, &a).ok() && a.values.size() == 3 && a.values[0] == 0.1f && a.values[1] == -2.5f &&
        std::isinf(a.values[2]));
  std::string f2 = npy_from_header("{'descr': '<f2', 'fortran_order': False, 'shape': (5,), }", {});
  for (const uint16_t v : {0x3C00, 0xC000, 0x0001, 0x8000, 0x7C00}) {  // 1, -2, 2^-24 (subnormal), -0, inf
    f2 += char(v & 0xFF);
    f2 += char(v >> 8);
  }
  CHECK(parse_npy(f2, &a).ok() && a.values[0] == 1.f && a.values[1] == -2.f && a.values[2] == std::ldexp(1.f, -24) &&
        a.values[3] == 0.f && std::signbit(a.values[3]) && std::isinf(a.values[4]));
  const Status ints = parse_npy(npy("{'descr': '<i4', 'fortran_order': False, 'shape': (4,), }", 4), &a);
  CHECK(ints.code() == StatusCode::kInvalidArgument && mentions(ints, "dtype '<i4', expected float32"));
  CHECK(parse_npy(npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", 4), &a).code() ==
        StatusCode::kInvalidArgument);
  CHECK(parse_npy(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 3), }", 8), &a).code() ==
        StatusCode::kInvalidSize);
  const std::string good = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 1, 2), }", 8);
  for (size_t n = 0; n < good.size(); ++n) CHECK(!parse_npy(good.substr(0, n), &a).ok());
  CHECK(parse_npy("PK\x03\x04 not numpy", &a).code() == StatusCode::kInvalidArgument);
  // each dimension is allowed (<= 2^40), their product overflows int64: an error, not UB wrapping to 0
  const Status huge = parse_npy(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776), }", 0), &a);
  CHECK(huge.code() == StatusCode::kInvalidSize && mentions(huge, "too large"));
  CHECK(parse_npy(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 1099511627776, 1099511627776), }", 0), &a).ok());
}

TEST_CASE(npz_reader_reads_numpy_archives_and_rejects_the_rest) {
  auto parse = [](const std::string& bytes, std::map<std::string, NpyArray>* out) {
    return parse_npz_float32(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), "t.npz", out);
  };
  const std::string good = npz_bytes({{"code.npy", npy_bytes({2, 3}, {0, 1, 2, 3, 4, 5})},
                                      {"expressions.npy", npy_bytes({4}, {9, 8, 7, 6})}});
  std::map<std::string, NpyArray> arrays;
  CHECK(parse(good, &arrays).ok());
  CHECK(arrays.size() == 2 && arrays["code"].shape == (std::vector<int64_t>{2, 3}) && arrays["code"].values[5] == 5.f);
  CHECK(arrays["expressions"].values == (std::vector<float>{9, 8, 7, 6}));
  // np.savez_compressed's members are deflated; another method (12: bzip2) is refused by name
  CHECK(parse(npz_bytes({{"code.npy", npy_bytes({2, 3}, {0, 1, 2, 3, 4, 5})}}, 8), &arrays).ok());
  CHECK(arrays["code"].values == (std::vector<float>{0, 1, 2, 3, 4, 5}));
  const Status bzip2 = parse(npz_bytes({{"code.npy", npy_bytes({1}, {1})}}, 12), &arrays);
  CHECK(bzip2.code() == StatusCode::kBundleInvalid && mentions(bzip2, "code.npy: compression method 12"));
  // a damaged member: its CRC-32 differs from the directory's (byte 70: inside the first member's .npy header)
  std::string damaged = good;
  damaged[70] ^= 0x20;
  const Status crc = parse(damaged, &arrays);
  CHECK(crc.code() == StatusCode::kBundleInvalid && mentions(crc, "code: CRC-32"));
  const Status ints = parse(npz_bytes({{"x.npy", npy_bytes({1}, {0}, "<i4")}}), &arrays);
  CHECK(ints.code() == StatusCode::kBundleInvalid && mentions(ints, "t.npz: x") && mentions(ints, "float32"));
  // every truncation is an error naming the archive, never a crash or a read past the end
  for (size_t n = 0; n < good.size(); ++n) {
    const Status s = parse(good.substr(0, n), &arrays);
    CHECK(!s.ok() && s.code() == StatusCode::kBundleInvalid && mentions(s, "t.npz"));
  }
}

namespace {
std::string from_hex(const char* hex) {
  std::string out;
  for (size_t i = 0; hex[i] && hex[i + 1]; i += 2) out += char(std::stoi(std::string(hex + i, 2), nullptr, 16));
  return out;
}
std::string inflate_string(const std::string& stream, size_t size, std::string* error) {
  std::string out(size, '\0');
  *error = inflate_raw(reinterpret_cast<const unsigned char*>(stream.data()), stream.size(),
                       reinterpret_cast<unsigned char*>(&out[0]), out.size());
  return out;
}
}  // namespace

TEST_CASE(inflate_decodes_stored_fixed_and_dynamic_huffman_blocks) {
  CHECK(crc32(reinterpret_cast<const unsigned char*>("123456789"), 9) == 0xCBF43926u);  // the CRC-32 check value
  struct Vector {
    const char* name;
    std::string stream;
    size_t size;
    uint32_t crc;
    std::string prefix;
  };
  const std::string text = "FLEX-1 expression codes, expression codes, expression codes!";
  // zlib 1.3 (Python's zlib.compressobj(9, DEFLATED, -15, 8, strategy)): Z_FIXED for the fixed Huffman codes; a
  // skewed alphabet of 300 bytes (random.seed(1), choices of "aaaaaaaabbbbccd ") for the dynamic ones
  const std::vector<Vector> vectors = {
      {"stored", deflate_stored(text), text.size(), crc32_bitwise(text), text},
      {"fixed", from_hex("73f3718dd0355448ad28284a2d2ececccf5348ce4f492dd62142441100"), text.size(),
       crc32_bitwise(text), text},
      {"dynamic",
       from_hex("358f8111c0300802577135c0fd6728606aafd706f18300313b02061296b0e0921fece4604d51299076d64862ede2f8e8"
                "464be479edf177280f6d5b656e20c8687136cff84f01a3837d578716ce98013d002a360373f143458df08aad6c867285"
                "878ffaafa85b130d28679fd770b05c9ee826f0d4d03e"),
       300, 0xad9ae8ffu, "aaba d caa accadbaabaaaacacaad"},
  };
  for (const Vector& v : vectors) {
    std::string error;
    const std::string out = inflate_string(v.stream, v.size, &error);
    CHECK(error.empty() && crc32_bitwise(out) == v.crc && out.compare(0, v.prefix.size(), v.prefix) == 0);
    if (!error.empty()) std::printf("  %s: %s\n", v.name, error.c_str());
    // a wrong expected size is an error either way, never a write past the buffer
    inflate_string(v.stream, v.size - 1, &error);
    CHECK(error.find("more than the " + std::to_string(v.size - 1) + " bytes") != std::string::npos);
    inflate_string(v.stream, v.size + 1, &error);
    CHECK(error.find("ends after " + std::to_string(v.size) + " bytes") != std::string::npos);
    // every truncation is an error, never a read past the input
    for (size_t n = 0; n < v.stream.size(); ++n) {
      inflate_string(v.stream.substr(0, n), v.size, &error);
      CHECK(!error.empty());
    }
  }
  // a stored block longer than 64 KiB is split; a copy from before the start of the data is refused
  const std::string big(150000, 'x');
  std::string error;
  CHECK(inflate_string(deflate_stored(big), big.size(), &error) == big && error.empty());
  // fixed block: literal 'a' (code 0x91, 8 bits), length 3 (symbol 257: 7 bits 0000001) from distance 5
  // (code 4 + 1 extra bit): more than the 1 byte written
  const std::string far_back = from_hex("4b041200");  // zlib: "invalid distance too far back"
  inflate_string(far_back, 4, &error);
  CHECK(error.find("before the start of the data") != std::string::npos);
}

TEST_CASE(expression_files_are_npy_or_npz_with_expression_codes) {
  std::vector<float> codes(2 * 135);
  for (size_t i = 0; i < codes.size(); ++i) codes[i] = float(i) * 0.25f - 3.f;
  auto parse = [](const std::string& bytes, std::vector<float>* out) {
    return parse_expression_file(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), "seq", out);
  };
  std::vector<float> got;
  const std::string npy = npy_bytes({2, 135}, codes);
  CHECK(parse(npy, &got).ok() && got == codes);
  CHECK(parse(npy_bytes({135}, std::vector<float>(codes.begin(), codes.begin() + 135)), &got).ok() &&
        got.size() == 135);
  for (const uint16_t method : {uint16_t(0), uint16_t(8)}) {
    const std::string npz = npz_bytes({{"frame_ids.npy", npy_bytes({2}, {0, 1}, "<i4")},
                                       {"expression_codes.npy", npy}}, method);
    CHECK(parse(npz, &got).ok() && got == codes);  // the int32 member is not read
  }
  const Status missing = parse(npz_bytes({{"expression_code.npy", npy}}), &got);
  CHECK(missing.code() == StatusCode::kInvalidArgument &&
        mentions(missing, "no 'expression_codes' array (members: expression_code;"));
  const Status wide = parse(npy_bytes({2, 136}, std::vector<float>(272)), &got);
  CHECK(wide.code() == StatusCode::kInvalidArgument && mentions(wide, "shape [2, 136], expected [E, 135]"));
  std::vector<float> nan = codes;
  nan[135 + 7] = std::nanf("");
  const Status bad = parse(npy_bytes({2, 135}, nan), &got);
  CHECK(bad.code() == StatusCode::kInvalidArgument && mentions(bad, "NaN/inf (or values beyond float32) in 1 of 2 frames, the first is frame 1"));
  const Status text = parse("frame,value\n", &got);
  CHECK(text.code() == StatusCode::kInvalidArgument && mentions(text, "neither a .npy file nor an .npz archive"));
  std::vector<float> none;
  const Status io = read_expression_file((scratch("expressions") / "absent.npz").string(), &none);
  CHECK(io.code() == StatusCode::kIoError && mentions(io, "absent.npz"));
}

TEST_CASE(sequence_cameras_are_the_npz_cam2world_and_intrinsics) {
  auto parse = [](const std::string& bytes, std::vector<float>* c2w, std::vector<float>* k) {
    return parse_sequence_cameras(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), "seq", c2w, k);
  };
  std::vector<float> c2w(2 * 16), k(2 * 9);
  for (size_t i = 0; i < c2w.size(); ++i) c2w[i] = float(i);
  for (size_t i = 0; i < k.size(); ++i) k[i] = -float(i);
  std::vector<float> got_c2w, got_k;
  const std::string npz = npz_bytes({{"expression_codes.npy", npy_bytes({2, 135}, std::vector<float>(270))},
                                     {"cam2world.npy", npy_bytes({2, 4, 4}, c2w)},
                                     {"intrinsics.npy", npy_bytes({2, 3, 3}, k)}}, 8);
  CHECK(parse(npz, &got_c2w, &got_k).ok() && got_c2w == c2w && got_k == k);
  const Status missing = parse(npz_bytes({{"cam2world.npy", npy_bytes({2, 4, 4}, c2w)}}), &got_c2w, &got_k);
  CHECK(missing.code() == StatusCode::kInvalidArgument && mentions(missing, "no 'intrinsics' array"));
  const Status counts = parse(npz_bytes({{"cam2world.npy", npy_bytes({2, 4, 4}, c2w)},
                                         {"intrinsics.npy", npy_bytes({1, 3, 3}, std::vector<float>(9))}}),
                              &got_c2w, &got_k);
  CHECK(counts.code() == StatusCode::kInvalidArgument && mentions(counts, "cam2world [2, 4, 4] and intrinsics [1, 3, 3]"));
  const Status npy = parse(npy_bytes({2, 4, 4}, c2w), &got_c2w, &got_k);
  CHECK(npy.code() == StatusCode::kInvalidArgument && mentions(npy, "not an .npz archive"));
}

TEST_CASE(png_photos_decode_to_channel_major_floats_on_white) {
  // 4 x 3 RGBA, 8-bit, Adam7-interlaced, rows filtered at random (tests/test_cpp_png.py png_bytes, seed 3); column
  // alphas 0, 128, 255, 255
  const std::string png = from_hex(
      "89504e470d0a1a0a0000000d4948445200000004000000030806000001c3f39e50000000204944415478da013600c9ff047983c100003f"
      "4fdeff00fa22620005c00fff010824d2803d208399060000002149444154af6f7f00e73480807f7c1dff04a48c15003934c180f4949d7f"
      "4ef9ac0047361697a6aa074d0000000049454e44ae426082");
  const int rgba[3][4][4] = {{{121, 131, 193, 0}, {8, 36, 210, 128}, {63, 79, 222, 255}, {69, 211, 65, 255}},
                             {{164, 140, 21, 0}, {221, 192, 214, 128}, {209, 84, 115, 255}, {31, 77, 31, 255}},
                             {{250, 34, 98, 0}, {231, 52, 128, 128}, {5, 192, 15, 255}, {127, 124, 29, 255}}};
  auto parse = [](const std::string& bytes, std::vector<float>* chw, int* w, int* h) {
    return parse_png(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), "photo.png", chw, w, h);
  };
  std::vector<float> chw;
  int w = 0, h = 0;
  CHECK(parse(png, &chw, &w, &h).ok() && w == 4 && h == 3 && chw.size() == 36);
  float worst = 0.f;
  for (int y = 0; y < 3; ++y)
    for (int x = 0; x < 4; ++x)
      for (int c = 0; c < 3; ++c) {
        const float a = float(rgba[y][x][3]) / 255.f, want = float(rgba[y][x][c]) / 255.f * a + (1.f - a);
        worst = std::max(worst, std::fabs(chw[size_t((c * 3 + y) * 4 + x)] - want));
      }
  CHECK(worst <= 1e-6f && chw[0] == 1.f);  // column 0 is transparent: white
  for (size_t n = 0; n < png.size(); ++n) {
    const Status s = parse(png.substr(0, n), &chw, &w, &h);
    CHECK(s.code() == StatusCode::kInvalidArgument && mentions(s, "photo.png"));
  }
  const Status jpeg = parse(std::string("\xFF\xD8\xFF\xE0\x00\x10JFIF", 10), &chw, &w, &h);
  CHECK(jpeg.code() == StatusCode::kInvalidArgument && mentions(jpeg, "a JPEG file"));
}

TEST_CASE(bundle_files_are_checked_for_presence_size_and_hash) {
  const fs::path dir = scratch("verify");
  const std::string model = "not really an onnx model";
  write_file(dir / "decoder.fp32.onnx", model);
  const std::string sha = sha256_hex(model.data(), model.size());
  write_file(dir / "manifest.json", valid_manifest("decoder.fp32.onnx", sha, long(model.size())));
  Bundle b;
  CHECK(open_bundle(dir.string(), Verify::kFull, &b).ok());
  write_file(dir / "decoder.fp32.onnx", model.substr(0, 10));
  Status s = open_bundle(dir.string(), Verify::kFull, &b);
  CHECK(s.code() == StatusCode::kBundleHashMismatch && mentions(s, "truncated"));
  std::string flipped = model;
  flipped[3] ^= 1;
  write_file(dir / "decoder.fp32.onnx", flipped);
  s = open_bundle(dir.string(), Verify::kFull, &b);
  CHECK(s.code() == StatusCode::kBundleHashMismatch && mentions(s, "sha256"));
  CHECK(open_bundle(dir.string(), Verify::kSize, &b).ok());  // same size: only the hash would notice
  fs::remove(dir / "decoder.fp32.onnx");
  s = open_bundle(dir.string(), Verify::kSize, &b);
  CHECK(s.code() == StatusCode::kBundleFileMissing && mentions(s, "decoder.fp32.onnx"));
  CHECK(open_bundle(dir.string(), Verify::kNone, &b).ok());
  s = open_bundle((dir / "nope").string(), Verify::kFull, &b);
  CHECK(s.code() == StatusCode::kBundleFileMissing);
  fs::remove_all(dir);
}

TEST_CASE(c_api_null_and_stale_handles_give_invalid_handle) {
  flexavatar_runtime* stale = reinterpret_cast<flexavatar_runtime*>(&stale);  // never created
  for (flexavatar_runtime* handle : {static_cast<flexavatar_runtime*>(nullptr), stale}) {
    float expression[135] = {0};
    flexavatar_gaussians g;
    flexavatar_frame f;
    flexavatar_camera cam{};
    flexavatar_runtime_info info{};
    info.struct_size = sizeof(info);
    CHECK(flexavatar_runtime_decode(handle, expression, 135, &g) == FLEXAVATAR_ERROR_INVALID_HANDLE);
    CHECK(std::strlen(flexavatar_last_error()) > 0);
    CHECK(flexavatar_runtime_render(handle, expression, 135, &cam, &f) == FLEXAVATAR_ERROR_INVALID_HANDLE);
    CHECK(flexavatar_runtime_set_avatar_code(handle, expression, 135) == FLEXAVATAR_ERROR_INVALID_HANDLE);
    CHECK(flexavatar_runtime_load_avatar_code(handle, nullptr) == FLEXAVATAR_ERROR_INVALID_HANDLE);
    CHECK(flexavatar_runtime_get_info(handle, &info) == FLEXAVATAR_ERROR_INVALID_HANDLE);
    CHECK(flexavatar_runtime_default_camera(handle, &cam) == FLEXAVATAR_ERROR_INVALID_HANDLE);
    flexavatar_encoder_input input;
    CHECK(flexavatar_encoder_input_init(&input, sizeof(input)) == FLEXAVATAR_OK);
    CHECK(flexavatar_runtime_create_avatar_code(handle, &input) == FLEXAVATAR_ERROR_INVALID_HANDLE);
    CHECK(flexavatar_runtime_get_avatar_code(handle, expression, 135) == FLEXAVATAR_ERROR_INVALID_HANDLE);
    flexavatar_device_frame df{};
    df.struct_size = sizeof(df);
    CHECK(flexavatar_runtime_render_device(handle, expression, 135, &cam, &df) == FLEXAVATAR_ERROR_INVALID_HANDLE);
    flexavatar_numerics numerics{};
    numerics.struct_size = sizeof(numerics);
    CHECK(flexavatar_runtime_check_numerics(handle, &numerics) == FLEXAVATAR_ERROR_INVALID_HANDLE);
    flexavatar_runtime_destroy(handle);  // ignored, no crash
  }
  CHECK(flexavatar_api_version() == FLEXAVATAR_API_VERSION);
  CHECK(std::string(flexavatar_status_name(FLEXAVATAR_ERROR_BUNDLE_HASH_MISMATCH)) == "bundle hash mismatch");
}

TEST_CASE(c_api_create_reports_bad_arguments_and_bad_bundles) {
  flexavatar_runtime* rt = reinterpret_cast<flexavatar_runtime*>(0x1);
  CHECK(flexavatar_runtime_create(nullptr, nullptr, &rt) == FLEXAVATAR_ERROR_NULL_POINTER && rt == nullptr);
  CHECK(flexavatar_runtime_create("x", nullptr, nullptr) == FLEXAVATAR_ERROR_NULL_POINTER);
  CHECK(flexavatar_runtime_create("/nonexistent/bundle", nullptr, &rt) == FLEXAVATAR_ERROR_BUNDLE_FILE_MISSING);
  CHECK(std::string(flexavatar_last_error()).find("/nonexistent/bundle") != std::string::npos);
  flexavatar_runtime_options options;
  CHECK(flexavatar_runtime_options_init(&options, sizeof(options)) == FLEXAVATAR_OK);
  options.struct_size = 4;
  CHECK(flexavatar_runtime_create("x", &options, &rt) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  CHECK(flexavatar_runtime_options_init(&options, sizeof(options)) == FLEXAVATAR_OK);
  options.device = 9;
  CHECK(flexavatar_runtime_create("x", &options, &rt) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  CHECK(std::string(flexavatar_last_error()).find("options.device") != std::string::npos);
  CHECK(flexavatar_runtime_options_init(&options, sizeof(options)) == FLEXAVATAR_OK);
  CHECK(options.rasterizer == FLEXAVATAR_RASTERIZER_AUTO && options.struct_size == sizeof(options));
  options.rasterizer = 3;
  CHECK(flexavatar_runtime_create("x", &options, &rt) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  CHECK(std::string(flexavatar_last_error()).find("options.rasterizer") != std::string::npos);
  CHECK(flexavatar_runtime_options_init(&options, sizeof(options)) == FLEXAVATAR_OK);
  options.cuda_device = -1;
  CHECK(flexavatar_runtime_create("x", &options, &rt) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  CHECK(std::string(flexavatar_last_error()).find("options.cuda_device") != std::string::npos);
  // A caller built against the first version of the struct (no rasterizer field) is still accepted.
  CHECK(flexavatar_runtime_options_init(&options, sizeof(options)) == FLEXAVATAR_OK);
  options.struct_size = offsetof(flexavatar_runtime_options, rasterizer);
  options.rasterizer = 77;  // beyond the caller's struct: must not be read
  CHECK(flexavatar_runtime_create("/nonexistent/bundle", &options, &rt) == FLEXAVATAR_ERROR_BUNDLE_FILE_MISSING);

  const fs::path dir = scratch("capi");
  CHECK(flexavatar_runtime_create(dir.u8string().c_str(), nullptr, &rt) == FLEXAVATAR_ERROR_BUNDLE_INVALID);  // no manifest
  write_file(dir / "manifest.json", "{not json");
  CHECK(flexavatar_runtime_create(dir.u8string().c_str(), nullptr, &rt) == FLEXAVATAR_ERROR_BUNDLE_INVALID);
  // A manifest that is fine and a "model" that is not ONNX: ONNX Runtime's error comes back as a status.
  std::string garbage(4096, '\0');
  for (size_t i = 0; i < garbage.size(); ++i) garbage[i] = char((i * 2654435761u) >> 24);
  write_file(dir / "decoder.fp32.onnx", garbage);
  write_file(dir / "manifest.json",
             valid_manifest("decoder.fp32.onnx", sha256_hex(garbage.data(), garbage.size()), long(garbage.size())));
  CHECK(flexavatar_runtime_create(dir.u8string().c_str(), nullptr, &rt) == FLEXAVATAR_ERROR_MODEL && rt == nullptr);
  CHECK(std::string(flexavatar_last_error()).find("ONNX Runtime") != std::string::npos);
  write_file(dir / "decoder.fp32.onnx", "");
  CHECK(flexavatar_runtime_create(dir.u8string().c_str(), nullptr, &rt) == FLEXAVATAR_ERROR_BUNDLE_HASH_MISMATCH);
  fs::remove_all(dir);
}

TEST_CASE(encoder_input_init_sets_the_size_and_the_demo_camera) {
  flexavatar_encoder_input input;
  std::memset(&input, 0xAB, sizeof(input));
  CHECK(flexavatar_encoder_input_init(&input, sizeof(input)) == FLEXAVATAR_OK);
  CHECK(input.struct_size == sizeof(input));
  CHECK(input.image == nullptr && input.image_count == 0 && input.features == nullptr);
  CHECK(input.feature_channels == 0 && input.feature_height == 0 && input.feature_width == 0);
  // flexavatar.cameras.default_camera: eye (0, 0, 1) looking at the origin, OpenCV axes; fx = 1500/512.
  const float c2w[16] = {1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 1, 0, 0, 0, 1};
  for (int i = 0; i < 16; ++i) CHECK(input.cam2world[i] == c2w[i]);
  CHECK_NEAR(input.intrinsics[0], 2.9296875f, 1e-7f);
  CHECK(input.intrinsics[2] == 0.5f && input.intrinsics[5] == 0.5f && input.intrinsics[8] == 1.f);
  CHECK(flexavatar_encoder_input_init(nullptr, sizeof(input)) == FLEXAVATAR_ERROR_NULL_POINTER);
  CHECK(flexavatar_encoder_input_init(&input, 8) == FLEXAVATAR_ERROR_INVALID_SIZE);
  CHECK(std::string(flexavatar_last_error()).find("struct_size is 8") != std::string::npos);
}

// A program built against an older header has a shorter struct: init writes its bytes and not one more (the
// guard bytes after it stay; under ASan a heap block of exactly that size would trap on a longer write).
TEST_CASE(init_functions_never_write_past_the_callers_struct_size) {
  const size_t v1 = offsetof(flexavatar_runtime_options, rasterizer);   // the first published options struct
  std::vector<unsigned char> block(v1 + 16, 0xCD);
  auto* old_options = reinterpret_cast<flexavatar_runtime_options*>(block.data());
  CHECK(flexavatar_runtime_options_init(old_options, uint32_t(v1)) == FLEXAVATAR_OK);
  CHECK(old_options->struct_size == v1 && old_options->device == FLEXAVATAR_DEVICE_AUTO);
  CHECK(old_options->verify == FLEXAVATAR_VERIFY_FULL && old_options->cuda_device == 0);
  for (size_t i = v1; i < block.size(); ++i) CHECK(block[i] == 0xCD);
  std::unique_ptr<unsigned char[]> exact(new unsigned char[v1]);
  CHECK(flexavatar_runtime_options_init(reinterpret_cast<flexavatar_runtime_options*>(exact.get()), uint32_t(v1)) ==
        FLEXAVATAR_OK);
  // ... and accepted by create: the fields it lacks keep their defaults
  flexavatar_runtime* rt = nullptr;
  CHECK(flexavatar_runtime_create("/nonexistent/bundle", old_options, &rt) == FLEXAVATAR_ERROR_BUNDLE_FILE_MISSING);
  // a newer caller's longer struct: the known fields, then zeros
  std::vector<unsigned char> longer(sizeof(flexavatar_runtime_options) + 8, 0xCD);
  CHECK(flexavatar_runtime_options_init(reinterpret_cast<flexavatar_runtime_options*>(longer.data()),
                                        uint32_t(longer.size())) == FLEXAVATAR_OK);
  for (size_t i = sizeof(flexavatar_runtime_options); i < longer.size(); ++i) CHECK(longer[i] == 0);
  CHECK(reinterpret_cast<flexavatar_runtime_options*>(longer.data())->struct_size == longer.size());
  CHECK(flexavatar_runtime_options_init(nullptr, sizeof(flexavatar_runtime_options)) == FLEXAVATAR_ERROR_NULL_POINTER);
  CHECK(flexavatar_runtime_options_init(old_options, 3) == FLEXAVATAR_ERROR_INVALID_SIZE);
}

// The GUI's head pose (runtime/expressions.py head_pose_matrix) through the C API: a rotation whose 6D rows
// need both normalising and Gram–Schmidt, the camera moved by the inverse pose, and every bad input.
TEST_CASE(head_pose_follows_the_6d_rotation_and_moves_the_camera_inversely) {
  std::vector<float> code(135, 0.f);
  const float r6[6] = {0.f, -2.f, 0.f, 1.f, 0.5f, 0.f};   // rows b1 = (0, -1, 0), b2 = (1, 0, 0), b1 x b2 = (0, 0, 1)
  for (int i = 0; i < 6; ++i) code[126 + i] = r6[i];
  code[132] = 0.1f, code[133] = -0.2f, code[134] = 0.3f;
  const float want[16] = {0, -1, 0, 0.1f, 1, 0, 0, -0.2f, 0, 0, 1, 0.3f, 0, 0, 0, 1};
  float m[16];
  CHECK(flexavatar_expression_head_pose(code.data(), 135, m) == FLEXAVATAR_OK);
  for (int i = 0; i < 16; ++i) CHECK_NEAR(m[i], want[i], 1e-7f);

  // posed camera = M^-1 · camera: M · posed gives the camera back, and it stays rigid
  flexavatar_camera camera;
  std::memset(&camera, 0, sizeof(camera));
  const float c2w[16] = {1, 0, 0, 0.05f, 0, -1, 0, 0.02f, 0, 0, -1, 1, 0, 0, 0, 1};
  std::memcpy(camera.cam2world, c2w, sizeof(c2w));
  CHECK(flexavatar_camera_apply_head_pose(&camera, code.data(), 135) == FLEXAVATAR_OK);
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 4; ++j) {
      double back = 0;
      for (int k = 0; k < 4; ++k) back += double(want[i * 4 + k]) * double(camera.cam2world[k * 4 + j]);
      CHECK_NEAR(back, double(c2w[i * 4 + j]), 1e-6);
    }
  }
  CHECK_NEAR(camera.cam2world[3], 0.02f + 0.2f, 1e-6f);      // position R^T (c - t): x = c_y - t_y
  CHECK_NEAR(camera.cam2world[7], -(0.05f - 0.1f), 1e-6f);   //                       y = -(c_x - t_x)
  CHECK_NEAR(camera.cam2world[11], 1.f - 0.3f, 1e-6f);       //                       z = c_z - t_z

  // bad input: a status naming the problem, and nothing written
  float untouched[16];
  std::fill(untouched, untouched + 16, 7.f);
  CHECK(flexavatar_expression_head_pose(code.data(), 134, untouched) == FLEXAVATAR_ERROR_INVALID_SIZE);
  CHECK(std::string(flexavatar_last_error()).find("expected 135") != std::string::npos);
  CHECK(flexavatar_expression_head_pose(nullptr, 135, untouched) == FLEXAVATAR_ERROR_NULL_POINTER);
  CHECK(flexavatar_expression_head_pose(code.data(), 135, nullptr) == FLEXAVATAR_ERROR_NULL_POINTER);
  CHECK(flexavatar_camera_apply_head_pose(nullptr, code.data(), 135) == FLEXAVATAR_ERROR_NULL_POINTER);
  std::vector<float> zero_rotation(code);
  std::fill(zero_rotation.begin() + 126, zero_rotation.begin() + 132, 0.f);
  CHECK(flexavatar_expression_head_pose(zero_rotation.data(), 135, untouched) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  CHECK(std::string(flexavatar_last_error()).find("6D rotation") != std::string::npos);
  std::vector<float> parallel(code);
  parallel[129] = 0.f, parallel[130] = 3.f, parallel[131] = 0.f;   // second vector along the first
  const flexavatar_camera before = camera;
  CHECK(flexavatar_camera_apply_head_pose(&camera, parallel.data(), 135) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  CHECK(std::memcmp(&before, &camera, sizeof(camera)) == 0);   // untouched on error
  std::vector<float> nan_translation(code);
  nan_translation[133] = std::nanf("");
  CHECK(flexavatar_expression_head_pose(nan_translation.data(), 135, untouched) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  CHECK(std::string(flexavatar_last_error()).find("expression[133]") != std::string::npos);
  for (float v : untouched) CHECK(v == 7.f);
}

namespace {

flexavatar_status create_cpu(const fs::path& dir, flexavatar_runtime** rt) {
  flexavatar_runtime_options options;
  flexavatar_runtime_options_init(&options, sizeof(options));
  options.device = FLEXAVATAR_DEVICE_CPU;
  options.rasterizer = FLEXAVATAR_RASTERIZER_CPU;
  options.num_threads = 1;
  return flexavatar_runtime_create(dir.u8string().c_str(), &options, rt);
}

}  // namespace

// The tiny bundle (tests/runtime/tiny_onnx.h) loads and runs: the live-runtime tests below rely on it.
TEST_CASE(c_api_tiny_bundle_decodes_its_constant_gaussians) {
  const fs::path dir = tiny_bundle("tiny");
  flexavatar_runtime* rt = nullptr;
  CHECK(create_cpu(dir, &rt) == FLEXAVATAR_OK && rt != nullptr);
  flexavatar_runtime_info info{};
  info.struct_size = sizeof(info);
  CHECK(flexavatar_runtime_get_info(rt, &info) == FLEXAVATAR_OK);
  CHECK(info.num_gaussians == 4 && info.code_dim == 8 && info.image_size == 64);
  std::vector<float> code(32, 0.f), expression(135, 0.f);
  CHECK(flexavatar_runtime_set_avatar_code(rt, code.data(), 32) == FLEXAVATAR_OK);
  flexavatar_gaussians g{};
  CHECK(flexavatar_runtime_decode(rt, expression.data(), 135, &g) == FLEXAVATAR_OK);
  CHECK(g.num_gaussians == 4 && g.opacities && g.opacities[3] == 0.5f && g.quats && g.quats[4] == 1.f);
  flexavatar_runtime_destroy(rt);
  fs::remove_all(dir);
}

// A bundle and an avatar code under non-ASCII names: the C API's paths are UTF-8, and on Windows they reach the
// system as UTF-16 (_wfopen, ONNX Runtime's wide model path), not through the ANSI code page, which has no 头.
TEST_CASE(c_api_paths_are_utf8) {
  const fs::path tiny = tiny_bundle("utf8");
  const std::string name = "flexavatar_b\xc3\xbcndel_\xe5\xa4\xb4_" + std::to_string(::getpid());  // bündel_头
  const fs::path dir = tiny.parent_path() / fs::u8path(name);
  fs::remove_all(dir);
  fs::rename(tiny, dir);
  const fs::path code_path = dir / fs::u8path("code_\xc3\xbc.npy");
  write_file(code_path, npy_bytes({4, 1, 8}, std::vector<float>(32, 0.f)));
  flexavatar_runtime* rt = nullptr;
  CHECK(create_cpu(dir, &rt) == FLEXAVATAR_OK && rt != nullptr);
  CHECK(flexavatar_runtime_load_avatar_code(rt, code_path.u8string().c_str()) == FLEXAVATAR_OK);
  std::vector<float> expression(135, 0.f);
  flexavatar_gaussians g{};
  CHECK(flexavatar_runtime_decode(rt, expression.data(), 135, &g) == FLEXAVATAR_OK && g.opacities[3] == 0.5f);
  flexavatar_runtime_destroy(rt);
  fs::remove_all(dir);
}

// The numerics check on a live runtime: a check set holding the runtime's own Gaussians passes exactly; a moved
// reference value shows as that output's error; the runtime's avatar code (or its absence) survives the check.
TEST_CASE(c_api_check_numerics_compares_with_the_check_set_and_restores_the_code) {
  const fs::path dir = tiny_bundle("numerics");
  flexavatar_runtime* rt = nullptr;
  CHECK(create_cpu(dir, &rt) == FLEXAVATAR_OK);
  flexavatar_numerics n{};
  n.struct_size = sizeof(n);
  CHECK(flexavatar_runtime_check_numerics(rt, &n) == FLEXAVATAR_ERROR_UNAVAILABLE &&
        mentions(Status(StatusCode::kUnavailable, flexavatar_last_error()), "no numerics check set"));
  // the reference: what this runtime decodes for the check's code and two expressions
  const std::vector<float> check_code(32, 0.5f);
  std::vector<float> expressions(2 * 135, 0.f);
  expressions[135 + 7] = 0.3f;
  CHECK(flexavatar_runtime_set_avatar_code(rt, check_code.data(), 32) == FLEXAVATAR_OK);
  std::vector<float> fields[5];
  const int widths[5] = {3, 4, 3, 1, 3};
  for (int e = 0; e < 2; ++e) {
    flexavatar_gaussians g{};
    CHECK(flexavatar_runtime_decode(rt, expressions.data() + e * 135, 135, &g) == FLEXAVATAR_OK);
    const float* got[5] = {g.means, g.quats, g.scales, g.opacities, g.sh0};
    for (int i = 0; i < 5; ++i) fields[i].insert(fields[i].end(), got[i], got[i] + 4 * widths[i]);
  }
  flexavatar_camera camera{};
  CHECK(flexavatar_runtime_default_camera(rt, &camera) == FLEXAVATAR_OK);
  flexavatar_runtime_destroy(rt);

  const std::string model_bytes = [&] {
    std::ifstream in(dir / "decoder.fp32.onnx", std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }();
  auto write_check = [&](const std::vector<float>& means) {
    const std::string npz = npz_bytes({{"code.npy", npy_bytes({1, 4, 8}, check_code)},
                                       {"expressions.npy", npy_bytes({2, 135}, expressions)},
                                       {"means.npy", npy_bytes({2, 4, 3}, means)},
                                       {"quats.npy", npy_bytes({2, 4, 4}, fields[1])},
                                       {"scales.npy", npy_bytes({2, 4, 3}, fields[2])},
                                       {"opacities.npy", npy_bytes({2, 4}, fields[3])},
                                       {"sh0.npy", npy_bytes({2, 4, 3}, fields[4])},
                                       {"cam2world.npy", npy_bytes({1, 4, 4}, std::vector<float>(camera.cam2world,
                                                                                                camera.cam2world + 16))},
                                       {"intrinsics.npy", npy_bytes({1, 3, 3}, std::vector<float>(camera.intrinsics,
                                                                                                 camera.intrinsics + 9))}});
    write_file(dir / "check.npz", npz);
    const std::string check = R"("check": {"file": )" +
                              file_json("check.npz", sha256_hex(npz.data(), npz.size()), long(npz.size())) +
                              R"(, "n_expressions": 2, "description": "d"}, "avatar": null)";
    write_file(dir / "manifest.json",
               replace_once(valid_manifest("decoder.fp32.onnx", sha256_hex(model_bytes.data(), model_bytes.size()),
                                           long(model_bytes.size())),
                            R"("avatar": null)", check));
  };

  write_check(fields[0]);
  CHECK(create_cpu(dir, &rt) == FLEXAVATAR_OK);
  const std::vector<float> own_code(32, -0.25f);
  CHECK(flexavatar_runtime_set_avatar_code(rt, own_code.data(), 32) == FLEXAVATAR_OK);
  flexavatar_camera view_camera{};
  flexavatar_frame view{};
  const std::vector<float> zero_expression(135, 0.f);
  CHECK(flexavatar_runtime_default_camera(rt, &view_camera) == FLEXAVATAR_OK &&
        flexavatar_runtime_render(rt, zero_expression.data(), 135, &view_camera, &view) == FLEXAVATAR_OK);
  n = flexavatar_numerics{};
  n.struct_size = sizeof(n);
  CHECK(flexavatar_runtime_check_numerics(rt, &n) == FLEXAVATAR_OK);
  // the check decoded its own expressions: the frame rendered before it is gone, not replaced by the check's
  CHECK(flexavatar_runtime_render_view(rt, &view_camera, &view) == FLEXAVATAR_ERROR_NO_FRAME);
  CHECK(n.passed == 1 && n.num_expressions == 2 && std::isinf(n.psnr_db) && n.target_db == 60.0);
  CHECK(n.encoder_checked == 0 && n.encoder_psnr_db == 0.0);  // the tiny bundle has no encoder
  for (double err : n.max_abs_error) CHECK(err == 0.0);
  std::vector<float> code_after(32);
  CHECK(flexavatar_runtime_get_avatar_code(rt, code_after.data(), 32) == FLEXAVATAR_OK && code_after == own_code);
  n.struct_size = 8;
  CHECK(flexavatar_runtime_check_numerics(rt, &n) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  flexavatar_runtime_destroy(rt);

  std::vector<float> moved = fields[0];
  moved[3 * 4 + 1] += 0.5f;  // expression 1, Gaussian 0, y
  write_check(moved);
  CHECK(create_cpu(dir, &rt) == FLEXAVATAR_OK);  // no code of its own: none after the check either
  n = flexavatar_numerics{};
  n.struct_size = sizeof(n);
  CHECK(flexavatar_runtime_check_numerics(rt, &n) == FLEXAVATAR_OK);
  CHECK(std::fabs(n.max_abs_error[0] - 0.5) < 1e-6 && n.max_abs_error[1] == 0.0 && n.max_abs_error[4] == 0.0);
  std::vector<float> expression(135, 0.f);
  flexavatar_gaussians g{};
  CHECK(flexavatar_runtime_decode(rt, expression.data(), 135, &g) == FLEXAVATAR_ERROR_NO_AVATAR_CODE);
  flexavatar_runtime_destroy(rt);
  fs::remove_all(dir);
}

// One decode, several views: render_view rasterizes the last decoded Gaussians from another camera, as a render
// from that camera would; there is no frame to view before a decode and after a new avatar code.
TEST_CASE(c_api_render_view_shows_the_last_decoded_frame_from_another_camera) {
  const fs::path dir = tiny_bundle("views");
  flexavatar_runtime* rt = nullptr;
  CHECK(create_cpu(dir, &rt) == FLEXAVATAR_OK);
  flexavatar_camera left{}, right{};
  CHECK(flexavatar_runtime_default_camera(rt, &left) == FLEXAVATAR_OK);
  left.width = left.height = 32;
  right = left;
  left.cam2world[3] -= 0.003f;  // row-major: x of the camera centre; the Gaussians (at the origin) move apart
  right.cam2world[3] += 0.003f;
  const size_t floats = 32 * 32 * 3;
  auto rgb = [&](const flexavatar_frame& f) { return std::vector<float>(f.rgb, f.rgb + floats); };
  flexavatar_frame f{};
  CHECK(flexavatar_runtime_render_view(rt, &left, &f) == FLEXAVATAR_ERROR_NO_FRAME);  // no code yet
  std::vector<float> code(32, 0.f), expression(135, 0.f);
  CHECK(flexavatar_runtime_set_avatar_code(rt, code.data(), 32) == FLEXAVATAR_OK);
  CHECK(flexavatar_runtime_render_view(rt, &left, &f) == FLEXAVATAR_ERROR_NO_FRAME);  // nothing decoded yet
  CHECK(std::string(flexavatar_last_error()).find("no decoded frame") != std::string::npos);

  CHECK(flexavatar_runtime_render(rt, expression.data(), 135, &left, &f) == FLEXAVATAR_OK);
  const std::vector<float> left_rendered = rgb(f);
  CHECK(flexavatar_runtime_render_view(rt, &right, &f) == FLEXAVATAR_OK && f.width == 32 && f.rgba != nullptr);
  const std::vector<float> right_view = rgb(f);
  CHECK(right_view != left_rendered);                                                   // the views differ
  CHECK(flexavatar_runtime_render_view(rt, &left, &f) == FLEXAVATAR_OK && rgb(f) == left_rendered);
  CHECK(flexavatar_runtime_render(rt, expression.data(), 135, &right, &f) == FLEXAVATAR_OK && rgb(f) == right_view);
  flexavatar_camera wide = left;
  wide.width = 48;  // another frame size from the same Gaussians
  CHECK(flexavatar_runtime_render_view(rt, &wide, &f) == FLEXAVATAR_OK && f.width == 48 && f.height == 32);
  flexavatar_camera bad = left;
  bad.width = 0;
  CHECK(flexavatar_runtime_render_view(rt, &bad, &f) == FLEXAVATAR_ERROR_INVALID_SIZE);
  CHECK(flexavatar_runtime_render_view(rt, nullptr, &f) == FLEXAVATAR_ERROR_NULL_POINTER);
  CHECK(flexavatar_runtime_render_view(rt, &left, nullptr) == FLEXAVATAR_ERROR_NULL_POINTER);
  flexavatar_device_frame d{};
  d.struct_size = sizeof(d);
  CHECK(flexavatar_runtime_render_view_device(rt, &left, &d) == FLEXAVATAR_ERROR_UNAVAILABLE);  // CPU rasterizer

  flexavatar_gaussians g{};
  CHECK(flexavatar_runtime_decode(rt, expression.data(), 135, &g) == FLEXAVATAR_OK);   // a decode is a frame too
  CHECK(flexavatar_runtime_render_view(rt, &right, &f) == FLEXAVATAR_OK && rgb(f) == right_view);
  CHECK(flexavatar_runtime_set_avatar_code(rt, code.data(), 32) == FLEXAVATAR_OK);     // a new code: no frame
  CHECK(flexavatar_runtime_render_view(rt, &left, &f) == FLEXAVATAR_ERROR_NO_FRAME);
  CHECK(flexavatar_runtime_render(rt, expression.data(), 135, &left, &f) == FLEXAVATAR_OK);
  std::vector<float> broken = expression;
  broken[7] = std::nanf("");
  CHECK(flexavatar_runtime_render(rt, broken.data(), 135, &left, &f) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  CHECK(flexavatar_runtime_render_view(rt, &right, &f) == FLEXAVATAR_ERROR_NO_FRAME);  // not the frame before it
  CHECK(flexavatar_runtime_render(rt, expression.data(), 135, &left, &f) == FLEXAVATAR_OK);
  CHECK(flexavatar_runtime_render(rt, expression.data(), 135, &bad, &f) == FLEXAVATAR_ERROR_INVALID_SIZE);
  CHECK(flexavatar_runtime_render_view(rt, &right, &f) == FLEXAVATAR_ERROR_NO_FRAME);
  CHECK(std::string(flexavatar_status_name(FLEXAVATAR_ERROR_NO_FRAME)) == "no frame");
  flexavatar_runtime_destroy(rt);
  CHECK(flexavatar_runtime_render_view(rt, &left, &f) == FLEXAVATAR_ERROR_INVALID_HANDLE);
  fs::remove_all(dir);
}

// The size arithmetic on conventions.image_size (3·S·S floats for the photo) must not see 2^32.
TEST_CASE(c_api_create_checks_the_image_size) {
  for (const char* size : {"4294967296", "0", "16385"}) {
    const fs::path dir = tiny_bundle("image_size", [&](const std::string& text) {
      return replace_once(text, R"("image_size": 64)", std::string(R"("image_size": )") + size);
    });
    flexavatar_runtime* rt = nullptr;
    CHECK(create_cpu(dir, &rt) == FLEXAVATAR_ERROR_BUNDLE_INVALID && rt == nullptr);
    CHECK(std::string(flexavatar_last_error()).find("image_size is " + std::string(size)) != std::string::npos);
    flexavatar_runtime_destroy(rt);
    fs::remove_all(dir);
  }
}

// A handle is not an address: a runtime created after another was destroyed never revives the old handle.
TEST_CASE(c_api_destroyed_handles_stay_invalid_after_new_runtimes) {
  const fs::path dir = tiny_bundle("aba");
  std::vector<flexavatar_runtime*> destroyed;
  flexavatar_camera cam;
  int revived = 0;  // with addresses as handles, malloc gave a freed one back in ~1 of 6 creations
  for (int i = 0; i < 100; ++i) {
    flexavatar_runtime* rt = nullptr;
    CHECK(create_cpu(dir, &rt) == FLEXAVATAR_OK);
    revived += std::find(destroyed.begin(), destroyed.end(), rt) != destroyed.end();
    for (flexavatar_runtime* old : destroyed)
      revived += flexavatar_runtime_default_camera(old, &cam) != FLEXAVATAR_ERROR_INVALID_HANDLE;
    CHECK(flexavatar_runtime_default_camera(rt, &cam) == FLEXAVATAR_OK);
    flexavatar_runtime_destroy(rt);
    destroyed.push_back(rt);
  }
  CHECK(revived == 0);
  fs::remove_all(dir);
}

// Destroy while other threads call the same handle: each call either completes or gets INVALID_HANDLE; no use
// after free, no hang (run under ASan). Destroy returns after the runtime is gone; the handle stays invalid.
TEST_CASE(c_api_destroy_racing_calls_on_the_same_handle_is_safe) {
  const fs::path dir = tiny_bundle("race");
  for (int iter = 0; iter < 20; ++iter) {
    flexavatar_runtime* rt = nullptr;
    CHECK(create_cpu(dir, &rt) == FLEXAVATAR_OK);
    std::atomic<int> started{0}, bad_status{0};
    std::vector<std::thread> callers;
    for (int t = 0; t < 4; ++t) {
      callers.emplace_back([&, t] {
        started++;
        flexavatar_runtime_info info{};
        info.struct_size = sizeof(info);
        flexavatar_camera cam;
        for (;;) {
          const flexavatar_status s =
              t % 2 ? flexavatar_runtime_get_info(rt, &info) : flexavatar_runtime_default_camera(rt, &cam);
          if (s == FLEXAVATAR_ERROR_INVALID_HANDLE) break;
          if (s != FLEXAVATAR_OK) {
            bad_status++;
            break;
          }
        }
      });
    }
    while (started < 4) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    flexavatar_runtime_destroy(rt);
    for (auto& t : callers) t.join();
    CHECK(bad_status == 0);
    flexavatar_camera cam;
    CHECK(flexavatar_runtime_default_camera(rt, &cam) == FLEXAVATAR_ERROR_INVALID_HANDLE);
    flexavatar_runtime_destroy(rt);  // again: ignored
  }
  fs::remove_all(dir);
}

namespace {

// A tiny bundle whose decoder is listed as the portable file (format onnx, decoder.fp32.onnx), the fused one
// (format onnx-ort, decoder.fp32.ort.onnx), or both: the same tiny graph in each file.
fs::path fused_bundle(const std::string& name, bool portable, bool fused) {
  const fs::path dir = scratch(name);
  const std::string model = tiny_onnx::decoder(4, 4, 8, 135);
  std::string text = valid_manifest("decoder.fp32.onnx", sha256_hex(model.data(), model.size()), long(model.size()));
  const size_t start = text.find(R"({"name": "decoder.fp32.onnx")");
  const size_t end = text.rfind(']', text.find(R"(  "avatar")"));
  const std::string artifact = text.substr(start, end - start);
  std::string ort = replace_once(artifact, R"("name": "decoder.fp32.onnx")", R"("name": "decoder.fp32.ort.onnx")");
  ort = replace_once(ort, R"("format": "onnx")", R"("format": "onnx-ort")");
  ort = replace_once(ort, R"("path": "decoder.fp32.onnx")", R"("path": "decoder.fp32.ort.onnx")");
  text.replace(start, end - start, portable && fused ? artifact + ", " + ort : fused ? ort : artifact);
  if (portable) write_file(dir / "decoder.fp32.onnx", model);
  if (fused) write_file(dir / "decoder.fp32.ort.onnx", model);
  write_file(dir / "manifest.json", text);
  return dir;
}

// A CPU runtime with this fused_decoders and verify mode; on success, the decoder file it reports.
flexavatar_status create_fused(const fs::path& dir, int fused, std::string* decoder_file,
                               int verify = FLEXAVATAR_VERIFY_FULL, uint32_t struct_size = 0) {
  flexavatar_runtime_options options;
  flexavatar_runtime_options_init(&options, sizeof(options));
  options.device = FLEXAVATAR_DEVICE_CPU;
  options.num_threads = 1;
  options.verify = verify;
  options.fused_decoders = fused;
  if (struct_size) options.struct_size = struct_size;
  flexavatar_runtime* rt = nullptr;
  const flexavatar_status s = flexavatar_runtime_create(dir.u8string().c_str(), &options, &rt);
  if (s == FLEXAVATAR_OK) {
    flexavatar_runtime_info info{};
    info.struct_size = sizeof(info);
    CHECK(flexavatar_runtime_get_info(rt, &info) == FLEXAVATAR_OK);
    *decoder_file = info.decoder_file;
    std::vector<float> code(32, 0.f), expression(135, 0.f);
    flexavatar_gaussians g{};
    CHECK(flexavatar_runtime_set_avatar_code(rt, code.data(), 32) == FLEXAVATAR_OK);
    CHECK(flexavatar_runtime_decode(rt, expression.data(), 135, &g) == FLEXAVATAR_OK && g.opacities[0] == 0.5f);
  } else {
    CHECK(rt == nullptr);
  }
  flexavatar_runtime_destroy(rt);
  return s;
}

}  // namespace

// options.fused_decoders on the CPU (flexavatar.h, as runtime/engines.py ort_formats): AUTO runs the portable
// file first, ON the fused one, OFF only the portable one; a bundle with only the fused file runs it (AUTO, ON)
// and OFF says why it cannot.
TEST_CASE(c_api_fused_decoders_pick_the_decoder_file) {
  const fs::path both = fused_bundle("fused_both", true, true);
  std::string file;
  CHECK(create_fused(both, FLEXAVATAR_FUSED_DECODERS_AUTO, &file) == FLEXAVATAR_OK && file == "decoder.fp32.onnx");
  CHECK(create_fused(both, FLEXAVATAR_FUSED_DECODERS_ON, &file) == FLEXAVATAR_OK && file == "decoder.fp32.ort.onnx");
  CHECK(create_fused(both, FLEXAVATAR_FUSED_DECODERS_OFF, &file) == FLEXAVATAR_OK && file == "decoder.fp32.onnx");
  // the file reported is the file opened: with the portable file garbage (not verified), ON still runs and OFF
  // fails in ONNX Runtime on that file
  write_file(both / "decoder.fp32.onnx", std::string(64, '\x7f'));
  file.clear();
  CHECK(create_fused(both, FLEXAVATAR_FUSED_DECODERS_ON, &file, FLEXAVATAR_VERIFY_NONE) == FLEXAVATAR_OK &&
        file == "decoder.fp32.ort.onnx");
  CHECK(create_fused(both, FLEXAVATAR_FUSED_DECODERS_OFF, &file, FLEXAVATAR_VERIFY_NONE) == FLEXAVATAR_ERROR_MODEL);
  CHECK(std::string(flexavatar_last_error()).find("decoder.fp32.onnx") != std::string::npos);
  fs::remove_all(both);

  const fs::path fused_only = fused_bundle("fused_only", false, true);
  file.clear();
  CHECK(create_fused(fused_only, FLEXAVATAR_FUSED_DECODERS_AUTO, &file) == FLEXAVATAR_OK &&
        file == "decoder.fp32.ort.onnx");
  CHECK(create_fused(fused_only, FLEXAVATAR_FUSED_DECODERS_ON, &file) == FLEXAVATAR_OK &&
        file == "decoder.fp32.ort.onnx");
  CHECK(create_fused(fused_only, FLEXAVATAR_FUSED_DECODERS_OFF, &file) == FLEXAVATAR_ERROR_BUNDLE_INVALID);
  const std::string why = flexavatar_last_error();
  if (why.find("no fp32 ONNX decoder") == std::string::npos ||
      why.find("options.fused_decoders OFF excludes") == std::string::npos ||
      why.find("decoder.fp32.ort.onnx") == std::string::npos)
    harness::fail(__FILE__, __LINE__, "the OFF error does not say why: " + why);
  // a caller whose options struct predates the field gets AUTO, whatever lies beyond its struct_size
  const uint32_t older = uint32_t(offsetof(flexavatar_runtime_options, fused_decoders));
  for (int beyond : {int(FLEXAVATAR_FUSED_DECODERS_OFF), 77}) {
    file.clear();
    CHECK(create_fused(fused_only, beyond, &file, FLEXAVATAR_VERIFY_FULL, older) == FLEXAVATAR_OK &&
          file == "decoder.fp32.ort.onnx");
  }
  fs::remove_all(fused_only);
  // ON on a bundle without a fused file: the portable one
  const fs::path portable_only = fused_bundle("portable_only", true, false);
  CHECK(create_fused(portable_only, FLEXAVATAR_FUSED_DECODERS_ON, &file) == FLEXAVATAR_OK &&
        file == "decoder.fp32.onnx");
  fs::remove_all(portable_only);
}

TEST_CASE(c_api_fused_decoders_is_validated) {
  flexavatar_runtime_options options;
  CHECK(flexavatar_runtime_options_init(&options, sizeof(options)) == FLEXAVATAR_OK);
  CHECK(options.fused_decoders == FLEXAVATAR_FUSED_DECODERS_AUTO);
  flexavatar_runtime* rt = nullptr;
  for (int bad : {3, -1}) {
    options.fused_decoders = bad;
    CHECK(flexavatar_runtime_create("/nonexistent/bundle", &options, &rt) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
    const std::string message = flexavatar_last_error();
    if (message.find("options.fused_decoders is " + std::to_string(bad)) == std::string::npos ||
        message.find("FLEXAVATAR_FUSED_DECODERS_AUTO (0), ON (1) or OFF (2)") == std::string::npos)
      harness::fail(__FILE__, __LINE__, "unexpected message: " + message);
    CHECK(rt == nullptr);
  }
}

// options.precision: INT8 (2) is the last value, 3 an invalid argument naming the choices. INT8 with device CUDA is
// refused before the bundle is read or CUDA touched: the int8 decoders run on ONNX Runtime's CPU provider only.
TEST_CASE(c_api_precision_int8_is_validated) {
  flexavatar_runtime_options options;
  CHECK(flexavatar_runtime_options_init(&options, sizeof(options)) == FLEXAVATAR_OK);
  flexavatar_runtime* rt = nullptr;
  options.precision = 3;
  CHECK(flexavatar_runtime_create("/nonexistent/bundle", &options, &rt) == FLEXAVATAR_ERROR_INVALID_ARGUMENT && !rt);
  std::string message = flexavatar_last_error();
  if (message.find("options.precision is 3") == std::string::npos ||
      message.find("FLEXAVATAR_PRECISION_FP32 (0), FP16 (1) or INT8 (2)") == std::string::npos)
    harness::fail(__FILE__, __LINE__, "unexpected message: " + message);
  options.precision = FLEXAVATAR_PRECISION_INT8;  // accepted: the missing bundle is what fails
  CHECK(flexavatar_runtime_create("/nonexistent/bundle", &options, &rt) == FLEXAVATAR_ERROR_BUNDLE_FILE_MISSING);
  options.device = FLEXAVATAR_DEVICE_CUDA;
  CHECK(flexavatar_runtime_create("/nonexistent/bundle", &options, &rt) == FLEXAVATAR_ERROR_INVALID_ARGUMENT && !rt);
  message = flexavatar_last_error();
  if (message.find("precision int8") == std::string::npos ||
      message.find("CPU provider only") == std::string::npos || message.find("device CUDA") == std::string::npos)
    harness::fail(__FILE__, __LINE__, "unexpected message: " + message);
}

// A bundle whose decoder is labelled int8 (the tiny graph itself is float: the runtime picks files by the manifest):
// precision INT8 runs it on the CPU provider with device CPU and AUTO and reports "int8"; without an fp32 decoder,
// FP32 says what the bundle has.
TEST_CASE(c_api_int8_decoder_runs_on_the_cpu_provider) {
  const fs::path dir = tiny_bundle("int8", [](const std::string& text) {
    return replace_once(replace_once(text, R"("name": "decoder.fp32.onnx")", R"("name": "decoder.int8.onnx")"),
                        R"("precision": "fp32")", R"("precision": "int8")");
  });
  for (int device : {FLEXAVATAR_DEVICE_CPU, FLEXAVATAR_DEVICE_AUTO}) {
    flexavatar_runtime_options options;
    flexavatar_runtime_options_init(&options, sizeof(options));
    options.device = device;
    options.rasterizer = FLEXAVATAR_RASTERIZER_CPU;
    options.num_threads = 1;
    options.precision = FLEXAVATAR_PRECISION_INT8;
    flexavatar_runtime* rt = nullptr;
    CHECK(flexavatar_runtime_create(dir.u8string().c_str(), &options, &rt) == FLEXAVATAR_OK && rt);
    flexavatar_runtime_info info{};
    info.struct_size = sizeof(info);
    CHECK(flexavatar_runtime_get_info(rt, &info) == FLEXAVATAR_OK);
    CHECK(std::string(info.decoder_precision) == "int8");
    CHECK(std::string(info.decoder_provider) == "CPUExecutionProvider" && info.cuda_graphs == 0);
    CHECK(std::string(info.decoder_file) == "decoder.fp32.onnx");
    CHECK(info.ignored_artifacts == 0 && info.ignored_names[0] == '\0');  // every artifact known
    std::vector<float> code(32, 0.f), expression(135, 0.f);
    flexavatar_gaussians g{};
    CHECK(flexavatar_runtime_set_avatar_code(rt, code.data(), 32) == FLEXAVATAR_OK);
    CHECK(flexavatar_runtime_decode(rt, expression.data(), 135, &g) == FLEXAVATAR_OK && g.opacities[3] == 0.5f);
    flexavatar_runtime_destroy(rt);
  }
  flexavatar_runtime* rt = nullptr;
  CHECK(create_cpu(dir, &rt) == FLEXAVATAR_ERROR_BUNDLE_INVALID && !rt);
  const std::string why = flexavatar_last_error();
  if (why.find("no fp32 ONNX decoder") == std::string::npos || why.find("decoder.int8.onnx") == std::string::npos)
    harness::fail(__FILE__, __LINE__, "unexpected message: " + why);
  fs::remove_all(dir);
}

// ---- devices GPU / NPU: ONNX Runtime's providers for GPUs and NPUs without CUDA ----
// choose_host_provider is pure: these lists stand in for what a DirectML / OpenVINO / QNN / CoreML build of ONNX
// Runtime reports (this machine's wheel has the CPU provider only).

namespace {

const std::string kOrtVersion = "1.99.0";
const std::vector<std::string> kGpuOrder = {"DmlExecutionProvider",   "MIGraphXExecutionProvider",
                                            "ROCMExecutionProvider",  "CoreMLExecutionProvider",
                                            "WebGpuExecutionProvider", "OpenVINOExecutionProvider"};
const std::vector<std::string> kNpuOrder = {"QNNExecutionProvider", "VitisAIExecutionProvider",
                                            "CoreMLExecutionProvider", "OpenVINOExecutionProvider"};

std::string option(const HostProvider& p, const std::string& key) {
  for (const auto& [k, v] : p.options)
    if (k == key) return v;
  return "<absent>";
}

HostProvider chosen(HostDevice device, int index, const std::vector<std::string>& available) {
  HostProvider out;
  const Status s = choose_host_provider(device, index, available, kOrtVersion, &out);
  if (!s.ok()) harness::fail(__FILE__, __LINE__, "unexpected error: " + s.message());
  return out;
}

}  // namespace

// The order of preference is Python's ORT_HOST_PROVIDERS: with every provider present the first wins, and taking it
// away gives the next. The CPU provider (and CUDA's) never stand in for a GPU / NPU one.
TEST_CASE(host_provider_order_is_the_python_runtimes) {
  CHECK(host_provider_names(HostDevice::kGpu) == kGpuOrder);
  CHECK(host_provider_names(HostDevice::kNpu) == kNpuOrder);
  for (const auto& [device, order] : {std::make_pair(HostDevice::kGpu, kGpuOrder),
                                      std::make_pair(HostDevice::kNpu, kNpuOrder)}) {
    std::vector<std::string> available(order.rbegin(), order.rend());  // the library's own order does not matter
    available.insert(available.begin(), "CPUExecutionProvider");
    available.push_back("CUDAExecutionProvider");
    for (const auto& expected : order) {
      const HostProvider p = chosen(device, 0, available);
      if (p.name != expected) harness::fail(__FILE__, __LINE__, "chose " + p.name + ", expected " + expected);
      available.erase(std::find(available.begin(), available.end(), expected));
    }
  }
}

// Options as Python's: the device index as "device_id" (DirectML, MIGraphX, ROCm; "0" too), OpenVINO's device_type
// "GPU" / "GPU.N" / "NPU.N", CoreML's MLProgram on the GPU or the Neural Engine, QNN's HTP backend.
TEST_CASE(host_provider_options_point_it_at_the_device) {
  using Options = std::vector<std::pair<std::string, std::string>>;
  CHECK((chosen(HostDevice::kGpu, 0, {"DmlExecutionProvider"}).options == Options{{"device_id", "0"}}));
  CHECK((chosen(HostDevice::kGpu, 2, {"DmlExecutionProvider"}).options == Options{{"device_id", "2"}}));
  CHECK(option(chosen(HostDevice::kGpu, 1, {"MIGraphXExecutionProvider"}), "device_id") == "1");
  CHECK(option(chosen(HostDevice::kGpu, 3, {"ROCMExecutionProvider"}), "device_id") == "3");
  CHECK((chosen(HostDevice::kGpu, 0, {"OpenVINOExecutionProvider"}).options == Options{{"device_type", "GPU"}}));
  CHECK((chosen(HostDevice::kGpu, 1, {"OpenVINOExecutionProvider"}).options == Options{{"device_type", "GPU.1"}}));
  CHECK((chosen(HostDevice::kNpu, 0, {"OpenVINOExecutionProvider"}).options == Options{{"device_type", "NPU"}}));
  CHECK((chosen(HostDevice::kNpu, 2, {"OpenVINOExecutionProvider"}).options == Options{{"device_type", "NPU.2"}}));
  CHECK((chosen(HostDevice::kGpu, 0, {"CoreMLExecutionProvider"}).options ==
         Options{{"ModelFormat", "MLProgram"}, {"MLComputeUnits", "CPUAndGPU"}}));
  CHECK((chosen(HostDevice::kNpu, 0, {"CoreMLExecutionProvider"}).options ==
         Options{{"ModelFormat", "MLProgram"}, {"MLComputeUnits", "CPUAndNeuralEngine"}}));
  CHECK((chosen(HostDevice::kNpu, 0, {"QNNExecutionProvider"}).options == Options{{"backend_type", "htp"}}));
  CHECK(chosen(HostDevice::kGpu, 0, {"WebGpuExecutionProvider"}).options.empty());
  CHECK(chosen(HostDevice::kNpu, 0, {"VitisAIExecutionProvider"}).options.empty());
}

// A provider that picks its device itself takes no index: 1 is an invalid argument naming it (as Python's
// RuntimeArgumentError), decided by the provider that would run (a later one that takes an index does not matter).
TEST_CASE(host_provider_that_picks_its_device_refuses_an_index) {
  for (const auto& [device, name] : {std::make_pair(HostDevice::kGpu, "CoreMLExecutionProvider"),
                                     std::make_pair(HostDevice::kGpu, "WebGpuExecutionProvider"),
                                     std::make_pair(HostDevice::kNpu, "QNNExecutionProvider"),
                                     std::make_pair(HostDevice::kNpu, "VitisAIExecutionProvider"),
                                     std::make_pair(HostDevice::kNpu, "CoreMLExecutionProvider")}) {
    HostProvider out;
    const Status s = choose_host_provider(device, 1, {name, "OpenVINOExecutionProvider"}, kOrtVersion, &out);
    CHECK(s.code() == StatusCode::kInvalidArgument && out.name.empty());
    if (!mentions(s, name) || !mentions(s, "is 1") || !mentions(s, "picks its device itself"))
      harness::fail(__FILE__, __LINE__, "unexpected message: " + s.message());
    CHECK(chosen(device, 0, {name, "OpenVINOExecutionProvider"}).name == name);  // index 0: fine
  }
}

// No provider for the device: kUnavailable naming what was looked for, what the library has and where to get one;
// a CUDA build asked for a GPU is told to use device CUDA. A provider of the other device does not count.
TEST_CASE(host_provider_absent_is_unavailable_and_says_what_there_is) {
  HostProvider out;
  Status s = choose_host_provider(HostDevice::kGpu, 0, {"AzureExecutionProvider", "CPUExecutionProvider"},
                                  kOrtVersion, &out);
  CHECK(s.code() == StatusCode::kUnavailable && out.name.empty());
  if (!mentions(s, "device GPU") || !mentions(s, "1.99.0") ||
      !mentions(s, "looked for DmlExecutionProvider, MIGraphXExecutionProvider, ROCMExecutionProvider, "
                   "CoreMLExecutionProvider, WebGpuExecutionProvider, OpenVINOExecutionProvider") ||
      !mentions(s, "it has AzureExecutionProvider, CPUExecutionProvider") || !mentions(s, "DirectML"))
    harness::fail(__FILE__, __LINE__, "unexpected message: " + s.message());
  s = choose_host_provider(HostDevice::kNpu, 3, {"DmlExecutionProvider", "CPUExecutionProvider"}, kOrtVersion, &out);
  CHECK(s.code() == StatusCode::kUnavailable);  // not kInvalidArgument: there is no provider to judge the index by
  if (!mentions(s, "device NPU") ||
      !mentions(s, "looked for QNNExecutionProvider, VitisAIExecutionProvider, CoreMLExecutionProvider, "
                   "OpenVINOExecutionProvider") ||
      !mentions(s, "it has DmlExecutionProvider, CPUExecutionProvider") || !mentions(s, "QNN (Snapdragon"))
    harness::fail(__FILE__, __LINE__, "unexpected message: " + s.message());
  s = choose_host_provider(HostDevice::kGpu, 0, {"CUDAExecutionProvider", "CPUExecutionProvider"}, kOrtVersion, &out);
  CHECK(s.code() == StatusCode::kUnavailable && mentions(s, "use device CUDA"));
  s = choose_host_provider(HostDevice::kGpu, 0, {}, kOrtVersion, &out);
  CHECK(s.code() == StatusCode::kUnavailable && mentions(s, "it has none"));
}

// Each provider of the table through ONNX Runtime's real entry point for it, on this CPU-only library: adding it
// fails (it is not in this build) and that is kUnavailable naming the provider, never a session on the CPU.
TEST_CASE(host_provider_that_cannot_be_added_is_unavailable_not_a_cpu_session) {
  const fs::path dir = tiny_bundle("hostep");
  std::vector<std::string> available;
  std::string version;
  CHECK(ort_available_providers(&available, &version).ok() && !version.empty());
  CHECK(std::find(available.begin(), available.end(), "CPUExecutionProvider") != available.end());
  for (HostDevice device : {HostDevice::kGpu, HostDevice::kNpu}) {
    for (const auto& name : host_provider_names(device)) {
      if (std::find(available.begin(), available.end(), name) != available.end()) continue;  // a real one: not here
      SessionConfig config;
      config.num_threads = 1;
      config.host_provider = chosen(device, 0, {name});
      std::unique_ptr<OrtModel> model;
      const Status s = OrtModel::open((dir / "decoder.fp32.onnx").string(), config, &model);
      CHECK(s.code() == StatusCode::kUnavailable && !model);
      if (!mentions(s, name)) harness::fail(__FILE__, __LINE__, name + ": unexpected message: " + s.message());
    }
  }
  fs::remove_all(dir);
}

// The C API: devices GPU (3) and NPU (4) are accepted values, 5 is not; on this library (CPU provider only) both are
// FLEXAVATAR_ERROR_UNAVAILABLE naming what was looked for and what there is, before the bundle is read; int8 on them
// is an invalid argument first (made for the CPU provider).
TEST_CASE(c_api_devices_gpu_and_npu_are_unavailable_on_a_cpu_only_onnx_runtime) {
  flexavatar_runtime_options options;
  CHECK(flexavatar_runtime_options_init(&options, sizeof(options)) == FLEXAVATAR_OK);
  flexavatar_runtime* rt = nullptr;
  options.device = 5;
  CHECK(flexavatar_runtime_create("/nonexistent/bundle", &options, &rt) == FLEXAVATAR_ERROR_INVALID_ARGUMENT && !rt);
  std::string message = flexavatar_last_error();
  if (message.find("options.device is 5") == std::string::npos ||
      message.find("GPU (3) or NPU (4)") == std::string::npos)
    harness::fail(__FILE__, __LINE__, "unexpected message: " + message);

  const fs::path dir = tiny_bundle("gpu_npu");
  for (const auto& [device, looked_for] : {std::make_pair(int(FLEXAVATAR_DEVICE_GPU), "DmlExecutionProvider"),
                                           std::make_pair(int(FLEXAVATAR_DEVICE_NPU), "QNNExecutionProvider")}) {
    for (int index : {0, 1}) {
      CHECK(flexavatar_runtime_options_init(&options, sizeof(options)) == FLEXAVATAR_OK);
      options.device = device;
      options.cuda_device = index;
      options.num_threads = 1;
      CHECK(flexavatar_runtime_create(dir.u8string().c_str(), &options, &rt) == FLEXAVATAR_ERROR_UNAVAILABLE && !rt);
      message = flexavatar_last_error();
      if (message.find(device == FLEXAVATAR_DEVICE_GPU ? "device GPU" : "device NPU") == std::string::npos ||
          message.find(std::string("looked for ") + looked_for) == std::string::npos ||
          message.find("CPUExecutionProvider") == std::string::npos)
        harness::fail(__FILE__, __LINE__, "unexpected message: " + message);
    }
    CHECK(flexavatar_runtime_options_init(&options, sizeof(options)) == FLEXAVATAR_OK);
    options.device = device;
    options.precision = FLEXAVATAR_PRECISION_INT8;
    CHECK(flexavatar_runtime_create(dir.u8string().c_str(), &options, &rt) == FLEXAVATAR_ERROR_INVALID_ARGUMENT && !rt);
    message = flexavatar_last_error();
    if (message.find("precision int8") == std::string::npos || message.find("CPU provider only") == std::string::npos ||
        message.find(device == FLEXAVATAR_DEVICE_GPU ? "device GPU" : "device NPU") == std::string::npos)
      harness::fail(__FILE__, __LINE__, "unexpected message: " + message);
  }
  fs::remove_all(dir);
}

HARNESS_MAIN()

// A newer exporter's extra artifact (whose file this runtime never opens: here it does not even exist) leaves the
// bundle running; a bundle whose only decoder is of an unknown kind says so.
TEST_CASE(c_api_bundle_with_an_unknown_artifact_runs_its_known_ones) {
  const fs::path dir = tiny_bundle("unknown_kind", [](const std::string& text) {
    const size_t start = text.find(R"({"name": "decoder.fp32.onnx")");
    const size_t end = text.rfind(']', text.find(R"(  "avatar")"));
    std::string extra = text.substr(start, end - start);
    extra = replace_once(replace_once(extra, R"("name": "decoder.fp32.onnx")", R"("name": "decoder.fp32.plan")"),
                         R"("format": "onnx")", R"("format": "tensorrt")");
    extra = replace_once(extra, R"("path": "decoder.fp32.onnx")", R"("path": "decoder.fp32.plan")");
    return text.substr(0, end) + ", " + extra + text.substr(end);
  });
  flexavatar_runtime* rt = nullptr;
  CHECK(create_cpu(dir, &rt) == FLEXAVATAR_OK && rt);
  std::vector<float> code(32, 0.f), expression(135, 0.f);
  flexavatar_gaussians g{};
  CHECK(flexavatar_runtime_set_avatar_code(rt, code.data(), 32) == FLEXAVATAR_OK);
  CHECK(flexavatar_runtime_decode(rt, expression.data(), 135, &g) == FLEXAVATAR_OK && g.opacities[3] == 0.5f);
  flexavatar_runtime_info info{};
  info.struct_size = sizeof info;
  CHECK(flexavatar_runtime_get_info(rt, &info) == FLEXAVATAR_OK);  // the app can tell its user what was left aside
  CHECK(info.ignored_artifacts == 1 && std::string(info.ignored_names) == "decoder.fp32.plan (format 'tensorrt')");
  flexavatar_runtime_destroy(rt);
  fs::remove_all(dir);

  const fs::path only = tiny_bundle("unknown_only", [](const std::string& text) {
    return replace_once(text, R"("format": "onnx")", R"("format": "tensorrt")");
  });
  rt = nullptr;
  CHECK(create_cpu(only, &rt) == FLEXAVATAR_ERROR_BUNDLE_INVALID && !rt);
  const std::string why = flexavatar_last_error();
  if (why.find("it has: none (and, unknown to this flexavatar: decoder.fp32.onnx (format 'tensorrt'))") ==
      std::string::npos)
    harness::fail(__FILE__, __LINE__, "unexpected message: " + why);
  fs::remove_all(only);
}

// Static shapes for GPU / NPU providers: the leading dynamic dim of each input, pinned to 1 (as Python's
// InferenceBackend.static_shapes), reaches ONNX Runtime as a free dimension override: the session's input is [1, 3].
TEST_CASE(static_dims_pin_the_leading_dynamic_dims) {
  Manifest m;
  CHECK(parse(valid_manifest(), &m).ok());
  CHECK(static_dims_of(m.artifacts[0]) == (std::vector<std::pair<std::string, int64_t>>{{"E", 1}}));
  const fs::path dir = scratch("static_dims");
  write_file(dir / "identity.onnx", tiny_onnx::dynamic_identity(3));
  for (bool pinned : {false, true}) {
    SessionConfig config;
    config.num_threads = 1;
    if (pinned) config.static_dims = {{"E", 1}};
    std::unique_ptr<OrtModel> model;
    const Status s = OrtModel::open((dir / "identity.onnx").string(), config, &model);
    if (!s.ok()) harness::fail(__FILE__, __LINE__, s.message());
    CHECK(model->inputs().size() == 1);
    CHECK(model->inputs()[0].shape == (pinned ? std::vector<int64_t>{1, 3} : std::vector<int64_t>{-1, 3}));
  }
  fs::remove_all(dir);
}
