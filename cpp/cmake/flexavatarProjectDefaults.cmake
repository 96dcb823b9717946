# Settings shared by the two ways of building the native core: the repository's top-level
# CMakeLists.txt (pip / scikit-build-core) and a standalone build of cpp/. Set the
# FLEXAVATAR_BUILD_TESTS / FLEXAVATAR_BUILD_PYTHON options (their defaults differ) before including.

# FLEXAVATAR_CUDA: AUTO enables CUDA when a CUDA compiler is found.
set(FLEXAVATAR_CUDA "AUTO" CACHE STRING "Build the CUDA rasterizer library (AUTO/ON/OFF)")
set_property(CACHE FLEXAVATAR_CUDA PROPERTY STRINGS AUTO ON OFF)

set(CMAKE_CXX_STANDARD 17)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(CMAKE_POSITION_INDEPENDENT_CODE ON)
if(NOT CMAKE_BUILD_TYPE AND NOT CMAKE_CONFIGURATION_TYPES)
  set(CMAKE_BUILD_TYPE Release CACHE STRING "" FORCE)
endif()

if(FLEXAVATAR_BUILD_TESTS)
  enable_testing()  # ctest from the build directory runs cpp/tests
endif()
