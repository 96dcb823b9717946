// flexavatar._native: the pybind11 face of the native core.
//
// CPU: rasterize_cpu() on numpy arrays, zero-copy in, fresh numpy arrays out.
// CUDA: cuda_forward()/cuda_backward() on CUDA arrays (__cuda_array_interface__ or DLPack; no
// torch linkage), executed by the run-time-loaded libflexavatar_cuda. The caller allocates the
// outputs and gradients (so PyTorch's caching allocator owns them); the forward returns an opaque
// CudaForwardState that holds what the backward needs.
// Every entry point validates its arguments, releases the GIL while computing and raises a typed
// exception (InputError, DTypeError, UnavailableError, DeviceError) instead of aborting.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>

#include "array_views.h"
#include "flexavatar/build_info.h"
#include "flexavatar/cpu_rasterizer.h"
#include "flexavatar/cuda_rasterizer.h"

namespace py = pybind11;
using namespace flexavatar;
using namespace flexavatar::py_binding;

namespace {

PyObject* g_native_error = nullptr;
PyObject* g_input_error = nullptr;
PyObject* g_dtype_error = nullptr;
PyObject* g_unavailable_error = nullptr;
PyObject* g_device_error = nullptr;

PyObject* new_exception(py::module_& m, const char* name, py::tuple bases, const char* doc) {
  const std::string qualified = std::string("flexavatar._native.") + name;
  PyObject* type = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, bases.ptr(), nullptr);
  if (!type) throw py::error_already_set();
  m.add_object(name, py::handle(type));
  return type;
}

// Shapes shared by both back ends: [B, G, k] Gaussians and [B, C, ...] cameras.
struct SceneShape {
  int64_t B = 0, G = 0, C = 0;
};

SceneShape check_scene_shapes(const std::vector<int64_t>& means, const std::vector<int64_t>& quats,
                              const std::vector<int64_t>& scales, const std::vector<int64_t>& opacities,
                              const std::vector<int64_t>& sh0, const std::vector<int64_t>& viewmats,
                              const std::vector<int64_t>& Ks, const std::vector<int64_t>* backgrounds) {
  expect_shape("means", means, {-1, -1, 3}, "[B, G, 3]");
  SceneShape s{means[0], means[1], 0};
  expect_shape("quats", quats, {s.B, s.G, 4}, "[B, G, 4]");
  expect_shape("scales", scales, {s.B, s.G, 3}, "[B, G, 3]");
  expect_shape("opacities", opacities, {s.B, s.G}, "[B, G]");
  expect_shape("sh0", sh0, {s.B, s.G, 3}, "[B, G, 3]");
  expect_shape("viewmats", viewmats, {s.B, -1, 4, 4}, "[B, C, 4, 4]");
  s.C = viewmats[1];
  expect_shape("Ks", Ks, {s.B, s.C, 3, 3}, "[B, C, 3, 3]");
  if (backgrounds) expect_shape("backgrounds", *backgrounds, {s.B, s.C, 3}, "[B, C, 3]");
  return s;
}

