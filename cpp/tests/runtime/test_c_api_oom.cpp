// No C++ exception crosses the C API, even when memory runs out while the error message is being built:
// this program replaces the global operator new so that, on demand, every allocation from the N-th on fails,
// and sweeps N over C API calls on bad input (their error paths allocate the most). Each call must return a
// status and leave a readable last-error message; an escaping exception fails (or terminates) the test.
// Runs under ASan/UBSan/LSan by cpp/tests/run_ctest.sh. No ONNX Runtime session is opened, no manifest read.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
#include <string>
#include <vector>

#include "flexavatar/flexavatar.h"
#include "harness.h"

namespace {

// Allocations left before they start failing; negative: no limit.
std::atomic<long> g_allocations_left{-1};
std::atomic<bool> g_refused{false};  // an allocation failed

bool allocation_allowed() {
  long left = g_allocations_left.load();
  while (left >= 0) {
    if (left == 0) {
      g_refused = true;
      return false;
    }
    if (g_allocations_left.compare_exchange_weak(left, left - 1)) return true;
  }
  return true;
}

void* allocate(std::size_t n) { return allocation_allowed() ? std::malloc(n ? n : 1) : nullptr; }

}  // namespace

// Every non-aligned form, so that new and delete always pair as malloc and free (ASan checks the pairing).
void* operator new(std::size_t n) {
  if (void* p = allocate(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return allocate(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return allocate(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace {

struct Case {
  const char* name;
  flexavatar_status expected;  // without memory pressure
  std::function<flexavatar_status()> call;
};

// Runs `call` with allocations failing from the n-th on, for n = 0, 1, ... until no allocation fails.
void sweep(const Case& c) {
  int escaped = 0, wrong = 0;
  for (long n = 0;; ++n) {
    flexavatar_status s = FLEXAVATAR_OK;
    g_refused = false;
    g_allocations_left = n;
    try {
      s = c.call();
    } catch (...) {
      ++escaped;
    }
    g_allocations_left = -1;
    const bool ran_out = g_refused;
    const char* message = flexavatar_last_error();
    // under pressure: the expected status, or out of memory; either way a message to read
    if (!(s == c.expected || s == FLEXAVATAR_ERROR_OUT_OF_MEMORY) || !message ||
        (s != FLEXAVATAR_OK && message[0] == '\0'))
      ++wrong;
    if (!ran_out) break;
  }
  if (escaped) harness::fail(__FILE__, __LINE__, std::string(c.name) + ": " + std::to_string(escaped) +
                                                     " exceptions crossed the C boundary");
  if (wrong) harness::fail(__FILE__, __LINE__, std::string(c.name) + ": " + std::to_string(wrong) +
                                                   " calls gave a wrong status or no message");
  // and without pressure, the full message
  if (c.call() != c.expected) harness::fail(__FILE__, __LINE__, std::string(c.name) + ": wrong status");
  if (c.expected != FLEXAVATAR_OK && std::strlen(flexavatar_last_error()) < 10)
    harness::fail(__FILE__, __LINE__, std::string(c.name) + ": short message '" + flexavatar_last_error() + "'");
}

}  // namespace

TEST_CASE(out_of_memory_on_error_paths_never_throws_across_the_c_api) {
  flexavatar_runtime* foreign = reinterpret_cast<flexavatar_runtime*>(&g_allocations_left);
  flexavatar_runtime* rt = nullptr;
  flexavatar_runtime_options options;
  flexavatar_encoder_input input;
  flexavatar_runtime_info info{};
  info.struct_size = sizeof(info);
  flexavatar_camera camera{};
  int64_t frames = 0;
  int32_t width = 0, height = 0;
  std::vector<float> expression(135, 0.f);
  float matrix[16];
  const std::vector<Case> cases = {
      {"options_init(NULL)", FLEXAVATAR_ERROR_NULL_POINTER, [&] { return flexavatar_runtime_options_init(nullptr, 0); }},
      {"options_init(size 3)", FLEXAVATAR_ERROR_INVALID_SIZE, [&] { return flexavatar_runtime_options_init(&options, 3); }},
      {"options_init", FLEXAVATAR_OK, [&] { return flexavatar_runtime_options_init(&options, sizeof(options)); }},
      {"encoder_input_init(NULL)", FLEXAVATAR_ERROR_NULL_POINTER,
       [&] { return flexavatar_encoder_input_init(nullptr, 0); }},
      {"encoder_input_init(size 8)", FLEXAVATAR_ERROR_INVALID_SIZE, [&] { return flexavatar_encoder_input_init(&input, 8); }},
      {"get_info(NULL)", FLEXAVATAR_ERROR_INVALID_HANDLE, [&] { return flexavatar_runtime_get_info(nullptr, &info); }},
      {"get_info(foreign)", FLEXAVATAR_ERROR_INVALID_HANDLE, [&] { return flexavatar_runtime_get_info(foreign, &info); }},
      {"default_camera(foreign)", FLEXAVATAR_ERROR_INVALID_HANDLE,
       [&] { return flexavatar_runtime_default_camera(foreign, &camera); }},
      {"decode(foreign)", FLEXAVATAR_ERROR_INVALID_HANDLE,
       [&] { return flexavatar_runtime_decode(foreign, expression.data(), 135, nullptr); }},
      {"expression_head_pose(NULL)", FLEXAVATAR_ERROR_NULL_POINTER,
       [&] { return flexavatar_expression_head_pose(nullptr, 135, matrix); }},
      {"expression_head_pose(134)", FLEXAVATAR_ERROR_INVALID_SIZE,
       [&] { return flexavatar_expression_head_pose(expression.data(), 134, matrix); }},
      {"camera_apply_head_pose", FLEXAVATAR_ERROR_INVALID_ARGUMENT,  // zero 6D rotation
       [&] { return flexavatar_camera_apply_head_pose(&camera, expression.data(), 135); }},
      {"create(NULL)", FLEXAVATAR_ERROR_NULL_POINTER, [&] { return flexavatar_runtime_create(nullptr, nullptr, &rt); }},
      {"create(bad options)", FLEXAVATAR_ERROR_INVALID_ARGUMENT,
       [&] {
         flexavatar_runtime_options bad = options;
         bad.device = 9;
         return flexavatar_runtime_create("x", &bad, &rt);
       }},
      {"create(missing)", FLEXAVATAR_ERROR_BUNDLE_FILE_MISSING,
       [&] { return flexavatar_runtime_create("/nonexistent/bundle", nullptr, &rt); }},
      {"read_expressions(NULL)", FLEXAVATAR_ERROR_NULL_POINTER,
       [&] { return flexavatar_read_expressions(nullptr, nullptr, 0, &frames); }},
      {"read_expressions(missing)", FLEXAVATAR_ERROR_IO,
       [&] { return flexavatar_read_expressions("/nonexistent/seq.npz", nullptr, 0, &frames); }},
      {"read_photo(missing)", FLEXAVATAR_ERROR_IO,
       [&] { return flexavatar_read_photo("/nonexistent/photo.png", nullptr, 0, &width, &height); }},
      {"read_photo_camera(missing)", FLEXAVATAR_ERROR_IO,
       [&] { return flexavatar_read_photo_camera("/nonexistent/photo.npz", matrix, matrix); }},
      // Not swept: a manifest that is read. nlohmann::json's destructor (3.10+) allocates an explicit stack
      // for a non-empty array or object, in a noexcept function: a failure there terminates the program,
      // whatever the caller does. A limit of the JSON library, not of this C API.
  };
  for (const Case& c : cases) sweep(c);
  CHECK(rt == nullptr);
  g_allocations_left = 0;
  flexavatar_runtime_destroy(foreign);  // no allocation needed, nothing thrown
  g_allocations_left = -1;
}

HARNESS_MAIN()
