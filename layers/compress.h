// Streaming compressors (gzip: level 1 by kiln's fast_deflate, other levels by libdeflate; zstd via
// libzstd) and decompressors, as byte sinks.
//
// Output is deterministic for a given library version: gzip is cut into fixed pieces of
// kGzipPiece bytes compressed independently (in parallel when threads > 1) and joined into one
// gzip member with mtime 0 and no name, so the bytes never depend on the thread count, the core
// count or the CPU's features; zstd runs single-threaded.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "spec/image_spec.h"

namespace kiln::layers {

using spec::Compression;

/// Receives bytes; returns nothing, throws on failure.
using ByteSink = std::function<void(const void* data, std::size_t n)>;

/// A streaming encoder: push plain bytes with write(), then finish() once.
class Encoder {
 public:
  virtual ~Encoder() = default;
  virtual void write(const void* data, std::size_t n) = 0;
  virtual void finish() = 0;
};

/// The gzip piece size: part of the layer format (changing it changes every gzip layer's bytes).
inline constexpr std::size_t kGzipPiece = std::size_t{1} << 20;

/// An encoder for `c` that forwards its output to `out`. Compression::None passes bytes through.
/// `threads` (gzip only) compress pieces in parallel; the output is the same for every value.
std::unique_ptr<Encoder> make_encoder(Compression c, ByteSink out, int level = -1, int threads = 1);

/// A streaming decoder for gzip / zstd / none that forwards plain bytes to `out`.
std::unique_ptr<Encoder> make_decoder(Compression c, ByteSink out);

/// The OCI layer media type for a compression.
const char* layer_media_type(Compression c);
/// The compression a layer media type implies (throws on an unknown media type).
Compression compression_of_media_type(const std::string& media_type);

/// Does compressing this sample with a fast codec save at least 10%?
bool worth_compressing(const void* sample, std::size_t n);

}  // namespace kiln::layers