py::tuple rasterize_cpu_py(py::handle means, py::handle quats, py::handle scales, py::handle opacities, py::handle sh0,
                           py::handle viewmats, py::handle Ks, int64_t width, int64_t height, py::handle backgrounds,
                           float eps2d, float near_plane, float far_plane, int num_threads) {
  const HostArray m = host_array(means, "means"), q = host_array(quats, "quats"), s = host_array(scales, "scales");
  const HostArray o = host_array(opacities, "opacities"), c = host_array(sh0, "sh0");
  const HostArray v = host_array(viewmats, "viewmats"), k = host_array(Ks, "Ks");
  HostArray bg;
  if (!backgrounds.is_none()) bg = host_array(backgrounds, "backgrounds");
  const SceneShape shape = check_scene_shapes(m.shape, q.shape, s.shape, o.shape, c.shape, v.shape, k.shape,
                                              backgrounds.is_none() ? nullptr : &bg.shape);
  if (width <= 0 || height <= 0)
    throw InputError("width/height: expected positive image sizes, got " + std::to_string(width) + "x" +
                     std::to_string(height));
  if (num_threads < 0) throw InputError("num_threads: expected >= 0 (0 = all cores), got " + std::to_string(num_threads));

  GaussianBuffers g{shape.B, shape.G, m.data, q.data, s.data, o.data, c.data};
  CameraBuffers cams{shape.C, v.data, k.data, bg.data};
  RasterSettings settings;
  settings.width = width;
  settings.height = height;
  settings.eps2d = eps2d;
  settings.near_plane = near_plane;
  settings.far_plane = far_plane;
  settings.num_threads = num_threads;
  Status st = validate_raster_inputs(g, cams, settings);  // before allocating the outputs
  throw_if_error(st);

  py::array_t<float> image({shape.B, shape.C, height, width, int64_t(3)});
  py::array_t<float> alpha({shape.B, shape.C, height, width});
  py::array_t<float> depth({shape.B, shape.C, height, width});
  RasterOutputs out{image.mutable_data(), alpha.mutable_data(), depth.mutable_data()};
  {
    py::gil_scoped_release release;
    thread_local CpuRasterizer rasterizer;  // scratch buffers reused between frames of a thread
    st = rasterizer.render(g, cams, settings, out);
  }
  throw_if_error(st);
  return py::make_tuple(image, alpha, depth);
}

// ---------------------------------------------------------------------------------------------
// CUDA
std::shared_ptr<CudaLibrary> cuda_library() {
  std::shared_ptr<CudaLibrary> lib;
  throw_if_error(CudaLibrary::load("", &lib));
  return lib;
}

class CudaForwardState {
 public:
  CudaForwardState(std::shared_ptr<CudaLibrary> lib, void* state, SceneShape shape, int64_t width, int64_t height,
                   int device)
      : lib_(std::move(lib)), state_(state), shape_(shape), width_(width), height_(height), device_(device) {}
  ~CudaForwardState() {
    if (state_) lib_->api().release_state(state_);
  }
  CudaForwardState(const CudaForwardState&) = delete;
  CudaForwardState& operator=(const CudaForwardState&) = delete;

  int64_t num_intersections() const { return state_ ? lib_->api().state_num_intersections(state_) : -1; }
  void release() {
    if (state_) lib_->api().release_state(state_);
    state_ = nullptr;
  }
  void* handle() const { return state_; }
  const SceneShape& shape() const { return shape_; }
  int64_t width() const { return width_; }
  int64_t height() const { return height_; }
  int device() const { return device_; }
  const CudaLibrary& library() const { return *lib_; }

 private:
  std::shared_ptr<CudaLibrary> lib_;
  void* state_;
  SceneShape shape_;
  int64_t width_, height_;
  int device_;
};

void same_device(const char* name, const DeviceArray& a, int device) {
  if (a.data && a.device != device)
    throw InputError(std::string(name) + ": expected an array on CUDA device " + std::to_string(device) + ", got device " +
                     std::to_string(a.device));
}

