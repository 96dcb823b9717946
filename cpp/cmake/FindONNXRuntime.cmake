# FindONNXRuntime: ONNX Runtime's C API (header + shared library) as the IMPORTED target onnxruntime::onnxruntime.
#
# Where the pieces come from, first match wins:
#   header   ONNXRUNTIME_INCLUDE_DIR, ${ONNXRUNTIME_ROOT}/include[/onnxruntime], the system
#            (include/onnxruntime), then ONNXRUNTIME_FALLBACK_INCLUDE_DIR (the project's vendored C API header).
#   library  ONNXRUNTIME_LIBRARY, ${ONNXRUNTIME_ROOT}/lib, the system, then the `onnxruntime` Python wheel of
#            the Python found by CMake (a virtual environment first): onnxruntime/capi/libonnxruntime.so.<ver>.
#            Windows: onnxruntime.lib (+ onnxruntime.dll beside it or in ../bin), or with MinGW the DLL itself.
#
# The wheel's library has the SONAME libonnxruntime.so.1 but ships no file of that name, so this module puts
# a libonnxruntime.so.1 symlink to it into the build tree and imports the symlink: linked binaries then
# record NEEDED libonnxruntime.so.1, as with a system install. Build against the library you run with: the
# wheel's symbols are versioned (a binary linked to 1.32 does not load 1.31). The C API is versioned, so
# an older header works with a newer library (the runtime asks for the header's ORT_API_VERSION).
#
# Results: ONNXRuntime_FOUND, ONNXRuntime_VERSION (library), ONNXRuntime_API_VERSION (header),
# ONNXRuntime_LIBRARY (the real file), ONNXRuntime_PROVIDER_LIBRARIES (execution-provider bridges beside it),
# ONNXRuntime_LINK_DIR (folder of the imported libonnxruntime.so.1),
# ONNXRuntime_INCLUDE_DIR, ONNXRuntime_SOURCE ("root" / "system" / "python-wheel").
include(FindPackageHandleStandardArgs)

set(_ort_hint_includes)
set(_ort_hint_libs)
if(ONNXRUNTIME_ROOT)
  list(APPEND _ort_hint_includes "${ONNXRUNTIME_ROOT}/include" "${ONNXRUNTIME_ROOT}/include/onnxruntime")
  list(APPEND _ort_hint_libs "${ONNXRUNTIME_ROOT}/lib" "${ONNXRUNTIME_ROOT}/lib64")
endif()

# ---- header ----
if(ONNXRUNTIME_INCLUDE_DIR)
  set(ONNXRuntime_INCLUDE_DIR "${ONNXRUNTIME_INCLUDE_DIR}")
else()
  find_path(ONNXRuntime_INCLUDE_DIR onnxruntime_c_api.h
    HINTS ${_ort_hint_includes}
    PATH_SUFFIXES onnxruntime onnxruntime/core/session)
  if(NOT ONNXRuntime_INCLUDE_DIR AND ONNXRUNTIME_FALLBACK_INCLUDE_DIR)
    set(ONNXRuntime_INCLUDE_DIR "${ONNXRUNTIME_FALLBACK_INCLUDE_DIR}" CACHE PATH "ONNX Runtime C API header folder" FORCE)
  endif()
endif()
set(ONNXRuntime_API_VERSION "")
if(ONNXRuntime_INCLUDE_DIR AND EXISTS "${ONNXRuntime_INCLUDE_DIR}/onnxruntime_c_api.h")
  file(STRINGS "${ONNXRuntime_INCLUDE_DIR}/onnxruntime_c_api.h" _ort_api_line REGEX "^#define ORT_API_VERSION [0-9]+")
  string(REGEX REPLACE "^#define ORT_API_VERSION ([0-9]+).*" "\\1" ONNXRuntime_API_VERSION "${_ort_api_line}")
endif()

# ---- library ----
set(ONNXRuntime_SOURCE "")
if(ONNXRUNTIME_LIBRARY)
  set(ONNXRuntime_LIBRARY "${ONNXRUNTIME_LIBRARY}")
  set(ONNXRuntime_SOURCE "given")
