// gzip/zstd streaming encoders and decoders over zlib and libzstd.
#include "layers/compress.h"

#include <zlib.h>
#include <zstd.h>

#include <stdexcept>
#include <vector>

namespace kiln::layers {

namespace {

constexpr std::size_t kOutChunk = 1 << 18;

class PassThrough : public Encoder {
 public:
  explicit PassThrough(ByteSink out) : out_(std::move(out)) {}
  void write(const void* d, std::size_t n) override { if (n) out_(d, n); }
  void finish() override {}

 private:
  ByteSink out_;
};

class GzipEncoder : public Encoder {
 public:
  GzipEncoder(ByteSink out, int level) : out_(std::move(out)), buf_(kOutChunk) {
    // windowBits 15+16: gzip wrapper with mtime 0, no file name, OS byte fixed by zlib. Level 1
    // by default, as go-containerregistry and ko use: layers are written far more often than
    // their few extra bytes cost to move.
    if (deflateInit2(&z_, level < 0 ? 1 : level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
      throw std::runtime_error("gzip: deflateInit2 failed");
  }
  ~GzipEncoder() override { deflateEnd(&z_); }
  void write(const void* d, std::size_t n) override { pump(d, n, Z_NO_FLUSH); }
  void finish() override { pump(nullptr, 0, Z_FINISH); }

 private:
  void pump(const void* d, std::size_t n, int flush) {
    z_.next_in = static_cast<Bytef*>(const_cast<void*>(d));
    z_.avail_in = static_cast<uInt>(n);
    for (;;) {
      z_.next_out = reinterpret_cast<Bytef*>(buf_.data());
      z_.avail_out = static_cast<uInt>(buf_.size());
      int rc = deflate(&z_, flush);
      if (rc == Z_STREAM_ERROR) throw std::runtime_error("gzip: deflate failed");
      std::size_t have = buf_.size() - z_.avail_out;
      if (have) out_(buf_.data(), have);
      if (flush == Z_FINISH ? rc == Z_STREAM_END : (z_.avail_in == 0 && z_.avail_out != 0)) break;
    }
  }
  ByteSink out_;
  z_stream z_{};
  std::vector<char> buf_;
};

class ZstdEncoder : public Encoder {
 public:
  ZstdEncoder(ByteSink out, int level) : out_(std::move(out)), cctx_(ZSTD_createCCtx()), buf_(ZSTD_CStreamOutSize()) {
    if (!cctx_) throw std::runtime_error("zstd: cannot create context");
    ZSTD_CCtx_setParameter(cctx_, ZSTD_c_compressionLevel, level < 0 ? 3 : level);
    ZSTD_CCtx_setParameter(cctx_, ZSTD_c_checksumFlag, 1);
    // Single-threaded on purpose: multi-threaded zstd writes other bytes than single-threaded
    // zstd, and a libzstd built without threads would silently fall back, so a worker count
    // would make the digest depend on how the library was built. Parallelism comes from
    // building several layers at once instead.
  }
  ~ZstdEncoder() override { ZSTD_freeCCtx(cctx_); }
  void write(const void* d, std::size_t n) override {
    ZSTD_inBuffer in{d, n, 0};
    while (in.pos < in.size) pump(&in, ZSTD_e_continue);
  }
  void finish() override {
    ZSTD_inBuffer in{nullptr, 0, 0};
    while (pump(&in, ZSTD_e_end) != 0) {
    }
  }

 private:
  std::size_t pump(ZSTD_inBuffer* in, ZSTD_EndDirective mode) {
    ZSTD_outBuffer o{buf_.data(), buf_.size(), 0};
    std::size_t rem = ZSTD_compressStream2(cctx_, &o, in, mode);
    if (ZSTD_isError(rem)) throw std::runtime_error(std::string("zstd: ") + ZSTD_getErrorName(rem));
    if (o.pos) out_(buf_.data(), o.pos);
    return rem;
  }
  ByteSink out_;
  ZSTD_CCtx* cctx_;
  std::vector<char> buf_;
};

class GzipDecoder : public Encoder {
 public:
  explicit GzipDecoder(ByteSink out) : out_(std::move(out)), buf_(kOutChunk) {
    if (inflateInit2(&z_, 15 + 32) != Z_OK) throw std::runtime_error("gzip: inflateInit2 failed");
  }
  ~GzipDecoder() override { inflateEnd(&z_); }
  void write(const void* d, std::size_t n) override {
    z_.next_in = static_cast<Bytef*>(const_cast<void*>(d));
    z_.avail_in = static_cast<uInt>(n);
    while (z_.avail_in > 0) {
      if (ended_) {  // concatenated gzip members
        inflateReset(&z_);
        ended_ = false;
      }
      z_.next_out = reinterpret_cast<Bytef*>(buf_.data());
      z_.avail_out = static_cast<uInt>(buf_.size());
      int rc = inflate(&z_, Z_NO_FLUSH);
      if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR)
        throw std::runtime_error("gzip: corrupt data");
      std::size_t have = buf_.size() - z_.avail_out;
      if (have) out_(buf_.data(), have);
      if (rc == Z_STREAM_END) ended_ = true;
      if (rc == Z_BUF_ERROR && have == 0) break;
    }
  }
  void finish() override {
    if (!ended_) throw std::runtime_error("gzip: truncated stream");
  }

 private:
  ByteSink out_;
  z_stream z_{};
  std::vector<char> buf_;
  bool ended_ = false;
};

class ZstdDecoder : public Encoder {
 public:
  explicit ZstdDecoder(ByteSink out) : out_(std::move(out)), dctx_(ZSTD_createDCtx()), buf_(ZSTD_DStreamOutSize()) {}
  ~ZstdDecoder() override { ZSTD_freeDCtx(dctx_); }
  void write(const void* d, std::size_t n) override {
    ZSTD_inBuffer in{d, n, 0};
    while (in.pos < in.size) {
      ZSTD_outBuffer o{buf_.data(), buf_.size(), 0};
      last_ = ZSTD_decompressStream(dctx_, &o, &in);
      if (ZSTD_isError(last_)) throw std::runtime_error(std::string("zstd: ") + ZSTD_getErrorName(last_));
      if (o.pos) out_(buf_.data(), o.pos);
    }
  }
  void finish() override {
    // Drain output the decoder still holds (the last write may have filled the output buffer).
    // Once a frame is complete and flushed (last_ == 0) there is nothing to drain: calling again
    // would start a new frame and return its header size hint, i.e. look "truncated".
    while (last_ != 0) {
      ZSTD_inBuffer in{nullptr, 0, 0};
      ZSTD_outBuffer o{buf_.data(), buf_.size(), 0};
      last_ = ZSTD_decompressStream(dctx_, &o, &in);
      if (ZSTD_isError(last_)) throw std::runtime_error(std::string("zstd: ") + ZSTD_getErrorName(last_));
      if (o.pos) out_(buf_.data(), o.pos);
      if (o.pos < o.size) break;
    }
    if (last_ != 0) throw std::runtime_error("zstd: truncated stream");
  }