std::unique_ptr<CudaForwardState> cuda_forward_py(py::handle means, py::handle quats, py::handle scales,
                                                  py::handle opacities, py::handle sh0, py::handle viewmats,
                                                  py::handle Ks, py::handle backgrounds, py::handle image,
                                                  py::handle alpha, py::handle depth, int64_t width, int64_t height,
                                                  float eps2d, float near_plane, float far_plane, uintptr_t stream,
                                                  int64_t intersection_capacity, py::handle num_intersections_out) {
  auto lib = cuda_library();
  const auto& api = lib->api();
  const DeviceArray m = device_array(means, "means", api), q = device_array(quats, "quats", api);
  const DeviceArray s = device_array(scales, "scales", api), o = device_array(opacities, "opacities", api);
  const DeviceArray c = device_array(sh0, "sh0", api), v = device_array(viewmats, "viewmats", api);
  const DeviceArray k = device_array(Ks, "Ks", api);
  DeviceArray bg;
  if (!backgrounds.is_none()) bg = device_array(backgrounds, "backgrounds", api);
  const SceneShape shape = check_scene_shapes(m.shape, q.shape, s.shape, o.shape, c.shape, v.shape, k.shape,
                                              backgrounds.is_none() ? nullptr : &bg.shape);
  if (width <= 0 || height <= 0)
    throw InputError("width/height: expected positive image sizes, got " + std::to_string(width) + "x" +
                     std::to_string(height));
  const DeviceArray img = device_array(image, "image", api, true), al = device_array(alpha, "alpha", api, true);
  const DeviceArray dp = device_array(depth, "depth", api, true);
  expect_shape("image", img.shape, {shape.B, shape.C, height, width, 3}, "[B, C, H, W, 3]");
  expect_shape("alpha", al.shape, {shape.B, shape.C, height, width}, "[B, C, H, W]");
  expect_shape("depth", dp.shape, {shape.B, shape.C, height, width}, "[B, C, H, W]");
  // (the capacity's range and the count's presence are the C ABI's checks, which raise InputError alike)
  DeviceArray count;
  if (!num_intersections_out.is_none()) {
    count = device_array(num_intersections_out, "num_intersections_out", api, true, kInt64);
    expect_shape("num_intersections_out", count.shape, {1}, "[1] int64");
  }
  const int device = v.device;
  for (const DeviceArray* a :
       std::initializer_list<const DeviceArray*>{&m, &q, &s, &o, &c, &k, &bg, &img, &al, &dp, &count})
    same_device("arrays", *a, device);

  FlexavatarCudaForwardArgs args{};
  args.num_batches = shape.B;
  args.num_gaussians = shape.G;
  args.num_cameras = shape.C;
  args.width = width;
  args.height = height;
  args.eps2d = eps2d;
  args.near_plane = near_plane;
  args.far_plane = far_plane;
  args.means = m.data;
  args.quats = q.data;
  args.scales = s.data;
  args.opacities = o.data;
  args.sh0 = c.data;
  args.viewmats = v.data;
  args.intrinsics = k.data;
  args.backgrounds = bg.data;
  args.image = img.data;
  args.alpha = al.data;
  args.depth = dp.data;
  args.device = device;
  args.stream = reinterpret_cast<void*>(stream);
  args.intersection_capacity = intersection_capacity;
  args.num_intersections_out = reinterpret_cast<int64_t*>(count.data);
  void* state = nullptr;
  char err[1024] = {0};
  int code;
  {
    py::gil_scoped_release release;
    code = api.forward(&args, &state, err, sizeof(err));
  }
  throw_if_error(status_from_c(code, err));
  return std::make_unique<CudaForwardState>(lib, state, shape, width, height, device);
}