else()
  find_library(_ort_found_library NAMES onnxruntime HINTS ${_ort_hint_libs})
  if(_ort_found_library)
    set(ONNXRuntime_LIBRARY "${_ort_found_library}")
    set(ONNXRuntime_SOURCE "system")
  else()
    find_package(Python3 COMPONENTS Interpreter QUIET)
    if(Python3_Interpreter_FOUND)
      execute_process(
        COMMAND "${Python3_EXECUTABLE}" -c
          "import importlib.util, os; s = importlib.util.find_spec('onnxruntime'); print(os.path.join(os.path.dirname(s.origin), 'capi') if s else '')"
        OUTPUT_VARIABLE _ort_capi OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
      if(_ort_capi)
        file(GLOB _ort_wheel_libs "${_ort_capi}/libonnxruntime.so.*" "${_ort_capi}/libonnxruntime.*.dylib")
        list(SORT _ort_wheel_libs)
        if(_ort_wheel_libs)
          list(GET _ort_wheel_libs -1 ONNXRuntime_LIBRARY)
          set(ONNXRuntime_SOURCE "python-wheel")
        endif()
      endif()
    endif()
  endif()
endif()

set(ONNXRuntime_VERSION "")
if(ONNXRuntime_LIBRARY AND WIN32)
  # Windows: onnxruntime.dll (MinGW links a DLL directly) or its import library onnxruntime.lib, with the DLL
  # beside it or in ../bin (the NuGet / release-zip layout). No SONAME link: programs find the DLL on PATH or
  # beside themselves.
  get_filename_component(_ort_dir "${ONNXRuntime_LIBRARY}" DIRECTORY)
  if(ONNXRuntime_LIBRARY MATCHES "\\.dll$")
    set(ONNXRuntime_DLL "${ONNXRuntime_LIBRARY}")
  else()
    find_file(ONNXRuntime_DLL onnxruntime.dll HINTS "${_ort_dir}" "${_ort_dir}/../bin" NO_DEFAULT_PATH)
  endif()
  set(ONNXRuntime_LINK_DIR "${_ort_dir}")
  set(ONNXRuntime_PROVIDER_LIBRARIES "")
  if(ONNXRuntime_DLL)
    get_filename_component(_ort_dll_dir "${ONNXRuntime_DLL}" DIRECTORY)
    file(GLOB ONNXRuntime_PROVIDER_LIBRARIES "${_ort_dll_dir}/onnxruntime_providers_*.dll")
  endif()
elseif(ONNXRuntime_LIBRARY)
  get_filename_component(_ort_real "${ONNXRuntime_LIBRARY}" REALPATH)
  set(ONNXRuntime_LIBRARY "${_ort_real}")
  if(_ort_real MATCHES "onnxruntime\\.so\\.([0-9]+\\.[0-9]+\\.[0-9]+)$")
    set(ONNXRuntime_VERSION "${CMAKE_MATCH_1}")
  endif()
  # The library under the name the linker records (its SONAME), in the build tree.
  set(ONNXRuntime_LINK_DIR "${CMAKE_BINARY_DIR}/onnxruntime-lib")
  file(MAKE_DIRECTORY "${ONNXRuntime_LINK_DIR}")
  file(CREATE_LINK "${_ort_real}" "${ONNXRuntime_LINK_DIR}/libonnxruntime.so.1" SYMBOLIC)
  # ORT loads execution-provider bridges (CUDA, ...) from its own folder: keep them beside the link.
  get_filename_component(_ort_dir "${_ort_real}" DIRECTORY)
  set(ONNXRuntime_PROVIDER_LIBRARIES "")
  file(GLOB _ort_providers "${_ort_dir}/libonnxruntime_providers_*.so")
  foreach(_p IN LISTS _ort_providers)
    get_filename_component(_p_name "${_p}" NAME)
    file(CREATE_LINK "${_p}" "${ONNXRuntime_LINK_DIR}/${_p_name}" SYMBOLIC)
    list(APPEND ONNXRuntime_PROVIDER_LIBRARIES "${_p}")
  endforeach()
endif()

find_package_handle_standard_args(ONNXRuntime
  REQUIRED_VARS ONNXRuntime_LIBRARY ONNXRuntime_INCLUDE_DIR ONNXRuntime_API_VERSION
  VERSION_VAR ONNXRuntime_VERSION)

if(ONNXRuntime_FOUND AND WIN32 AND NOT TARGET onnxruntime::onnxruntime)
  add_library(onnxruntime::onnxruntime SHARED IMPORTED)
  set_target_properties(onnxruntime::onnxruntime PROPERTIES
    IMPORTED_IMPLIB "${ONNXRuntime_LIBRARY}"
    IMPORTED_LOCATION "${ONNXRuntime_DLL}"
    INTERFACE_INCLUDE_DIRECTORIES "${ONNXRuntime_INCLUDE_DIR}")
elseif(ONNXRuntime_FOUND AND NOT TARGET onnxruntime::onnxruntime)
  add_library(onnxruntime::onnxruntime SHARED IMPORTED)
  set_target_properties(onnxruntime::onnxruntime PROPERTIES
    IMPORTED_LOCATION "${ONNXRuntime_LINK_DIR}/libonnxruntime.so.1"
    IMPORTED_SONAME "libonnxruntime.so.1"
    INTERFACE_INCLUDE_DIRECTORIES "${ONNXRuntime_INCLUDE_DIR}")
endif()
