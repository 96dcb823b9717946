// Zero-copy views of Python arrays for the binding: numpy arrays (CPU) and CUDA arrays through
// __cuda_array_interface__ (PyTorch, CuPy, Numba) or DLPack. Strict at the boundary: wrong dtype,
// non-contiguous memory, wrong device or wrong shape raise a typed Python exception naming the
// argument; nothing is converted or copied silently.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "flexavatar/cuda_api.h"
#include "flexavatar/status.h"

namespace flexavatar {
namespace py_binding {

namespace py = pybind11;

// C++ side of the Python exception hierarchy (translated in native_module.cpp).
struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct DTypeError : InputError {
  using InputError::InputError;
};
struct UnavailableError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct DeviceError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Raises the exception matching a non-ok status.
void throw_if_error(const Status& status);

std::string shape_to_string(const std::vector<int64_t>& shape);

// `expected` uses -1 for "any size"; the sizes found are returned through `shape`.
void expect_shape(const char* name, const std::vector<int64_t>& shape, const std::vector<int64_t>& expected,
                  const char* description);

struct HostArray {
  float* data = nullptr;
  std::vector<int64_t> shape;
};

struct DeviceArray {
  float* data = nullptr;  // reinterpret for other element types (device_array's `type`)
  std::vector<int64_t> shape;
  int device = -1;
  py::object keepalive;  // DLPack capsule kept alive for the duration of the call
};

// A C-contiguous float32 numpy array (read-only allowed unless `writable`).
HostArray host_array(py::handle obj, const char* name, bool writable = false);

// Element type a CUDA array must have: its name in errors, __cuda_array_interface__ typestr, DLPack code and bits.
struct ElementType {
  const char* name;
  const char* typestr;
  uint8_t dlpack_code;
  uint8_t bits;
};
extern const ElementType kFloat32;  // the default: every Gaussian, camera and image array
extern const ElementType kInt64;    // counts written by the rasterizer

// A C-contiguous CUDA array of `type` (data points to its first element whatever the type); its device is
// checked through the CUDA library.
DeviceArray device_array(py::handle obj, const char* name, const FlexavatarCudaApi& api, bool writable = false,
                         const ElementType& type = kFloat32);

}  // namespace py_binding
}  // namespace flexavatar