 private:
  ByteSink out_;
  ZSTD_DCtx* dctx_;
  std::vector<char> buf_;
  std::size_t last_ = 1;  // nothing decoded yet: an empty input is not a zstd stream
};

}  // namespace

std::unique_ptr<Encoder> make_encoder(Compression c, ByteSink out, int level) {
  switch (c) {
    case Compression::Gzip: return std::make_unique<GzipEncoder>(std::move(out), level);
    case Compression::Zstd: return std::make_unique<ZstdEncoder>(std::move(out), level);
    case Compression::None: break;
  }
  return std::make_unique<PassThrough>(std::move(out));
}

std::unique_ptr<Encoder> make_decoder(Compression c, ByteSink out) {
  switch (c) {
    case Compression::Gzip: return std::make_unique<GzipDecoder>(std::move(out));
    case Compression::Zstd: return std::make_unique<ZstdDecoder>(std::move(out));
    case Compression::None: break;
  }
  return std::make_unique<PassThrough>(std::move(out));
}

const char* layer_media_type(Compression c) {
  switch (c) {
    case Compression::Gzip: return "application/vnd.oci.image.layer.v1.tar+gzip";
    case Compression::Zstd: return "application/vnd.oci.image.layer.v1.tar+zstd";
    case Compression::None: break;
  }
  return "application/vnd.oci.image.layer.v1.tar";
}

Compression compression_of_media_type(const std::string& mt) {
  auto ends = [&](const char* s) {
    std::string x(s);
    return mt.size() >= x.size() && mt.compare(mt.size() - x.size(), x.size(), x) == 0;
  };
  if (ends("tar+gzip") || ends("tar.gzip") || mt == "application/vnd.docker.image.rootfs.diff.tar.gzip")
    return Compression::Gzip;
  if (ends("tar+zstd")) return Compression::Zstd;
  if (ends(".tar") || ends("layer.v1.tar") || mt == "application/vnd.docker.image.rootfs.diff.tar")
    return Compression::None;
  throw std::runtime_error("unsupported layer media type: " + mt);
}

bool worth_compressing(const void* sample, std::size_t n) {
  if (n < 4096) return true;
  std::vector<char> out(ZSTD_compressBound(n));
  std::size_t r = ZSTD_compress(out.data(), out.size(), sample, n, 1);
  if (ZSTD_isError(r)) return true;
  return r < n * 9 / 10;
}

}  // namespace kiln::layers
