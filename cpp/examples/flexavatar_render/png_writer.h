// A minimal PNG writer (8-bit RGBA, no compression: zlib "stored" blocks), self-written so the example
// needs nothing beyond the flexavatar package. Files are ~4 bytes per pixel.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

// Returns false (and sets *error) if the file cannot be written.
bool write_png_rgba(const std::filesystem::path& path, const uint8_t* rgba, int width, int height, std::string* error);
