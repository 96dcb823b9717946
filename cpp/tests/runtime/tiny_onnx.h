// A tiny valid decoder graph for tests that need a live runtime without an exported bundle: ONNX's
// protobuf written by hand (a few wire-format fields), so no Python or onnx library is needed at test time.
// The graph takes code [1, R2, D] and expressions [1, E] (unused) and returns constant Gaussians:
// means [1, G, 3] = 0, quats [1, G, 4] = (1, 0, 0, 0), scales [1, G, 3] = 0.01, opacities [1, G] = 0.5,
// sh0 [1, G, 3] = 0 (Constant nodes, opset 18).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace tiny_onnx {

// protobuf wire format: a field is (number << 3 | type), then a varint (type 0) or length + bytes (type 2).
inline std::string varint(uint64_t v) {
  std::string out;
  do {
    out += char((v & 0x7F) | (v > 0x7F ? 0x80 : 0));
    v >>= 7;
  } while (v);
  return out;
}
inline std::string field(int number, uint64_t value) { return varint(uint64_t(number) << 3) + varint(value); }
inline std::string field(int number, const std::string& bytes) {
  return varint(uint64_t(number) << 3 | 2) + varint(bytes.size()) + bytes;
}

// ValueInfoProto{name, type: TypeProto{tensor_type{elem_type FLOAT, shape{dim{dim_value}}...}}}
inline std::string float_tensor_info(const std::string& name, const std::vector<int64_t>& shape) {
  std::string dims;
  for (int64_t d : shape) dims += field(1, field(1, uint64_t(d)));
  return field(1, name) + field(2, field(1, field(1, 1) + field(2, dims)));
}

// NodeProto{output, op_type "Constant", attribute{name "value", t: TensorProto{dims, FLOAT, raw_data}, TENSOR}}
inline std::string constant_node(const std::string& output, const std::vector<int64_t>& shape, const float* pattern,
                                 size_t pattern_size) {
  std::string tensor;
  size_t count = 1;
  for (int64_t d : shape) {
    tensor += field(1, uint64_t(d));
    count *= size_t(d);
  }
  std::string raw(count * sizeof(float), '\0');
  for (size_t i = 0; i < count; ++i) std::memcpy(&raw[i * sizeof(float)], &pattern[i % pattern_size], sizeof(float));
  tensor += field(2, 1) + field(9, raw);
  const std::string attribute = field(1, "value") + field(5, tensor) + field(20, 4);
  return field(2, output) + field(4, "Constant") + field(5, attribute);
}

// ModelProto bytes of the decoder described above.
inline std::string decoder(int64_t gaussians, int64_t head_tokens, int64_t code_dim, int64_t expression_dim) {
  const int64_t g = gaussians;
  const float zero[] = {0.f}, quat[] = {1.f, 0.f, 0.f, 0.f}, scale[] = {0.01f}, half[] = {0.5f};
  std::string graph;
  graph += field(1, constant_node("means", {1, g, 3}, zero, 1));
  graph += field(1, constant_node("quats", {1, g, 4}, quat, 4));
  graph += field(1, constant_node("scales", {1, g, 3}, scale, 1));
  graph += field(1, constant_node("opacities", {1, g}, half, 1));
  graph += field(1, constant_node("sh0", {1, g, 3}, zero, 1));
  graph += field(2, "tiny_decoder");
  graph += field(11, float_tensor_info("code", {1, head_tokens, code_dim}));
  graph += field(11, float_tensor_info("expressions", {1, expression_dim}));
  graph += field(12, float_tensor_info("means", {1, g, 3}));
  graph += field(12, float_tensor_info("quats", {1, g, 4}));
  graph += field(12, float_tensor_info("scales", {1, g, 3}));
  graph += field(12, float_tensor_info("opacities", {1, g}));
  graph += field(12, float_tensor_info("sh0", {1, g, 3}));
  // ir_version 8, opset_import {domain "", version 18}, graph
  return field(1, 8) + field(8, field(1, std::string()) + field(2, 18)) + field(7, graph);
}

// ModelProto bytes of y = Identity(x), x and y float [E, width] with a dynamic dim named "E" (dim_param).
inline std::string dynamic_identity(int64_t width) {
  const std::string dims = field(1, field(2, std::string("E"))) + field(1, field(1, uint64_t(width)));
  auto info = [&](const std::string& name) { return field(1, name) + field(2, field(1, field(1, 1) + field(2, dims))); };
  std::string graph = field(1, field(1, std::string("x")) + field(2, std::string("y")) + field(4, std::string("Identity")));
  graph += field(2, "dynamic_identity") + field(11, info("x")) + field(12, info("y"));
  return field(1, 8) + field(8, field(1, std::string()) + field(2, 18)) + field(7, graph);
}

}  // namespace tiny_onnx
