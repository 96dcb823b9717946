#include "array_views.h"

#include <pybind11/numpy.h>

namespace flexavatar {
namespace py_binding {

namespace {

// Minimal DLPack ABI (v0.x "dltensor" capsules), declared from the published specification.
struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};
constexpr int32_t kDLCUDA = 2;
constexpr int32_t kDLCUDAManaged = 13;
constexpr uint8_t kDLInt = 0;
constexpr uint8_t kDLFloat = 2;

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (const int64_t s : shape) n *= s;
  return n;
}

// Strides in elements of a dense C-contiguous array; dimensions of size 1 may carry any stride.
bool is_c_contiguous(const std::vector<int64_t>& shape, const std::vector<int64_t>& strides_elems) {
  int64_t expected = 1;
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) {
    if (shape[i] != 1 && strides_elems[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

void check_device_pointer(DeviceArray& out, const char* name, const FlexavatarCudaApi& api) {
  if (out.data == nullptr) {
    if (numel(out.shape) != 0)
      throw InputError(std::string(name) + ": got a null data pointer for a non-empty array of shape " +
                       shape_to_string(out.shape));
    return;
  }
  char err[512] = {0};
  int device = -1;
  if (api.pointer_device(out.data, &device, err, sizeof(err)) != 0)
    throw InputError(std::string(name) + ": expected a CUDA array in device memory: " + err);
  if (out.device >= 0 && device != out.device)
    throw InputError(std::string(name) + ": the array reports device " + std::to_string(out.device) +
                     " but its memory is on device " + std::to_string(device));
  out.device = device;
}

}  // namespace

const ElementType kFloat32{"float32", "<f4", kDLFloat, 32};
const ElementType kInt64{"int64", "<i8", kDLInt, 64};

void throw_if_error(const Status& status) {
  switch (status.code()) {
    case StatusCode::kOk:
      return;
    case StatusCode::kNullPointer:
    case StatusCode::kInvalidSize:
    case StatusCode::kInvalidArgument:
      throw InputError(status.message());
    case StatusCode::kUnavailable:
      throw UnavailableError(status.message());
    case StatusCode::kDeviceError:
    case StatusCode::kOutOfMemory:
      throw DeviceError(status.message());
    default:  // the embedding runtime's codes (cpp/runtime) never come from the rasterizers
      break;
  }
  throw DeviceError(status.message());
}

std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += shape[i] < 0 ? std::string("*") : std::to_string(shape[i]);
  }
  return s + "]";
}

void expect_shape(const char* name, const std::vector<int64_t>& shape, const std::vector<int64_t>& expected,
                  const char* description) {
  bool ok = shape.size() == expected.size();
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = expected[i] < 0 || expected[i] == shape[i];
  if (!ok)
    throw InputError(std::string(name) + ": expected shape " + description + " = " + shape_to_string(expected) +
                     ", got " + shape_to_string(shape));
}

HostArray host_array(py::handle obj, const char* name, bool writable) {
  if (obj.is_none()) throw InputError(std::string(name) + ": got None, expected a float32 numpy array");
  if (!py::isinstance<py::array>(obj))
    throw InputError(std::string(name) + ": expected a numpy.ndarray (float32, C-contiguous), got " +
                     std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  auto arr = py::reinterpret_borrow<py::array>(obj);
  if (!arr.dtype().is(py::dtype::of<float>()))
    throw DTypeError(std::string(name) + ": expected dtype float32, got " + std::string(py::str(arr.dtype())));
  if (!(arr.flags() & py::array::c_style))
    throw InputError(std::string(name) + ": expected a C-contiguous array, got strides that are not (use "
                                         "numpy.ascontiguousarray)");
  if (writable && !arr.writeable()) throw InputError(std::string(name) + ": expected a writable array");
  HostArray out;
  out.shape.assign(arr.shape(), arr.shape() + arr.ndim());
  out.data = static_cast<float*>(const_cast<void*>(arr.data()));
  return out;
}

DeviceArray device_array(py::handle obj, const char* name, const FlexavatarCudaApi& api, bool writable,
                         const ElementType& type) {
  if (obj.is_none()) throw InputError(std::string(name) + ": got None, expected a " + type.name + " CUDA array");
  DeviceArray out;
  if (py::hasattr(obj, "requires_grad") && py::bool_(obj.attr("requires_grad")))
    throw InputError(std::string(name) + ": got a tensor that requires grad; pass tensor.detach() (the native "
                                         "module does not record gradients: use the cuda backend's autograd)");
  // Read once (PyTorch computes the interface in Python on every read: a hasattr and a read cost two): an
  // AttributeError means "not a CUDA array interface", any other error an unusable one.
  py::object interface_obj = py::reinterpret_steal<py::object>(PyObject_GetAttrString(obj.ptr(),
                                                                                      "__cuda_array_interface__"));
  if (!interface_obj) {
    if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
      py::error_already_set e;
      throw InputError(std::string(name) + ": its __cuda_array_interface__ is not usable (" + e.what() +
                       "); for a PyTorch tensor that requires grad, pass tensor.detach()");
    }
    PyErr_Clear();
  }
  if (interface_obj) {
    py::dict iface;
    try {
      iface = interface_obj.cast<py::dict>();
    } catch (py::cast_error& e) {
      throw InputError(std::string(name) + ": its __cuda_array_interface__ is not a dict (" + e.what() + ")");
    }
    const std::string typestr = py::str(iface["typestr"]);
    if (typestr != type.typestr)
      throw DTypeError(std::string(name) + ": expected dtype " + type.name + " ('" + type.typestr + "'), got '" +
                       typestr + "'");
    for (auto s : iface["shape"].cast<py::tuple>()) out.shape.push_back(s.cast<int64_t>());
    const auto data = iface["data"].cast<py::tuple>();
    out.data = reinterpret_cast<float*>(static_cast<uintptr_t>(data[0].cast<uint64_t>()));
    if (writable && data[1].cast<bool>()) throw InputError(std::string(name) + ": expected a writable array");
    if (iface.contains("strides") && !iface["strides"].is_none()) {
      std::vector<int64_t> strides;
      for (auto s : iface["strides"].cast<py::tuple>()) {
        const int64_t bytes = s.cast<int64_t>();
        const int64_t item = type.bits / 8;
        if (bytes % item != 0) throw InputError(std::string(name) + ": strides are not multiples of the item size");
        strides.push_back(bytes / item);
      }
      if (!is_c_contiguous(out.shape, strides))
        throw InputError(std::string(name) + ": expected a C-contiguous CUDA array (call .contiguous())");
    }
  } else if (py::hasattr(obj, "__dlpack__")) {
    py::object capsule = obj.attr("__dlpack__")();
    auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
    if (!managed) {
      PyErr_Clear();
      throw InputError(std::string(name) + ": __dlpack__ did not return a 'dltensor' capsule");
    }
    const DLTensor& t = managed->dl_tensor;
    if (t.device.device_type != kDLCUDA && t.device.device_type != kDLCUDAManaged)
      throw InputError(std::string(name) + ": expected a CUDA array, got DLPack device type " +
                       std::to_string(t.device.device_type));
    if (t.dtype.code != type.dlpack_code || t.dtype.bits != type.bits || t.dtype.lanes != 1)
      throw DTypeError(std::string(name) + ": expected dtype " + type.name);
    out.shape.assign(t.shape, t.shape + t.ndim);
    if (t.strides && !is_c_contiguous(out.shape, std::vector<int64_t>(t.strides, t.strides + t.ndim)))
      throw InputError(std::string(name) + ": expected a C-contiguous CUDA array");
    out.data = reinterpret_cast<float*>(static_cast<char*>(t.data) + t.byte_offset);
    out.device = t.device.device_id;
    out.keepalive = capsule;
  } else {
    throw InputError(std::string(name) + ": expected a CUDA array (__cuda_array_interface__ or __dlpack__), got " +
                     std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  }
  check_device_pointer(out, name, api);
  return out;
}

}  // namespace py_binding
}  // namespace flexavatar
