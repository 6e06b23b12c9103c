// gzip/zstd streaming encoders (gzip level 1: kiln's fast_deflate; other levels: libdeflate; zstd:
// libzstd), and decoders over zlib and libzstd.
#include "layers/compress.h"

#include <libdeflate.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "layers/deflate_splice.h"
#include "layers/fast_deflate.h"

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

// gzip, written in parallel and deterministically (see docs/store.md, "Gzip layers"): the plain
// stream is cut into pieces of kGzipPiece bytes (a constant of the layer format, never the thread
// count), each piece is compressed on its own, and the pieces are joined into one gzip member
// (all but the last non-final and byte-aligned by an empty stored block). Level 1 (the default)
// uses kiln's own encoder (layers/fast_deflate), which writes non-final pieces directly; levels
// 0 and 2-9 use libdeflate, whose pieces kiln walks to clear the final bit (deflate_splice). The
// bytes depend on the input and the level only (and for levels other than 1 on the libdeflate
// version): neither encoder dispatches on CPU features; libdeflate's only CPU dispatch is for
// checksums, whose values do not vary.
class GzipEncoder : public Encoder {
 public:
  GzipEncoder(ByteSink out, int level, int threads)
      : out_(std::move(out)), level_(level < 0 ? 1 : level), threads_(threads < 1 ? 1 : threads) {
    if (threads_ > 64) threads_ = 64;
    // mtime 0, no name, XFL 0, OS 255 ("unknown"): nothing of the machine or the time.
    static const unsigned char kHeader[10] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff};
    out_(kHeader, sizeof kHeader);
    cur_ = fresh_piece();
  }
  ~GzipEncoder() override {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
      todo_.clear();
    }
    cv_work_.notify_all();
    for (auto& t : workers_) t.join();
  }
  void write(const void* d, std::size_t n) override {
    const char* p = static_cast<const char*>(d);
    while (n) {
      // A full piece is sent only once more bytes follow: the last piece is the final one.
      if (cur_->in.size() == kGzipPiece) submit(false);
      std::size_t take = std::min(n, kGzipPiece - cur_->in.size());
      cur_->in.append(p, take);
      p += take;
      n -= take;
    }
  }
  void finish() override {
    submit(true);
    drain(0);
    unsigned char t[8];
    for (int i = 0; i < 4; ++i) t[i] = static_cast<unsigned char>(crc_ >> (8 * i));
    for (int i = 0; i < 4; ++i) t[4 + i] = static_cast<unsigned char>(isize_ >> (8 * i));
    out_(t, sizeof t);
  }

 private:
  struct Piece {
    std::string in, out;  // out: a buffer of the compress bound, out_len of it used
    std::size_t out_len = 0;
    std::uint32_t crc = 0;
    bool final = false, done = false;
    std::exception_ptr err;
  };
  struct Compressor {
    std::unique_ptr<FastDeflate> fast;  // level 1
    libdeflate_compressor* c = nullptr;  // other levels
    explicit Compressor(int level) {
      if (level == 1) {
        fast = std::make_unique<FastDeflate>();
        return;
      }
      c = libdeflate_alloc_compressor(level);
      if (!c) throw std::runtime_error("gzip: cannot create a libdeflate compressor (level " + std::to_string(level) + ")");
    }
    ~Compressor() {
      if (c) libdeflate_free_compressor(c);
    }
    Compressor(const Compressor&) = delete;
    Compressor& operator=(const Compressor&) = delete;
  };

  static void compress(Piece& p, Compressor& c) {
    p.crc = static_cast<std::uint32_t>(libdeflate_crc32(0, p.in.data(), p.in.size()));
    const auto* in = reinterpret_cast<const std::uint8_t*>(p.in.data());
    if (c.fast) {  // level 1: non-final pieces come out joinable, nothing to walk
      const std::size_t bound = fast_deflate_bound(kGzipPiece);
      if (p.out.size() < bound) p.out.resize(bound);  // buffers are reused: no zero-filling per piece
      p.out_len = c.fast->compress(in, p.in.size(), reinterpret_cast<std::uint8_t*>(p.out.data()), bound, p.final);
      return;
    }
    std::size_t bound = libdeflate_deflate_compress_bound(c.c, kGzipPiece) + 8;
    if (p.out.size() < bound) p.out.resize(bound);
    auto* o = reinterpret_cast<unsigned char*>(p.out.data());
    std::size_t n = libdeflate_deflate_compress(c.c, in, p.in.size(), o, bound - 8);
    if (n == 0) throw std::runtime_error("gzip: libdeflate compression failed");
    if (!p.final) n = make_nonfinal(o, n, walk_deflate(o, n));
    p.out_len = n;
  }

  std::shared_ptr<Piece> fresh_piece() {
    std::shared_ptr<Piece> p;
    {
      std::lock_guard<std::mutex> lk(m_);
      if (!pool_.empty()) {
        p = std::move(pool_.back());
        pool_.pop_back();
      }
    }
    if (!p) {
      p = std::make_shared<Piece>();
      p->in.reserve(kGzipPiece);
    }
    p->in.clear();
    p->final = p->done = false;
    p->err = nullptr;
    return p;
  }

  void submit(bool final) {
    std::shared_ptr<Piece> p = std::move(cur_);
    p->final = final;
    // Inline (one thread, or the whole stream is one piece: no threads to start): the same bytes.
    // The piece is compressed and emitted before the next one is taken, so that next one is this
    // one again: one piece's buffers per stream (2 MiB), not two.
    if (threads_ == 1 || (final && workers_.empty())) {
      if (!inline_) inline_ = std::make_unique<Compressor>(level_);
      compress(*p, *inline_);
      emit(p);
      if (!final) cur_ = fresh_piece();
      return;
    }
    if (!final) cur_ = fresh_piece();
    if (workers_.empty()) {
      for (int i = 0; i < threads_; ++i) workers_.emplace_back([this] { work(); });
    }
    {
      std::lock_guard<std::mutex> lk(m_);
      inflight_.push_back(p);
      todo_.push_back(p);
    }
    cv_work_.notify_one();
    drain(static_cast<std::size_t>(threads_) + 1);  // bounded memory: one piece per thread, and one more
  }

  /// Emits finished pieces in order until at most `keep` are in flight.
  void drain(std::size_t keep) {
    for (;;) {
      std::shared_ptr<Piece> p;
      {
        std::unique_lock<std::mutex> lk(m_);
        if (inflight_.size() <= keep) return;
        cv_done_.wait(lk, [&] { return inflight_.front()->done; });
        p = std::move(inflight_.front());
        inflight_.pop_front();
      }
      if (p->err) std::rethrow_exception(p->err);
      emit(p);
    }
  }

  void emit(std::shared_ptr<Piece>& p) {
    out_(p->out.data(), p->out_len);
    crc_ = static_cast<std::uint32_t>(crc32_combine(crc_, p->crc, static_cast<z_off_t>(p->in.size())));
    isize_ += static_cast<std::uint32_t>(p->in.size());  // ISIZE: the length modulo 2^32
    std::lock_guard<std::mutex> lk(m_);
    pool_.push_back(std::move(p));  // at most threads + 2 pieces ever exist
  }

  void work() {
    std::unique_ptr<Compressor> c;
    for (;;) {
      std::shared_ptr<Piece> p;
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_work_.wait(lk, [&] { return stop_ || !todo_.empty(); });
        if (stop_) return;
        p = std::move(todo_.front());
        todo_.pop_front();
      }
      try {
        if (!c) c = std::make_unique<Compressor>(level_);
        compress(*p, *c);
      } catch (...) {
        p->err = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lk(m_);
        p->done = true;
      }
      cv_done_.notify_all();
    }
  }

  ByteSink out_;
  int level_;
  int threads_;
  std::shared_ptr<Piece> cur_;
  std::unique_ptr<Compressor> inline_;
  std::uint32_t crc_ = 0, isize_ = 0;

  std::mutex m_;
  std::condition_variable cv_work_, cv_done_;
  std::deque<std::shared_ptr<Piece>> inflight_;  // submitted, not yet emitted, in stream order
  std::deque<std::shared_ptr<Piece>> todo_;      // submitted, not yet taken by a worker
  std::vector<std::shared_ptr<Piece>> pool_;     // emitted pieces, their buffers kept for reuse
  std::vector<std::thread> workers_;
  bool stop_ = false;
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

std::unique_ptr<Encoder> make_encoder(Compression c, ByteSink out, int level, int threads) {
  switch (c) {
    case Compression::Gzip: return std::make_unique<GzipEncoder>(std::move(out), level, threads);
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
