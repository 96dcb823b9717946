#include "manifest.h"

#include <algorithm>
#include <set>

#include <nlohmann/json.hpp>

#include "platform.h"

namespace flexavatar {
namespace runtime {
namespace {

using Json = nlohmann::json;

// A validation failure inside the parser; converted to a Status at parse_manifest's boundary.
struct ManifestFailure {
  std::string message;
};

[[noreturn]] void fail(const std::string& message) { throw ManifestFailure{message}; }

// Deeper JSON is rejected while parsing: nothing downstream then recurses deeply (nlohmann's dump() and
// comparisons recurse; a manifest of a million '[' would overflow the stack). bundle.py writes depth ~6.
constexpr int kMaxDepth = 64;

// A short rendering of a value for error messages; containers are summarised, never dumped (no recursion).
std::string preview(const Json& value) {
  if (value.is_object()) return "an object with " + std::to_string(value.size()) + " keys";
  if (value.is_array()) return "a list of length " + std::to_string(value.size());
  if (value.is_string() && value.get_ref<const std::string&>().size() > 60) {
    const Json head = value.get_ref<const std::string&>().substr(0, 57);
    return head.dump(-1, ' ', false, Json::error_handler_t::replace) + "...";
  }
  return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

// Typed access to one JSON object; every error names the field path and what was expected
// (the same wording as bundle.py's _Reader).
class Reader {
 public:
  Reader(const Json& raw, std::string where) : raw_(raw), where_(std::move(where)) {
    if (!raw_.is_object()) fail(where_ + " must be a JSON object, got " + preview(raw_));
  }
  const std::string& where() const { return where_; }
  bool has(const char* key) const { return raw_.contains(key); }
  bool is_null(const char* key) const { return !has(key) || raw_.at(key).is_null(); }

  const Json& need(const char* key) const {
    auto it = raw_.find(key);
    if (it == raw_.end()) fail(where_ + "." + key + " is missing");
    return *it;
  }
  std::string str(const char* key) const {
    const Json& v = need(key);
    if (!v.is_string()) fail(where_ + "." + key + " must be a string, got " + preview(v));
    return v.get<std::string>();
  }
  std::string str_or(const char* key, const std::string& fallback) const { return has(key) ? str(key) : fallback; }
  int64_t integer(const char* key) const {
    const Json& v = need(key);
    if (!v.is_number_integer()) fail(where_ + "." + key + " must be an integer, got " + preview(v));
    if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX))
      fail(where_ + "." + key + " must be an integer, got " + preview(v) + " (too large)");
    return v.get<int64_t>();
  }
  double number(const char* key) const {
    const Json& v = need(key);
    if (!v.is_number()) fail(where_ + "." + key + " must be a number, got " + preview(v));
    return v.get<double>();
  }
  void opt_number(const char* key) const {
    if (!is_null(key)) number(key);
  }
  bool boolean(const char* key) const {
    const Json& v = need(key);
    if (!v.is_boolean()) fail(where_ + "." + key + " must be true or false, got " + preview(v));
    return v.get<bool>();
  }
  const Json& object(const char* key) const {
    const Json& v = need(key);
    if (!v.is_object()) fail(where_ + "." + key + " must be an object, got " + preview(v));
    return v;
  }
  Reader sub(const char* key) const { return Reader(object(key), where_ + "." + key); }
  const Json& list(const char* key) const {
    const Json& v = need(key);
    if (!v.is_array()) fail(where_ + "." + key + " must be a list, got " + preview(v));
    return v;
  }
  std::vector<Reader> objects(const char* key) const {
    std::vector<Reader> out;
    const Json& items = list(key);
    for (size_t i = 0; i < items.size(); ++i) {
      out.emplace_back(items[i], where_ + "." + key + "[" + std::to_string(i) + "]");
    }
    return out;
  }
  std::string choice(const char* key, const std::vector<std::string>& allowed) const {
    const std::string value = str(key);
    for (const auto& a : allowed) {
      if (a == value) return value;
    }
    std::string list = "[";
    for (size_t i = 0; i < allowed.size(); ++i) list += (i ? ", '" : "'") + allowed[i] + "'";
    fail(where_ + "." + key + " is '" + value + "', expected one of " + list + "]");
  }