void cuda_backward_py(CudaForwardState& state, py::handle means, py::handle quats, py::handle scales,
                      py::handle opacities, py::handle sh0, py::handle viewmats, py::handle Ks, py::handle backgrounds,
                      py::handle v_image, py::handle v_alpha, py::handle v_depth, py::handle v_means,
                      py::handle v_quats, py::handle v_scales, py::handle v_opacities, py::handle v_sh0) {
  if (!state.handle()) throw InputError("state: this forward state was already released");
  const auto& api = state.library().api();
  const SceneShape& sh = state.shape();
  const int64_t H = state.height(), W = state.width();
  auto in = [&](py::handle obj, const char* name, const std::vector<int64_t>& expected, const char* desc,
                bool writable = false) {
    DeviceArray a = device_array(obj, name, api, writable);
    expect_shape(name, a.shape, expected, desc);
    same_device(name, a, state.device());
    return a;
  };
  auto optional = [&](py::handle obj, const char* name, const std::vector<int64_t>& expected, const char* desc) {
    return obj.is_none() ? DeviceArray{} : in(obj, name, expected, desc);
  };
  const DeviceArray m = in(means, "means", {sh.B, sh.G, 3}, "[B, G, 3]");
  const DeviceArray q = in(quats, "quats", {sh.B, sh.G, 4}, "[B, G, 4]");
  const DeviceArray s = in(scales, "scales", {sh.B, sh.G, 3}, "[B, G, 3]");
  const DeviceArray o = in(opacities, "opacities", {sh.B, sh.G}, "[B, G]");
  const DeviceArray c = in(sh0, "sh0", {sh.B, sh.G, 3}, "[B, G, 3]");
  const DeviceArray v = in(viewmats, "viewmats", {sh.B, sh.C, 4, 4}, "[B, C, 4, 4]");
  const DeviceArray k = in(Ks, "Ks", {sh.B, sh.C, 3, 3}, "[B, C, 3, 3]");
  const DeviceArray bg = optional(backgrounds, "backgrounds", {sh.B, sh.C, 3}, "[B, C, 3]");
  const DeviceArray gi = optional(v_image, "v_image", {sh.B, sh.C, H, W, 3}, "[B, C, H, W, 3]");
  const DeviceArray ga = optional(v_alpha, "v_alpha", {sh.B, sh.C, H, W}, "[B, C, H, W]");
  const DeviceArray gd = optional(v_depth, "v_depth", {sh.B, sh.C, H, W}, "[B, C, H, W]");
  const DeviceArray om = in(v_means, "v_means", {sh.B, sh.G, 3}, "[B, G, 3]", true);
  const DeviceArray oq = in(v_quats, "v_quats", {sh.B, sh.G, 4}, "[B, G, 4]", true);
  const DeviceArray os = in(v_scales, "v_scales", {sh.B, sh.G, 3}, "[B, G, 3]", true);
  const DeviceArray oo = in(v_opacities, "v_opacities", {sh.B, sh.G}, "[B, G]", true);
  const DeviceArray oc = in(v_sh0, "v_sh0", {sh.B, sh.G, 3}, "[B, G, 3]", true);

  FlexavatarCudaBackwardArgs args{m.data,  q.data,  s.data,  o.data,  c.data,  v.data,  k.data,  bg.data,
                                  gi.data, ga.data, gd.data, om.data, oq.data, os.data, oo.data, oc.data};
  char err[1024] = {0};
  int code;
  {
    py::gil_scoped_release release;
    code = api.backward(state.handle(), &args, err, sizeof(err));
  }
  throw_if_error(status_from_c(code, err));
}

