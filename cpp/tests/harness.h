// A tiny self-contained test harness (no third-party framework to install): TEST_CASE registers a
// function, CHECK/CHECK_NEAR record failures without stopping, main() runs everything and prints
// "N passed, M failed". Exit code 1 on any failure.
#pragma once

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace harness {

struct TestCase {
  const char* name;
  void (*fn)();
};

inline std::vector<TestCase>& registry() {
  static std::vector<TestCase> tests;
  return tests;
}
inline int& failures() {
  static int count = 0;
  return count;
}

struct Registrar {
  Registrar(const char* name, void (*fn)()) { registry().push_back({name, fn}); }
};

inline void fail(const char* file, int line, const std::string& what) {
  ++failures();
  std::printf("  FAILED %s:%d: %s\n", file, line, what.c_str());
}

inline int run_all() {
  int passed = 0, failed = 0;
  for (const auto& t : registry()) {
    const int before = failures();
    t.fn();
    const bool ok = failures() == before;
    std::printf("[%s] %s\n", ok ? "  OK  " : "FAILED", t.name);
    (ok ? passed : failed)++;
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}

}  // namespace harness

#define HARNESS_CONCAT2(a, b) a##b
#define HARNESS_CONCAT(a, b) HARNESS_CONCAT2(a, b)
#define TEST_CASE(name)                                                         \
  static void name();                                                           \
  static harness::Registrar HARNESS_CONCAT(registrar_, name)(#name, &name);     \
  static void name()

#define CHECK(cond)                                                      \
  do {                                                                   \
    if (!(cond)) harness::fail(__FILE__, __LINE__, "CHECK(" #cond ")"); \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                                               \
  do {                                                                                                      \
    const double va_ = static_cast<double>(a), vb_ = static_cast<double>(b);                               \
    if (!(std::fabs(va_ - vb_) <= (tol)))                                                                   \
      harness::fail(__FILE__, __LINE__,                                                                     \
                    std::string(#a " = ") + std::to_string(va_) + ", " #b " = " + std::to_string(vb_) +     \
                        " (tolerance " + std::to_string(tol) + ")");                                       \
  } while (0)

#define HARNESS_MAIN() \
  int main() { return harness::run_all(); }
