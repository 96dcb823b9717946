// What differs between POSIX and Windows, in one place: opening files by UTF-8 path, loading shared libraries,
// and the folder of the binary that holds some code. Internal to the core and the runtime (not installed).
#pragma once

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

namespace flexavatar {
namespace platform {

// A UTF-8 path as a filesystem path: on Windows its UTF-16 form, so a name outside the ANSI code page opens too.
std::filesystem::path fs_path(const std::string& utf8);
// std::fopen by UTF-8 path (Windows: _wfopen); nullptr when it cannot be opened.
std::FILE* open_file(const std::string& utf8, const char* mode);
// The whole of a file by UTF-8 path into *out; kTooLarge (and stops reading) past max_bytes.
enum class ReadResult { kOk, kCannotOpen, kReadError, kTooLarge };
ReadResult read_file(const std::string& utf8, size_t max_bytes, std::vector<unsigned char>* out);
// The folder (with a trailing separator) of the shared library or executable whose code holds `address`; "" when
// the system cannot say.
std::string module_directory(const void* address);

// A shared library loaded at run time (dlopen / LoadLibraryW); closed by close() or by the owner, not here.
struct SharedLibrary {
  void* handle = nullptr;
  // false with *error the loader's message when `path` cannot be loaded.
  bool open(const std::string& path, std::string* error);
  void* symbol(const char* name) const;
  void close();
};

}  // namespace platform
}  // namespace flexavatar