 private:
  const Json& raw_;
  std::string where_;
};

const std::vector<std::string> kRoles = {"encoder", "encoder_features", "decoder", "decoder_avatar"};
// "onnx-ort": ONNX with ONNX Runtime's com.microsoft contrib ops (fused decoders): ONNX Runtime only.
const std::vector<std::string> kFormats = {"onnx", "onnx-ort", "openvino"};
// "int8": the exporter writes it for ONNX decoders only (int8 MatMul weights, activations quantized at run time)
const std::vector<std::string> kPrecisions = {"fp32", "fp16", "int8"};
const std::vector<std::string> kDtypes = {"float32", "float16", "int64", "int32", "uint8", "bool"};

bool is_lower_hex(const std::string& s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

bool escapes_bundle(const std::string& path) {
  if (!path.empty() && path[0] == '/') return true;
  // The OS would stop reading the name at a NUL: "a.onnx\0/../../x" is checked here but opens "a.onnx".
  if (path.find('\0') != std::string::npos) return true;
  size_t start = 0;
  while (start <= path.size()) {
    const size_t end = std::min(path.find('/', start), path.size());
    if (path.compare(start, end - start, "..") == 0 && end - start == 2) return true;
    start = end + 1;
  }
  return false;
}

FileRecord file_record(const Reader& r) {
  FileRecord f;
  f.path = r.str("path");
  if (escapes_bundle(f.path))
    fail(r.where() + ".path " + preview(Json(f.path)) +
         " must be relative to the bundle folder, without '..' or NUL characters");
  f.sha256 = r.str("sha256");
  if (f.sha256.size() != 64 || !is_lower_hex(f.sha256))
    fail(r.where() + ".sha256 must be 64 lowercase hex digits, got '" + f.sha256 + "'");
  f.size = r.integer("size");
  if (f.size < 0) fail(r.where() + ".size must be >= 0, got " + std::to_string(f.size));
  return f;
}

TensorSpec tensor_spec(const Reader& r) {
  TensorSpec t;
  for (const Json& d : r.list("shape")) {
    if (d.is_string()) {
      t.shape.push_back(-1);
      t.dim_names.push_back(d.get<std::string>());
    } else if (d.is_number_integer() && (d.is_number_unsigned() || d.get<int64_t>() >= 0)) {
      t.shape.push_back(d.get<int64_t>());
      t.dim_names.emplace_back();
    } else {
      fail(r.where() + ".shape must list non-negative ints or dim names, got " + preview(r.list("shape")));
    }
  }
  t.name = r.str("name");
  t.dtype = r.choice("dtype", kDtypes);
  return t;
}

void check_parity(const Reader& r) {
  for (const Reader& o : r.objects("outputs")) {
    o.str("name");
    o.number("max_abs_error");
    o.opt_number("tolerance");
    o.boolean("passed");
  }
  r.str("reference");
  r.str("runtime");
  r.str("inputs");
  r.boolean("passed");
  r.opt_number("psnr_db");
  r.opt_number("psnr_target_db");
}

// "" for an artifact whose format, role and precision this runtime knows, else which are new to it (each still a
// string: a value of the wrong type is an error, not something newer).
std::string unknown_kind(const Reader& r) {
  std::string unknown;
  for (const auto& [key, known] : {std::make_pair("format", &kFormats), std::make_pair("role", &kRoles),
                                   std::make_pair("precision", &kPrecisions)}) {
    const std::string value = r.str(key);
    if (std::find(known->begin(), known->end(), value) == known->end())
      unknown += (unknown.empty() ? "" : ", ") + std::string(key) + " '" + value + "'";
  }
  return unknown;
}

ModelArtifact artifact(const Reader& r) {
  ModelArtifact a;
  for (const Reader& f : r.objects("files")) a.files.push_back(file_record(f));
  if (a.files.empty()) fail(r.where() + ".files must list at least the model file");
  a.format = r.choice("format", kFormats);
  const std::string suffix = a.format == "openvino" ? ".xml" : ".onnx";  // onnx and onnx-ort: an .onnx file
  const std::string& first = a.files[0].path;
  if (first.size() < suffix.size() || first.compare(first.size() - suffix.size(), suffix.size(), suffix) != 0)
    fail(r.where() + ".files[0] must be the " + suffix + " model file, got '" + first + "'");
  a.name = r.str("name");
  a.role = r.choice("role", kRoles);
  a.precision = r.choice("precision", kPrecisions);
  for (const Reader& t : r.objects("inputs")) a.inputs.push_back(tensor_spec(t));
  for (const Reader& t : r.objects("outputs")) a.outputs.push_back(tensor_spec(t));
  check_parity(r.sub("parity"));
  if (r.has("fp32_ops")) r.list("fp32_ops");
  r.str_or("notes", "");
  return a;
}

Conventions conventions(const Reader& r) {
  Conventions c;
  // Every field of bundle.py's Conventions is required; strings and ints as there.
  for (const char* key : {"axes", "camera", "intrinsics", "image", "quaternion_order", "color", "sh0_to_rgb",
                          "scales", "opacities", "units", "code_layout", "code_file_layout"}) {
    r.str(key);
  }
  c.axes = r.str("axes");
  c.intrinsics = r.str("intrinsics");
  c.quaternion_order = r.str("quaternion_order");
  c.color = r.str("color");
  c.image_size = r.integer("image_size");
  c.sh_degree = r.integer("sh_degree");
  c.n_gaussians = r.integer("n_gaussians");
  c.n_head_tokens = r.integer("n_head_tokens");
  c.d_code = r.integer("d_code");
  c.expression_dim = r.integer("expression_dim");
  c.dataset_id = r.integer("dataset_id");
  for (const auto& item : r.object("expression_layout").items()) {
    const Json& v = item.value();
    if (!v.is_array() || v.size() < 2 || !v[0].is_number_integer() || !v[1].is_number_integer())
      fail(r.where() + ".expression_layout must map names to [start, stop]");
    c.expression_layout[item.key()] = {v[0].get<int64_t>(), v[1].get<int64_t>()};
  }
  return c;
}

void matrix(const Reader& r, const char* key, int n, float* out) {
  const Json& m = r.list(key);
  bool ok = m.size() == size_t(n);
  for (size_t i = 0; ok && i < m.size(); ++i) {
    ok = m[i].is_array() && m[i].size() == size_t(n);
    for (size_t j = 0; ok && j < m[i].size(); ++j) {
      ok = m[i][j].is_number();
      if (ok) out[i * n + j] = m[i][j].get<float>();
    }
  }
  if (!ok) fail(r.where() + "." + key + " must be a " + std::to_string(n) + "x" + std::to_string(n) +
                " list of numbers");
}

Manifest manifest_from_json(const Json& raw) {
  Reader r(raw, "manifest");
  Manifest m;
  const std::string schema = r.str("schema");
  if (schema != kSchema)
    fail("manifest.schema is '" + schema + "', expected '" + kSchema + "' (not a flexavatar bundle)");
  m.schema_version = r.integer("schema_version");
  if (m.schema_version != kSchemaVersion)
    fail("manifest.schema_version is " + std::to_string(m.schema_version) + "; this flexavatar reads version " +
         std::to_string(kSchemaVersion) + " - re-export the bundle or upgrade flexavatar");
  for (const Reader& a : r.objects("artifacts")) {
    const std::string unknown = unknown_kind(a);
    if (unknown.empty())
      m.artifacts.push_back(artifact(a));
    else
      m.ignored.push_back(a.str("name") + " (" + unknown + ")");
  }
  std::set<std::string> names, paths;
  for (const auto& a : m.artifacts) {
    if (!names.insert(a.name).second) fail("manifest.artifacts has duplicate names ('" + a.name + "')");
    for (const auto& f : a.files) {
      if (!paths.insert(f.path).second) fail("manifest.artifacts list the same file twice ('" + f.path + "')");
    }
  }
  if (!r.is_null("avatar")) {
    Reader a = r.sub("avatar");
    m.has_avatar = true;
    m.avatar.code = file_record(a.sub("code"));
    a.str("photo");
    a.str("photo_sha256");
    matrix(a, "cam2world", 4, m.avatar.cam2world);
    matrix(a, "intrinsics", 3, m.avatar.intrinsics);
    if (!paths.insert(m.avatar.code.path).second)
      fail("manifest lists the same file twice ('" + m.avatar.code.path + "')");
  }
  if (!r.is_null("check")) {
    Reader c = r.sub("check");
    m.has_check = true;
    m.check_file = file_record(c.sub("file"));
    const int64_t n_expressions = c.integer("n_expressions");
    if (n_expressions < 0) fail(c.where() + ".n_expressions must be >= 0, got " + std::to_string(n_expressions));
    c.str("description");
    if (!paths.insert(m.check_file.path).second)
      fail("manifest lists the same file twice ('" + m.check_file.path + "')");
  }
  if (!r.is_null("torch_model")) {
    // model.safetensors (export target pytorch) is for the Python runtime's torch engines: validated as a record,
    // not hashed (this runtime never reads it)
    const FileRecord torch_model = file_record(r.sub("torch_model"));
    if (!paths.insert(torch_model.path).second)
      fail("manifest lists the same file twice ('" + torch_model.path + "')");
  }
  r.str("created");
  for (const auto& item : r.object("versions").items()) (void)item;
  m.opset = r.integer("opset");
  {
    Reader model = r.sub("model");
    model.object("config");
    model.str("checkpoint");
    model.str("checkpoint_sha256");
    model.integer("n_parameters");
    if (!model.is_null("dinov2") && !model.need("dinov2").is_string())
      fail(model.where() + ".dinov2 must be a file name or null, got " + preview(model.need("dinov2")));
  }
  {
    Reader t = r.sub("template");
    m.template_sha256 = t.str("sha256");
    t.integer("n_gaussians");
    t.integer("res_head_tokens");
    t.integer("res_gaussian_grid");
    t.str("source");
  }
  m.conventions = conventions(r.sub("conventions"));
  if (r.has("export_seconds")) r.number("export_seconds");
  return m;
}

}  // namespace

const TensorSpec* ModelArtifact::input(const std::string& tensor) const {
  for (const auto& t : inputs) {
    if (t.name == tensor) return &t;
  }
  return nullptr;
}

const TensorSpec* ModelArtifact::output(const std::string& tensor) const {
  for (const auto& t : outputs) {
    if (t.name == tensor) return &t;
  }
  return nullptr;
}

const ModelArtifact* Manifest::find(const std::string& role, const std::string& format,
                                    const std::string& precision) const {
  for (const auto& a : artifacts) {
    if (a.role == role && a.format == format && a.precision == precision) return &a;
  }
  return nullptr;
}

std::string Manifest::inventory() const {
  std::string have, left_aside;
  for (const auto& a : artifacts) have += (have.empty() ? "" : ", ") + a.name;
  for (const auto& name : ignored) left_aside += (left_aside.empty() ? "" : ", ") + name;
  return (have.empty() ? std::string("none") : have) +
         (left_aside.empty() ? std::string() : " (and, unknown to this flexavatar: " + left_aside + ")");
}

std::vector<FileRecord> Manifest::files() const {
  std::vector<FileRecord> out;
  for (const auto& a : artifacts) out.insert(out.end(), a.files.begin(), a.files.end());
  if (has_avatar) out.push_back(avatar.code);
  if (has_check) out.push_back(check_file);
  return out;
}

Status parse_manifest(const char* text, size_t size, Manifest* out) {
  if (!out) return Status(StatusCode::kNullPointer, "parse_manifest: out is null");
  if (!text && size > 0) return Status(StatusCode::kNullPointer, "parse_manifest: text is null");
  try {
    // throws parse_error with the byte position, or ManifestFailure past kMaxDepth
    const Json raw = Json::parse(text, text + size, [](int depth, Json::parse_event_t event, Json&) {
      if ((event == Json::parse_event_t::object_start || event == Json::parse_event_t::array_start) &&
          depth >= kMaxDepth)
        fail("manifest.json nests objects/lists deeper than " + std::to_string(kMaxDepth) + " levels");
      return true;
    });
    *out = manifest_from_json(raw);
    return Status::ok_status();
  } catch (const ManifestFailure& e) {
    return Status(StatusCode::kBundleInvalid, e.message);
  } catch (const Json::parse_error& e) {
    return Status(StatusCode::kBundleInvalid, std::string("manifest.json is not valid JSON: ") + e.what());
  } catch (const Json::exception& e) {  // type errors the checks above did not foresee
    return Status(StatusCode::kBundleInvalid, std::string("manifest.json: ") + e.what());
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kOutOfMemory, "out of memory while parsing manifest.json");
  }
}

Status read_manifest(const std::string& bundle_dir, Manifest* out) {
  const std::string path = bundle_dir + "/" + kManifestName;
  std::vector<unsigned char> text;
  switch (platform::read_file(path, size_t(64) << 20, &text)) {
    case platform::ReadResult::kOk: break;
    case platform::ReadResult::kCannotOpen:
      return Status(StatusCode::kBundleInvalid, "no " + std::string(kManifestName) + " at " + path +
                                                    ": not a flexavatar bundle (export one with flexavatar-export)");
    case platform::ReadResult::kReadError: return Status(StatusCode::kIoError, "read error on " + path);
    case platform::ReadResult::kTooLarge:
      return Status(StatusCode::kBundleInvalid, path + " is larger than 64 MiB");
  }
  Status s = parse_manifest(reinterpret_cast<const char*>(text.data()), text.size(), out);
  if (!s.ok()) return Status(s.code(), path + ": " + s.message());
  return s;
}

}  // namespace runtime
}  // namespace flexavatar