py::dict cuda_info_py() {
  py::dict d;
  std::shared_ptr<CudaLibrary> lib;
  const Status st = CudaLibrary::load("", &lib);
  d["library_loaded"] = st.ok();
  d["library"] = st.ok() ? py::str(lib->path()) : py::str("");
  std::string why;
  const int count = st.ok() ? lib->device_count(&why) : 0;
  d["device_count"] = count;
  d["available"] = st.ok() && count > 0;
  d["reason"] = !st.ok() ? st.message()
                         : count > 0 ? std::string()
                                     : "no CUDA device (or no driver) on this machine" + (why.empty() ? "" : " (" + why + ")");
  return d;
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "flexavatar native core: C++ CPU and CUDA tile rasterizers on raw buffers";

  py::tuple no_bases = py::make_tuple(py::handle(PyExc_Exception));
  g_native_error = new_exception(m, "NativeError", no_bases, "Base class of the native core's errors.");
  g_input_error = new_exception(m, "InputError", py::make_tuple(py::handle(g_native_error), py::handle(PyExc_ValueError)),
                                "Bad argument at the native boundary: shape, size, pointer, device or value.");
  g_dtype_error = new_exception(m, "DTypeError", py::make_tuple(py::handle(g_input_error), py::handle(PyExc_TypeError)),
                                "An array has the wrong dtype (float32 expected).");
  g_unavailable_error =
      new_exception(m, "UnavailableError", py::make_tuple(py::handle(g_native_error), py::handle(PyExc_RuntimeError)),
                    "The CUDA library or a CUDA device is not available.");
  g_device_error = new_exception(m, "DeviceError", py::make_tuple(py::handle(g_native_error), py::handle(PyExc_RuntimeError)),
                                 "A CUDA call failed (or memory ran out).");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const DTypeError& e) {
      PyErr_SetString(g_dtype_error, e.what());
    } catch (const InputError& e) {
      PyErr_SetString(g_input_error, e.what());
    } catch (const UnavailableError& e) {
      PyErr_SetString(g_unavailable_error, e.what());
    } catch (const DeviceError& e) {
      PyErr_SetString(g_device_error, e.what());
    }
  });

  m.def("build_info", [] {
    const auto info = flexavatar::build_info();
    py::dict d;
    d["version"] = info.version;
    d["compiler"] = info.compiler;
    d["cuda"] = info.with_cuda;
    return d;
  }, "Build configuration of the native core: version, compiler, CUDA on/off.");

  m.def("rasterize_cpu", &rasterize_cpu_py, py::arg("means"), py::arg("quats"), py::arg("scales"),
        py::arg("opacities"), py::arg("sh0"), py::arg("viewmats"), py::arg("Ks"), py::arg("width"), py::arg("height"),
        py::arg("backgrounds") = py::none(), py::arg("eps2d") = 0.3f, py::arg("near_plane") = 0.01f,
        py::arg("far_plane") = 1e10f, py::arg("num_threads") = 0,
        R"doc(Rasterize B×C views on the CPU (multi-threaded, GIL released).

means [B,G,3], quats [B,G,4] (wxyz), scales [B,G,3], opacities [B,G], sh0 [B,G,3],
viewmats [B,C,4,4] world-to-camera, Ks [B,C,3,3], backgrounds [B,C,3] or None (black):
C-contiguous float32 numpy arrays, read in place. Returns (image [B,C,H,W,3],
alpha [B,C,H,W], depth [B,C,H,W]).)doc");

  py::class_<CudaForwardState>(m, "CudaForwardState",
                               "What the CUDA backward needs from a forward pass (device buffers, freed with it).")
      .def_property_readonly("num_intersections", &CudaForwardState::num_intersections)
      .def("release", &CudaForwardState::release, "Free the device buffers now.");

  m.def("cuda_info", &cuda_info_py,
        "Whether the CUDA rasterizer can run here: dict(available, reason, device_count, library_loaded, library).");
  m.def("cuda_forward", &cuda_forward_py, py::arg("means"), py::arg("quats"), py::arg("scales"), py::arg("opacities"),
        py::arg("sh0"), py::arg("viewmats"), py::arg("Ks"), py::arg("backgrounds"), py::arg("image"), py::arg("alpha"),
        py::arg("depth"), py::arg("width"), py::arg("height"), py::arg("eps2d") = 0.3f,
        py::arg("near_plane") = 0.01f, py::arg("far_plane") = 1e10f, py::arg("stream") = 0,
        py::arg("intersection_capacity") = 0, py::arg("num_intersections_out") = py::none(),
        "CUDA forward on CUDA arrays (same shapes as rasterize_cpu); writes image/alpha/depth in place and returns "
        "a CudaForwardState. `stream` is a cudaStream_t as an integer (0 = default stream). "
        "intersection_capacity > 0: no host sync (the sort covers that many slots); num_intersections_out (int64 "
        "[1] CUDA array, required then) receives the exact count in stream order: above the capacity, the frame "
        "is incomplete and must be rendered again with a larger capacity (or 0). Backward needs capacity 0.");
  m.def("cuda_backward", &cuda_backward_py, py::arg("state"), py::arg("means"), py::arg("quats"), py::arg("scales"),
        py::arg("opacities"), py::arg("sh0"), py::arg("viewmats"), py::arg("Ks"), py::arg("backgrounds"),
        py::arg("v_image"), py::arg("v_alpha"), py::arg("v_depth"), py::arg("v_means"), py::arg("v_quats"),
        py::arg("v_scales"), py::arg("v_opacities"), py::arg("v_sh0"),
        "CUDA backward: upstream gradients (None = zero) in, gradients of the Gaussian attributes written in place, "
        "on the forward's stream.");
}
