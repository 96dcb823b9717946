#include "platform.h"

#include <memory>

#if defined(_WIN32)
#ifndef NOMINMAX
#define NOMINMAX
#endif
#include <windows.h>
#else
#include <dlfcn.h>
#endif

namespace flexavatar {
namespace platform {

std::filesystem::path fs_path(const std::string& utf8) {
#if defined(_WIN32)
  return std::filesystem::u8path(utf8);
#else
  return std::filesystem::path(utf8);  // bytes as they are: what the kernel takes
#endif
}

std::FILE* open_file(const std::string& utf8, const char* mode) {
#if defined(_WIN32)
  const std::wstring wide_mode(mode, mode + std::char_traits<char>::length(mode));
  return ::_wfopen(fs_path(utf8).c_str(), wide_mode.c_str());
#else
  return std::fopen(utf8.c_str(), mode);
#endif
}

ReadResult read_file(const std::string& utf8, size_t max_bytes, std::vector<unsigned char>* out) {
  out->clear();
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(open_file(utf8, "rb"), &std::fclose);
  if (!file) return ReadResult::kCannotOpen;
  unsigned char chunk[1 << 16];
  size_t got;
  while ((got = std::fread(chunk, 1, sizeof chunk, file.get())) > 0) {
    if (got > max_bytes - out->size()) return ReadResult::kTooLarge;
    out->insert(out->end(), chunk, chunk + got);
  }
  return std::ferror(file.get()) ? ReadResult::kReadError : ReadResult::kOk;
}

std::string module_directory(const void* address) {
#if defined(_WIN32)
  HMODULE module = nullptr;
  if (!::GetModuleHandleExW(GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS | GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
                            static_cast<LPCWSTR>(address), &module))
    return {};
  std::wstring file(32768, L'\0');
  const DWORD n = ::GetModuleFileNameW(module, file.data(), DWORD(file.size()));
  if (n == 0 || n >= file.size()) return {};
  file.resize(n);
  const std::filesystem::path dir = std::filesystem::path(file).parent_path();
  return dir.empty() ? std::string() : dir.u8string() + "\\";
#else
  Dl_info info;
  if (dladdr(const_cast<void*>(address), &info) == 0 || !info.dli_fname) return {};
  const std::string file = info.dli_fname;
  const size_t slash = file.find_last_of('/');
  return slash == std::string::npos ? std::string() : file.substr(0, slash + 1);
#endif
}

bool SharedLibrary::open(const std::string& path, std::string* error) {
#if defined(_WIN32)
  handle = reinterpret_cast<void*>(::LoadLibraryW(fs_path(path).c_str()));
  if (!handle && error) *error = "LoadLibrary failed (Windows error " + std::to_string(::GetLastError()) + ")";
#else
  handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle && error) {
    const char* e = ::dlerror();
    *error = e ? e : "not loadable";
  }
#endif
  return handle != nullptr;
}

void* SharedLibrary::symbol(const char* name) const {
  if (!handle) return nullptr;
#if defined(_WIN32)
  return reinterpret_cast<void*>(::GetProcAddress(static_cast<HMODULE>(handle), name));
#else
  return ::dlsym(handle, name);
#endif
}

void SharedLibrary::close() {
  if (!handle) return;
#if defined(_WIN32)
  ::FreeLibrary(static_cast<HMODULE>(handle));
#else
  ::dlclose(handle);
#endif
  handle = nullptr;
}

}  // namespace platform
}  // namespace flexavatar
