// Unit tests for layers/store: blobs, the layer cache, the on-disk VERSION, usage and prune, and
// the StatIndex (round trip, racy entries, no rewrite when nothing changed).
#include "layers/store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "layers/digest.h"
#include "testutil.h"

using namespace kiln::layers;
using kiln::testutil::contains;
using kiln::testutil::TempDir;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> names_in(const fs::path& dir) {
  std::set<std::string> s;
  for (auto& e : fs::directory_iterator(dir)) s.insert(e.path().filename().string());
  return {s.begin(), s.end()};
}

/// Sets a file's mtime (and atime) to `seconds_ago` before now.
void age(const fs::path& p, int seconds_ago) {
  struct timespec ts[2];
  ::clock_gettime(CLOCK_REALTIME, &ts[0]);
  ts[0].tv_sec -= seconds_ago;
  ts[1] = ts[0];
  REQUIRE(::utimensat(AT_FDCWD, p.c_str(), ts, AT_SYMLINK_NOFOLLOW) == 0);
}

struct FileId {
  ino_t ino = 0;
  std::int64_t mtime_ns = 0;
  bool operator==(const FileId&) const = default;
};
FileId file_id(const fs::path& p) {
  struct stat st{};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return {st.st_ino, std::int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

StatIndex::Key old_key(std::uint64_t size, std::uint64_t ino) {
  StatIndex::Key k;
  k.size = size;
  k.ino = ino;
  k.dev = 2049;
  k.mtime_ns = 1600000000ll * 1000000000 + 123;  // 2020: long before any index write
  k.ctime_ns = 1600000001ll * 1000000000 + 456;
  return k;
}

LayerRecord record_for(const Store& s, const std::string& bytes) {
  LayerRecord r;
  r.digest = s.put_bytes(bytes);
  r.diff_id = sha256_digest("tar of " + bytes);
  r.media_type = "application/vnd.oci.image.layer.v1.tar+gzip";
  r.size = bytes.size();
  r.tar_size = bytes.size() * 3;
  return r;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Store layout and blobs

TEST_CASE("store: a new store creates its layout and VERSION") {
  TempDir tmp;
  Store s(tmp / "cache");
  CHECK(s.root() == tmp / "cache");
  CHECK(kiln::testutil::read_file(tmp / "cache" / "VERSION") == "kiln-store 1\n");
  for (const char* d : {"blobs/sha256", "layers", "stat", "tmp"}) CHECK(fs::is_directory(tmp / "cache" / d));
  CHECK(names_in(tmp / "cache" / "tmp").empty());
  // Reopening an existing store works and does not rewrite VERSION.
  FileId v = file_id(tmp / "cache" / "VERSION");
  Store again(tmp / "cache");
  CHECK(file_id(tmp / "cache" / "VERSION") == v);
}

TEST_CASE("store: VERSION mismatch throws a clear error") {
  TempDir tmp;
  fs::create_directories(tmp / "cache");
  kiln::testutil::write_file(tmp / "cache" / "VERSION", "kiln-store 2\n");
  try {
    Store s(tmp / "cache");
    FAIL("expected an exception");
  } catch (const std::runtime_error& e) {
    const std::string msg = e.what();
    CHECK(contains(msg, "kiln-store 2"));
    CHECK(contains(msg, "kiln-store 1"));
    CHECK(contains(msg, (tmp / "cache").string()));
    CHECK(contains(msg, "KILN_CACHE"));
  }
  // The foreign store is left alone.
  CHECK(kiln::testutil::read_file(tmp / "cache" / "VERSION") == "kiln-store 2\n");
  CHECK_FALSE(fs::exists(tmp / "cache" / "blobs"));

  kiln::testutil::write_file(tmp / "cache" / "VERSION", "something else entirely");
  CHECK_THROWS_WITH(Store(tmp / "cache"), Catch::Contains("something else entirely"));
}

TEST_CASE("store: blob write, commit and lookup") {
  TempDir tmp;
  Store s(tmp / "cache");
  // Mixed write sizes: small buffered writes, one write larger than the 1 MiB buffer.
  std::string data = kiln::testutil::random_bytes(3 << 20, 5);
  std::string written;
  auto w = s.new_blob();
  std::size_t pos = 0;
  for (std::size_t n : {std::size_t{1}, std::size_t{100}, std::size_t{1} << 20, std::size_t{4095},
                        (std::size_t{3} << 20) - (1 << 20) - 4196 - 1000, std::size_t{1000}}) {
    w->write(data.data() + pos, n);
    pos += n;
  }
  REQUIRE(pos == data.size());
  // In flight: only in tmp/.
  CHECK(names_in(tmp / "cache" / "tmp").size() == 1);
  CHECK(names_in(tmp / "cache" / "blobs" / "sha256").empty());
  const std::string d = sha256_digest(data);
  CHECK_FALSE(s.has_blob(d));
  fs::path p = w->commit(d);
  CHECK(p == s.blob_path(d));
  CHECK(s.blob_path(d) == tmp / "cache" / "blobs" / "sha256" / std::string(digest_hex(d)));
  CHECK(s.has_blob(d));
  CHECK(kiln::testutil::read_file(p) == data);
  CHECK(s.read_bytes(d) == data);
  CHECK(names_in(tmp / "cache" / "tmp").empty());
  w.reset();  // destroying a committed writer removes nothing
  CHECK(s.has_blob(d));
  CHECK_THROWS_AS(s.blob_path("sha256:nothex"), std::invalid_argument);
}

namespace {
/// Writes `data` into a new blob of `s` in pieces of the sizes `pieces` gives (cycled), commits it
/// and checks the stored bytes.
void blob_round_trip(Store& s, const std::string& data, const std::vector<std::size_t>& pieces) {
  auto w = s.new_blob();
  std::size_t pos = 0;
  for (std::size_t k = 0; pos < data.size(); ++k) {
    const std::size_t n = std::min(data.size() - pos, pieces[k % pieces.size()]);
    w->write(data.data() + pos, n);
    pos += n;
  }
  const std::string d = sha256_digest(data);
  w->commit(d);
  REQUIRE(s.has_blob(d));
  CHECK(kiln::testutil::read_file(s.blob_path(d)) == data);
}
}  // namespace

TEST_CASE("store: big blobs written past the page cache keep every byte, at every boundary") {
  // From 8 MiB on, a blob is written with O_DIRECT in aligned 1 MiB pieces from two buffers (the
  // lead up to an aligned offset and the unaligned tail through the page cache). Sizes around each
  // boundary, pieces of odd sizes, of one byte at the switch, and one write of the whole blob.
  TempDir tmp;
  Store s(tmp / "cache");
  const std::size_t M = std::size_t{1} << 20;
  int seed = 40;
  for (std::size_t size : {8 * M - 1, 8 * M, 8 * M + 1, 8 * M + 4095, 9 * M, 10 * M + 4096, 20 * M + 123}) {
    const std::string data = kiln::testutil::random_bytes(size, ++seed);
    for (const std::vector<std::size_t>& pieces :
         {std::vector<std::size_t>{300001}, {size}, {8 * M - 3, 1, 1, 1, 1, 1, 4095, M + 7}, {10240},
          {4096, 4096, 1}}) {
      INFO("size " << size << ", first piece " << pieces.front());
      blob_round_trip(s, data, pieces);
    }
  }
}

TEST_CASE("store: big blobs on a file system without O_DIRECT (tmpfs) stay buffered and whole") {
  std::error_code ec;
  if (!fs::is_directory("/dev/shm", ec)) {
    WARN("skipped: no /dev/shm (tmpfs) on this machine");
    return;
  }
  TempDir tmp;  // (for the prefix only: the store itself goes to /dev/shm)
  const fs::path root = fs::path("/dev/shm") / tmp.path().filename();
  struct Remove {
    fs::path p;
    ~Remove() {
      std::error_code e;
      fs::remove_all(p, e);
    }
  } remove{root};
  Store s(root / "cache");
  const std::string data = kiln::testutil::random_bytes((std::size_t{13} << 20) + 77, 61);
  blob_round_trip(s, data, {300001});
  blob_round_trip(s, data + "x", {std::size_t{1} << 20});
}

TEST_CASE("store: an uncommitted BlobWriter leaves no file") {
  TempDir tmp;
  Store s(tmp / "cache");
  {
    auto w = s.new_blob();
    std::string data = kiln::testutil::random_bytes(3 << 20, 9);
    w->write(data.data(), data.size());
    w->write("tail", 4);
    CHECK(names_in(tmp / "cache" / "tmp").size() == 1);
  }
  CHECK(names_in(tmp / "cache" / "tmp").empty());
  CHECK(names_in(tmp / "cache" / "blobs" / "sha256").empty());
}

TEST_CASE("store: blobs past the writeback threshold, written side by side, committed or dropped") {
  // Every 8 MiB a blob's writeback is handed to the writeback thread, with a duplicate of its
  // descriptor: three writers at once (two committed, one dropped mid-way) keep their own bytes,
  // and the dropped one leaves nothing even while its ranges may still be queued.
  TempDir tmp;
  Store s(tmp / "cache");
  auto one = [&](int seed, bool commit) {
    const std::string data = kiln::testutil::random_bytes((std::size_t{27} << 20) + 123, seed);
    auto w = s.new_blob();
    for (std::size_t pos = 0; pos < data.size();) {
      const std::size_t n = std::min<std::size_t>(data.size() - pos, 300000 + std::size_t(seed) * 7);
      w->write(data.data() + pos, n);
      pos += n;
    }
    if (!commit) return std::string();
    const std::string d = sha256_digest(data);
    w->commit(d);
    return d;
  };
  auto a = std::async(std::launch::async, one, 21, true);
  auto b = std::async(std::launch::async, one, 22, false);
  const std::string c = one(23, true);
  const std::string da = a.get();
  b.get();
  CHECK(s.has_blob(da));
  CHECK(s.has_blob(c));
  CHECK(sha256_digest(s.read_bytes(da)) == da);
  CHECK(sha256_digest(s.read_bytes(c)) == c);
  CHECK(names_in(tmp / "cache" / "blobs" / "sha256").size() == 2);
  CHECK(names_in(tmp / "cache" / "tmp").empty());
}

TEST_CASE("store: a commit with a malformed digest throws and leaves no file") {
  TempDir tmp;
  Store s(tmp / "cache");
  {
    auto w = s.new_blob();
    w->write("abc", 3);
    CHECK_THROWS_AS(w->commit("sha256:not-a-digest"), std::invalid_argument);
  }
  CHECK(names_in(tmp / "cache" / "tmp").empty());
  CHECK(names_in(tmp / "cache" / "blobs" / "sha256").empty());
}

TEST_CASE("store: put_bytes is idempotent") {
  TempDir tmp;
  Store s(tmp / "cache");
  const std::string cfg = R"({"architecture":"amd64"})";
  const std::string d = s.put_bytes(cfg);
  CHECK(d == sha256_digest(cfg));
  FileId first = file_id(s.blob_path(d));
  CHECK(s.put_bytes(cfg) == d);
  CHECK(file_id(s.blob_path(d)) == first);  // not rewritten
  CHECK(names_in(tmp / "cache" / "blobs" / "sha256") == std::vector<std::string>{std::string(digest_hex(d))});
  CHECK(s.read_bytes(d) == cfg);
  // The empty blob is a blob too.
  const std::string e = s.put_bytes("");
  CHECK(e == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(s.read_bytes(e) == "");
  CHECK(names_in(tmp / "cache" / "tmp").empty());
}

TEST_CASE("store: read_bytes detects a corrupted or missing blob") {
  TempDir tmp;
  Store s(tmp / "cache");
  const std::string d = s.put_bytes("manifest bytes");
  kiln::testutil::write_file(s.blob_path(d), "manifest bytez");
  CHECK_THROWS_WITH(s.read_bytes(d), Catch::Contains("corrupt") && Catch::Contains(d));
  kiln::testutil::write_file(s.blob_path(d), "");
  CHECK_THROWS_WITH(s.read_bytes(d), Catch::Contains("corrupt"));
  fs::remove(s.blob_path(d));
  CHECK_THROWS_WITH(s.read_bytes(d), Catch::Contains("missing") && Catch::Contains(d));
}

TEST_CASE("store: put_file verifies the content and stores it") {
  TempDir tmp;
  Store s(tmp / "cache");
  const std::string data = kiln::testutil::random_bytes(70000, 3);
  kiln::testutil::write_file(tmp / "layer.tar.gz", data);
  const std::string d = sha256_digest(data);
  CHECK_THROWS_WITH(s.put_file(tmp / "layer.tar.gz", sha256_digest("other")), Catch::Contains("does not match"));
  CHECK_FALSE(s.has_blob(sha256_digest("other")));
  s.put_file(tmp / "layer.tar.gz", d);
  CHECK(s.has_blob(d));
  CHECK(kiln::testutil::read_file(s.blob_path(d)) == data);
  CHECK(names_in(tmp / "cache" / "tmp").empty());
  s.put_file(tmp / "layer.tar.gz", d);  // already there: no-op
  CHECK(names_in(tmp / "cache" / "blobs" / "sha256").size() == 1);
}

// ---------------------------------------------------------------------------------------------
// Layer cache

TEST_CASE("store: put_layer / find_layer round trip") {
  TempDir tmp;
  Store s(tmp / "cache");
  const std::string blob = kiln::testutil::random_bytes(5000, 4);
  LayerRecord r = record_for(s, blob);
  r.media_type = "application/vnd.oci.image.layer.v1.tar+zstd";
  r.tar_size = 10240;
  s.put_layer("key1", r);
  CHECK(fs::exists(tmp / "cache" / "layers" / "key1.json"));

  auto got = s.find_layer("key1");
  REQUIRE(got);
  CHECK(got->digest == r.digest);
  CHECK(got->diff_id == r.diff_id);
  CHECK(got->media_type == "application/vnd.oci.image.layer.v1.tar+zstd");
  CHECK(got->size == 5000);
  CHECK(got->tar_size == 10240);

  CHECK_FALSE(s.find_layer("other-key"));

  // Overwriting a record replaces it.
  LayerRecord r2 = record_for(s, "second blob");
  s.put_layer("key1", r2);
  got = s.find_layer("key1");
  REQUIRE(got);
  CHECK(got->digest == r2.digest);
  CHECK(names_in(tmp / "cache" / "tmp").empty());
}

TEST_CASE("store: find_layer returns nullopt when the blob is missing or wrong") {
  TempDir tmp;
  Store s(tmp / "cache");
  LayerRecord r = record_for(s, "layer blob bytes");
  s.put_layer("k", r);
  REQUIRE(s.find_layer("k"));

  SECTION("blob removed") {
    fs::remove(s.blob_path(r.digest));
    CHECK_FALSE(s.find_layer("k"));
  }
  SECTION("blob of another size") {
    kiln::testutil::write_file(s.blob_path(r.digest), "short");
    CHECK_FALSE(s.find_layer("k"));
  }
  SECTION("record unreadable") {
    kiln::testutil::write_file(tmp / "cache" / "layers" / "k.json", "{not json");
    CHECK_FALSE(s.find_layer("k"));
  }
  SECTION("record empty or zero-filled (what a crash can leave: records are not fsynced)") {
    kiln::testutil::write_file(tmp / "cache" / "layers" / "k.json", "");
    CHECK_FALSE(s.find_layer("k"));
    kiln::testutil::write_file(tmp / "cache" / "layers" / "k.json", std::string(40, '\0'));
    CHECK_FALSE(s.find_layer("k"));
  }
  SECTION("record missing a field") {
    kiln::testutil::write_file(tmp / "cache" / "layers" / "k.json", R"({"digest":")" + r.digest + R"("})");
    CHECK_FALSE(s.find_layer("k"));
  }
}

TEST_CASE("store: BlobCommitter commits, then records, then unlocks, off the caller's thread") {
  TempDir tmp;
  Store s(tmp / "cache");
  BlobCommitter c;
  std::vector<LayerRecord> recs;
  for (int k = 0; k < 4; ++k) {
    std::string data = kiln::testutil::random_bytes((1u << 20) + k, 40 + k);
    auto w = s.new_blob();
    w->write(data.data(), data.size());
    LayerRecord r{sha256_digest(data), sha256_digest(data), "application/vnd.oci.image.layer.v1.tar", data.size(), data.size()};
    recs.push_back(r);
    const std::string key = "key" + std::to_string(k);
    // The record is written only once the blob it names is in place.
    c.submit(std::move(w), r.digest, [&s, key, r] {
      if (!s.has_blob(r.digest)) throw std::runtime_error("record before its blob");
      s.put_layer(key, r);
    }, s.lock_layer(key));
  }
  c.drain();
  for (int k = 0; k < 4; ++k) {
    auto got = s.find_layer("key" + std::to_string(k));
    REQUIRE(got);
    CHECK(got->digest == recs[k].digest);
  }
  CHECK(names_in(tmp / "cache" / "tmp").empty());
}

TEST_CASE("store: BlobCommitter holds the layer lock until the record is written") {
  TempDir tmp;
  Store s(tmp / "cache");
  BlobCommitter c;
  auto w = s.new_blob();
  w->write("abc", 3);
  const std::string d = sha256_digest(std::string("abc"));
  std::promise<void> go;
  std::shared_future<void> gate = go.get_future().share();
  c.submit(std::move(w), d, [gate] { gate.wait(); }, s.lock_layer("held"));
  auto try_lock = [&] {
    int fd = ::open((tmp / "cache" / "locks" / "held.lock").c_str(), O_RDWR | O_CLOEXEC);
    REQUIRE(fd >= 0);
    const bool got = ::flock(fd, LOCK_EX | LOCK_NB) == 0;
    ::close(fd);
    return got;
  };
  CHECK_FALSE(try_lock());  // the record is not written yet: another process would wait
  go.set_value();
  c.drain();
  CHECK(s.has_blob(d));
  CHECK(try_lock());
}

TEST_CASE("store: BlobCommitter reports a failed commit, publishes nothing after it, leaves no temp file") {
  TempDir tmp;
  Store s(tmp / "cache");
  {
    BlobCommitter c;
    auto bad = s.new_blob();
    bad->write("abc", 3);
    bool then_ran = false;
    c.submit(std::move(bad), "sha256:not-a-digest", [&then_ran] { then_ran = true; }, std::nullopt);
    CHECK_THROWS_AS(c.drain(), std::invalid_argument);
    CHECK_FALSE(then_ran);
    c.drain();  // the failure is reported once
    // Destroyed with a job still queued: the job's temp file goes with it.
    auto w = s.new_blob();
    w->write("def", 3);
    c.submit(std::move(w), sha256_digest(std::string("def")), {}, std::nullopt);
  }
  CHECK(names_in(tmp / "cache" / "tmp").empty());
}

TEST_CASE("store: find_layer marks the record as used") {
  TempDir tmp;
  Store s(tmp / "cache");
  LayerRecord r = record_for(s, "blob");
  s.put_layer("k", r);
  const fs::path rec = tmp / "cache" / "layers" / "k.json";
  age(rec, 7200);
  REQUIRE(s.find_layer("k"));
  auto age_s = std::chrono::duration_cast<std::chrono::seconds>(fs::file_time_type::clock::now() -
                                                                fs::last_write_time(rec))
                   .count();
  CHECK(age_s < 60);
}

// ---------------------------------------------------------------------------------------------
// usage and prune

TEST_CASE("store: usage() counts") {
  TempDir tmp;
  Store s(tmp / "cache");
  Store::Usage u0 = s.usage();
  CHECK(u0.blobs == 0);
  CHECK(u0.blob_bytes == 0);
  CHECK(u0.layer_records == 0);
  CHECK(u0.stat_indexes == 0);
  CHECK(u0.tmp_files == 0);

  s.put_bytes(std::string(1000, 'a'));
  s.put_bytes(std::string(234, 'b'));
  s.put_bytes(std::string(234, 'b'));  // same blob
  LayerRecord r = record_for(s, std::string(66, 'c'));
  s.put_layer("k1", r);
  s.put_layer("k2", r);
  StatIndex idx;
  idx.update("/x", old_key(1, 1), std::string(64, 'a'));
  idx.save(s.stat_index_path("k1"));
  const auto stat_size = fs::file_size(s.stat_index_path("k1"));
  kiln::testutil::write_file(s.tmp_dir() / "leftover", std::string(17, 'z'));

  Store::Usage u = s.usage();
  CHECK(u.blobs == 3);
  CHECK(u.blob_bytes == 1000 + 234 + 66);
  CHECK(u.layer_records == 2);
  CHECK(u.stat_indexes == 1);
  CHECK(u.stat_bytes == stat_size);
  CHECK(u.tmp_files == 1);
  CHECK(u.tmp_bytes == 17);
}

TEST_CASE("store: prune(0) removes records, stat indexes and unreferenced blobs") {
  TempDir tmp;
  Store s(tmp / "cache");
  LayerRecord r1 = record_for(s, std::string(100, '1'));
  LayerRecord r2 = record_for(s, std::string(200, '2'));
  s.put_layer("k1", r1);
  s.put_layer("k2", r2);
  s.put_bytes(std::string(50, 'x'));  // a config: referenced by no record
  StatIndex idx;
  idx.update("/x", old_key(1, 1), std::string(64, 'a'));
  idx.save(s.stat_index_path("k1"));
  kiln::testutil::write_file(s.tmp_dir() / "in-flight", "partial");  // fresh: kept

  Store::PruneResult res = s.prune(0);
  CHECK(res.removed_records == 2);
  CHECK(res.removed_blobs == 3);
  CHECK(res.removed_bytes == 350);
  CHECK(names_in(tmp / "cache" / "layers").empty());
  CHECK(names_in(tmp / "cache" / "stat").empty());
  CHECK(names_in(tmp / "cache" / "blobs" / "sha256").empty());
  CHECK(names_in(tmp / "cache" / "tmp") == std::vector<std::string>{"in-flight"});
  CHECK_FALSE(s.find_layer("k1"));
  // The store still works after a prune.
  CHECK(s.read_bytes(s.put_bytes("again")) == "again");
}

TEST_CASE("store: prune waits for every other Store on the root to close, and keeps the lock file") {
  TempDir tmp;
  auto other = std::make_unique<Store>(tmp / "cache");  // a build in another process, in effect
  Store pruner(tmp / "cache");
  std::atomic<bool> waited{false}, done{false};
  auto f = std::async(std::launch::async, [&] {
    pruner.prune(0, [&] { waited = true; });
    done = true;
  });
  for (int i = 0; i < 200 && !waited; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK(waited);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK_FALSE(done);  // still waiting while `other` lives
  other.reset();
  CHECK(f.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
  CHECK(done);
  // The lock file survives even an old-enough sweep of locks/, and a new Store can share again.
  auto lock = tmp / "cache" / "locks" / "in-use";
  REQUIRE(std::filesystem::exists(lock));
  std::filesystem::last_write_time(lock, std::filesystem::file_time_type::clock::now() - std::chrono::hours(48));
  bool waited2 = false;
  pruner.prune(0, [&] { waited2 = true; });
  CHECK_FALSE(waited2);  // nobody else: no wait
  CHECK(std::filesystem::exists(lock));
  Store again(tmp / "cache");
  int fd = ::open(lock.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  CHECK(::flock(fd, LOCK_EX | LOCK_NB) != 0);  // both Stores hold it shared
  CHECK(::flock(fd, LOCK_SH | LOCK_NB) == 0);
  ::close(fd);
}

TEST_CASE("store: prune(age) keeps recent records and the blobs they reference") {
  TempDir tmp;
  Store s(tmp / "cache");
  LayerRecord fresh = record_for(s, std::string(100, 'f'));
  LayerRecord stale = record_for(s, std::string(200, 's'));
  s.put_layer("fresh", fresh);
  s.put_layer("stale", stale);
  const std::string young_cfg = s.put_bytes("young config");
  const std::string old_cfg = s.put_bytes("old config!");
  StatIndex idx;
  idx.update("/x", old_key(1, 1), std::string(64, 'a'));
  idx.save(s.stat_index_path("old"));
  idx.update("/y", old_key(2, 2), std::string(64, 'b'));
  idx.save(s.stat_index_path("new"));
  kiln::testutil::write_file(s.tmp_dir() / "dead", "x");
  kiln::testutil::write_file(s.tmp_dir() / "live", "y");

  // Everything old except the fresh record, the young config and the new index.
  age(tmp / "cache" / "layers" / "stale.json", 7200);
  age(s.blob_path(fresh.digest), 7200);  // old, but a fresh record refers to it
  age(s.blob_path(stale.digest), 7200);
  age(s.blob_path(old_cfg), 7200);
  age(s.stat_index_path("old"), 7200);
  age(s.tmp_dir() / "dead", 7200);
  age(s.tmp_dir() / "live", 1800);

  Store::PruneResult res = s.prune(3600);
  CHECK(res.removed_records == 1);
  CHECK(res.removed_blobs == 2);
  CHECK(res.removed_bytes == 200 + std::string("old config!").size());
  CHECK(names_in(tmp / "cache" / "layers") == std::vector<std::string>{"fresh.json"});
  CHECK(s.has_blob(fresh.digest));
  CHECK_FALSE(s.has_blob(stale.digest));
  CHECK(s.has_blob(young_cfg));
  CHECK_FALSE(s.has_blob(old_cfg));
  CHECK(names_in(tmp / "cache" / "stat") == std::vector<std::string>{"new.idx"});
  CHECK(names_in(tmp / "cache" / "tmp") == std::vector<std::string>{"live"});
  REQUIRE(s.find_layer("fresh"));
  CHECK_FALSE(s.find_layer("stale"));
}

TEST_CASE("store: default_root follows KILN_CACHE, XDG_CACHE_HOME, HOME") {
  auto save = [](const char* n) -> std::optional<std::string> {
    const char* v = std::getenv(n);
    return v ? std::optional<std::string>(v) : std::nullopt;
  };
  auto restore = [](const char* n, const std::optional<std::string>& v) {
    if (v) ::setenv(n, v->c_str(), 1);
    else ::unsetenv(n);
  };
  auto kc = save("KILN_CACHE"), xdg = save("XDG_CACHE_HOME"), home = save("HOME");
  ::setenv("KILN_CACHE", "/k/cache", 1);
  ::setenv("XDG_CACHE_HOME", "/xdg", 1);
  ::setenv("HOME", "/home/u", 1);
  CHECK(Store::default_root() == fs::path("/k/cache"));
  ::setenv("KILN_CACHE", "", 1);
  CHECK(Store::default_root() == fs::path("/xdg/kiln"));
  ::unsetenv("KILN_CACHE");
  ::unsetenv("XDG_CACHE_HOME");
  CHECK(Store::default_root() == fs::path("/home/u/.cache/kiln"));
  ::setenv("KILN_CACHE", "rel/dir", 1);
  CHECK(Store::default_root() == fs::current_path() / "rel/dir");
  restore("KILN_CACHE", kc);
  restore("XDG_CACHE_HOME", xdg);
  restore("HOME", home);
}

// ---------------------------------------------------------------------------------------------
// StatIndex

TEST_CASE("store: StatIndex save/load round trip") {
  TempDir tmp;
  Store s(tmp / "cache");
  const fs::path file = s.stat_index_path("k");
  const std::string h1 = sha256_hex("one"), h2 = sha256_hex("two"), h3 = sha256_hex("three");
  const std::string long_path = "/src/" + std::string(5000, 'p') + "/\xc3\xa9.py";
  {
    StatIndex idx;
    idx.load(file);  // missing file: empty index
    idx.update("/src/a.py", old_key(10, 100), h1);
    idx.update("/src/b.py", old_key(20, 200), h2);
    idx.update(long_path, old_key(0, 300), h3);
    idx.save(file);
  }
  REQUIRE(fs::exists(file));
  CHECK(names_in(tmp / "cache" / "tmp").empty());

  StatIndex idx;
  idx.load(file);
  CHECK(idx.lookup("/src/a.py", old_key(10, 100)) == h1);
  CHECK(idx.lookup("/src/b.py", old_key(20, 200)) == h2);
  CHECK(idx.lookup(long_path, old_key(0, 300)) == h3);
  CHECK_FALSE(idx.lookup("/src/c.py", old_key(10, 100)));
  CHECK_FALSE(idx.lookup("/src/a.py", old_key(20, 200)));  // another file's identity

  // Any one field of the identity differing is a miss.
  StatIndex::Key k = old_key(10, 100);
  auto miss = [&](auto mutate) {
    StatIndex::Key m = k;
    mutate(m);
    return !idx.lookup("/src/a.py", m).has_value();
  };
  CHECK(miss([](StatIndex::Key& m) { m.size += 1; }));
  CHECK(miss([](StatIndex::Key& m) { m.ino += 1; }));
  CHECK(miss([](StatIndex::Key& m) { m.dev += 1; }));
  CHECK(miss([](StatIndex::Key& m) { m.mtime_ns += 1; }));
  CHECK(miss([](StatIndex::Key& m) { m.ctime_ns += 1; }));

  // A garbage or truncated file loads as (at most) what it can read, never throws.
  kiln::testutil::write_file(file, "not an index");
  StatIndex bad;
  CHECK_NOTHROW(bad.load(file));
  CHECK_FALSE(bad.lookup("/src/a.py", old_key(10, 100)));
}

TEST_CASE("store: StatIndex format 3: sorted records, last update wins, merge on save, others ignored") {
  TempDir tmp;
  Store s(tmp / "cache");
  const fs::path file = s.stat_index_path("v3");
  auto key = [](int i) { return old_key(static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(i) + 1); };
  auto hash = [](int i) { return sha256_hex(std::to_string(i)); };
  {
    StatIndex idx;
    for (int i = 999; i >= 0; --i) idx.update("p/" + std::to_string(i), key(i), hash(i));  // out of order
    idx.update("p/7", old_key(77, 78), sha256_hex("seven"));  // a second update of one path: it wins
    idx.save(file);
  }
  const std::string bytes = kiln::testutil::read_file(file);
  REQUIRE(bytes.size() > 32);
  CHECK(bytes.compare(0, 10, "KILNSTAT3\n") == 0);
  {
    StatIndex idx;
    idx.load(file);
    CHECK(idx.loaded_size() == 1000);
    bool all = true;
    for (int i = 0; i < 1000; ++i)
      if (i != 7) all = all && idx.lookup("p/" + std::to_string(i), key(i)) == hash(i);
    CHECK(all);
    CHECK(idx.lookup("p/7", old_key(77, 78)) == sha256_hex("seven"));
    CHECK_FALSE(idx.lookup("p/7", key(7)));
    CHECK_FALSE(idx.lookup("p/1000", key(1000)));
    CHECK_FALSE(idx.lookup("p", key(0)));
  }
  {  // unseen entries are kept, an update replaces its path's record, a new path is added
    StatIndex idx;
    idx.load(file);
    idx.update("p/5", old_key(55, 56), sha256_hex("five"));
    idx.update("q/new", old_key(1, 2), sha256_hex("new"));
    idx.update("a/first", old_key(3, 4), sha256_hex("first"));
    idx.save(file);
  }
  {
    StatIndex idx;
    idx.load(file);
    CHECK(idx.loaded_size() == 1002);
    CHECK(idx.lookup("p/5", old_key(55, 56)) == sha256_hex("five"));
    CHECK_FALSE(idx.lookup("p/5", key(5)));
    CHECK(idx.lookup("p/999", key(999)) == hash(999));
    CHECK(idx.lookup("q/new", old_key(1, 2)) == sha256_hex("new"));
    CHECK(idx.lookup("a/first", old_key(3, 4)) == sha256_hex("first"));
  }
  // Another format, a truncated file, records out of order: loaded as empty, never trusted.
  auto loads_empty = [&](const std::string& content) {
    kiln::testutil::write_file(file, content);
    StatIndex idx;
    idx.load(file);
    return idx.loaded_size() == 0 && !idx.lookup("p/1", key(1));
  };
  CHECK(loads_empty("KILNSTAT2\n" + bytes.substr(10)));
  CHECK(loads_empty(bytes.substr(0, bytes.size() / 2)));
  CHECK(loads_empty(bytes.substr(0, 40)));
  std::string swapped = bytes;  // the first two records exchanged: no longer sorted
  std::swap_ranges(swapped.begin() + 32, swapped.begin() + 32 + 88, swapped.begin() + 32 + 88);
  CHECK(loads_empty(swapped));
}

TEST_CASE("store: StatIndex ordered updates wait in a file and merge with the records and the other updates") {
  TempDir tmp;
  Store s(tmp / "cache");
  const fs::path file = s.stat_index_path("ordered");
  auto key = [](int i) { return old_key(static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(i) + 7); };
  auto digest = [](const std::string& text) {
    StatIndex::Digest d{};
    const std::string hex = sha256_hex(text);
    for (std::size_t i = 0; i < 32; ++i) d[i] = static_cast<unsigned char>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
    return d;
  };
  {
    StatIndex idx;
    for (int i = 0; i < 300; i += 2) idx.update("p/" + std::to_string(1000 + i), key(i), sha256_hex("old" + std::to_string(i)));
    idx.save(file);
  }
  {
    StatIndex idx;
    idx.load(file);
    // Every third path in order, some replacing a record, some new; an in-memory update beside them.
    for (int i = 0; i < 300; i += 3)
      idx.update_ordered("p/" + std::to_string(1000 + i), key(i), digest("new" + std::to_string(i)), s.tmp_dir());
    CHECK_THROWS_AS(idx.update_ordered("p/1000", key(0), digest("x"), s.tmp_dir()), std::logic_error);  // not after p/1297
    idx.update("/abs/copy", key(5), sha256_hex("copy"));
    idx.update("p/1003", key(3), sha256_hex("memory wins"));  // also given ordered: the in-memory one wins
    CHECK(fs::is_empty(s.tmp_dir()));  // the ordered updates' file is unnamed
    idx.save(file);
  }
  StatIndex idx;
  idx.load(file);
  std::size_t want = 1;  // the copy
  for (int i = 0; i < 300; ++i) want += (i % 2 == 0 || i % 3 == 0);
  CHECK(idx.loaded_size() == want);
  bool all = true;
  for (int i = 0; i < 300; ++i) {
    const std::string path = "p/" + std::to_string(1000 + i);
    if (i == 3) continue;
    if (i % 3 == 0)
      all = all && idx.lookup(path, key(i)) == sha256_hex("new" + std::to_string(i));
    else if (i % 2 == 0)
      all = all && idx.lookup(path, key(i)) == sha256_hex("old" + std::to_string(i));
    else
      all = all && !idx.lookup(path, key(i));
  }
  CHECK(all);
  CHECK(idx.lookup("p/1003", key(3)) == sha256_hex("memory wins"));
  CHECK(idx.lookup("/abs/copy", key(5)) == sha256_hex("copy"));
}

TEST_CASE("store: StatIndex does not trust racy entries") {
  TempDir tmp;
  Store s(tmp / "cache");
  const fs::path file = s.stat_index_path("racy");
  const std::int64_t now = now_ns();
  StatIndex::Key fresh_m = old_key(1, 1);
  fresh_m.mtime_ns = now;  // modified "now": at or after the index's write time - 1 s
  StatIndex::Key fresh_c = old_key(2, 2);
  fresh_c.ctime_ns = now - 500000000;  // inode changed half a second before the write
  StatIndex::Key safe = old_key(3, 3);
  safe.mtime_ns = now - 5000000000ll;
  safe.ctime_ns = now - 5000000000ll;
  StatIndex::Key future = old_key(4, 4);
  future.mtime_ns = now + 3600ll * 1000000000;
  {
    StatIndex idx;
    idx.update("/m", fresh_m, std::string(64, '1'));
    idx.update("/c", fresh_c, std::string(64, '2'));
    idx.update("/s", safe, std::string(64, '3'));
    idx.update("/f", future, std::string(64, '4'));
    // Before any save the index has no write time: nothing is trusted yet.
    CHECK_FALSE(idx.lookup("/s", safe));
    idx.save(file);
  }
  StatIndex idx;
  idx.load(file);
  CHECK_FALSE(idx.lookup("/m", fresh_m));
  CHECK_FALSE(idx.lookup("/c", fresh_c));
  CHECK_FALSE(idx.lookup("/f", future));
  CHECK(idx.lookup("/s", safe) == std::string(64, '3'));
}

TEST_CASE("store: StatIndex drops an unseen entry that was racy when written") {
  // A racy entry was never trusted; kept under a later write time it would look safe.
  TempDir tmp;
  Store s(tmp / "cache");
  const fs::path file = s.stat_index_path("racy-unseen");
  StatIndex::Key fresh = old_key(1, 1);
  fresh.mtime_ns = now_ns();
  StatIndex::Key safe = old_key(2, 2);
  {
    StatIndex idx;
    idx.update("/fresh", fresh, std::string(64, 'f'));
    idx.update("/safe", safe, std::string(64, '5'));
    idx.save(file);
  }
  // Past the racy window of the first write: under the second write time, "/fresh" would pass.
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  {
    StatIndex idx;
    idx.load(file);
    idx.update("/other", old_key(3, 3), std::string(64, '0'));  // neither looked up
    idx.save(file);
  }
  StatIndex idx;
  idx.load(file);
  CHECK(idx.lookup("/safe", safe) == std::string(64, '5'));
  CHECK_FALSE(idx.lookup("/fresh", fresh));
}

TEST_CASE("store: StatIndex save writes nothing when nothing changed") {
  TempDir tmp;
  Store s(tmp / "cache");
  const fs::path file = s.stat_index_path("k");
  {
    StatIndex idx;
    idx.update("/a", old_key(1, 1), std::string(64, 'a'));
    idx.update("/b", old_key(2, 2), std::string(64, 'b'));
    idx.save(file);
    FileId id = file_id(file);
    idx.save(file);  // nothing changed since the last save
    CHECK(file_id(file) == id);
  }
  FileId written = file_id(file);
  const std::string bytes = kiln::testutil::read_file(file);

  SECTION("every entry used, none updated: no write") {
    StatIndex idx;
    idx.load(file);
    REQUIRE(idx.lookup("/a", old_key(1, 1)));
    REQUIRE(idx.lookup("/b", old_key(2, 2)));
    idx.save(file);
    CHECK(file_id(file) == written);
    CHECK(kiln::testutil::read_file(file) == bytes);
  }
  SECTION("an entry updated: rewritten") {
    StatIndex idx;
    idx.load(file);
    REQUIRE(idx.lookup("/a", old_key(1, 1)));
    REQUIRE(idx.lookup("/b", old_key(2, 2)));
    idx.update("/c", old_key(3, 3), std::string(64, 'c'));
    idx.save(file);
    CHECK_FALSE(file_id(file) == written);
    StatIndex again;
    again.load(file);
    CHECK(again.lookup("/c", old_key(3, 3)) == std::string(64, 'c'));
    CHECK(again.lookup("/a", old_key(1, 1)) == std::string(64, 'a'));
  }
  SECTION("an entry not used, none updated: no write, entry kept") {
    StatIndex idx;
    idx.load(file);
    REQUIRE(idx.lookup("/a", old_key(1, 1)));
    idx.save(file);
    CHECK(file_id(file) == written);
  }
  SECTION("an entry not used while another is updated: kept for another walk") {
    StatIndex idx;
    idx.load(file);
    REQUIRE(idx.lookup("/a", old_key(1, 1)));
    idx.update("/c", old_key(3, 3), std::string(64, 'c'));
    idx.save(file);
    StatIndex again;
    again.load(file);
    CHECK(again.lookup("/b", old_key(2, 2)) == std::string(64, 'b'));
    CHECK(again.lookup("/c", old_key(3, 3)) == std::string(64, 'c'));
  }
  SECTION("an entry unseen for 8 rewrites is dropped; seeing it resets its age") {
    for (int i = 0; i < 9; ++i) {
      StatIndex idx;
      idx.load(file);
      if (i == 3) REQUIRE(idx.lookup("/b", old_key(2, 2)));  // /b seen once more at rewrite 4
      idx.update("/n" + std::to_string(i), old_key(10 + i, 10 + i), std::string(64, '9'));
      idx.save(file);
    }
    StatIndex idx;
    idx.load(file);
    CHECK_FALSE(idx.lookup("/a", old_key(1, 1)));                  // unseen for 9 rewrites
    CHECK(idx.lookup("/b", old_key(2, 2)) == std::string(64, 'b'));  // unseen for 5
  }
  CHECK(names_in(tmp / "cache" / "tmp").empty());
}

TEST_CASE("store: verify_external hashes a blob outside the store once per identity") {
  TempDir t;
  Store store(t / "cache");
  fs::create_directories(t / "layout");
  const fs::path blob = t / "layout" / "blob";
  const std::string content = "layer bytes of a base image";
  kiln::testutil::write_file(blob, content);
  const std::string digest = sha256_digest(content);

  CHECK(store.verify_external(blob, digest));
  std::vector<std::string> memos;
  for (auto& e : fs::directory_iterator(t / "cache" / "verified"))
    if (e.path().filename().string().rfind("ext-", 0) == 0) memos.push_back(e.path().string());
  REQUIRE(memos.size() == 1);
  CHECK(contains(kiln::testutil::read_file(memos[0]), digest));

  // Remembered: the memo is what decides while the identity holds (a changed memo shows it).
  fs::last_write_time(memos[0], fs::file_time_type::clock::now() - std::chrono::hours(1));
  auto memo_time = fs::last_write_time(memos[0]);
  CHECK(store.verify_external(blob, digest));
  CHECK(fs::last_write_time(memos[0]) == memo_time);

  // A wrong digest is not accepted just because the file was verified for another one.
  CHECK_FALSE(store.verify_external(blob, sha256_digest("something else")));

  // Other bytes of the same size, with a new mtime: hashed again, and refused.
  std::string evil = content;
  evil[0] = 'L';
  kiln::testutil::write_file(blob, evil);
  struct timespec ts[2];
  ::clock_gettime(CLOCK_REALTIME, &ts[0]);
  ts[0].tv_sec += 5;
  ts[1] = ts[0];
  ::utimensat(AT_FDCWD, blob.c_str(), ts, 0);
  CHECK_FALSE(store.verify_external(blob, digest));
  CHECK_FALSE(store.verify_external(blob, digest));  // and the memo is gone for good

  // The same content at another path is verified on its own.
  kiln::testutil::write_file(t / "layout" / "other", content);
  CHECK(store.verify_external(t / "layout" / "other", digest));
  CHECK_THROWS_AS(store.verify_external(t / "layout" / "missing", digest), std::system_error);
}

TEST_CASE("store: tmp/ is the owner's only") {
  TempDir t;
  Store store(t / "cache");
  struct stat st{};
  REQUIRE(::stat((t / "cache" / "tmp").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);
}

TEST_CASE("store: a big StatIndex answers lookups in any order (galloping cursor, pages dropped behind)") {
  // Over 4 MiB: the index drops the mapped pages it has passed (load, lookups, save), and lookups
  // gallop forward from the last one. Every order must still find exactly what was saved.
  TempDir tmp;
  Store s(tmp / "cache");
  const fs::path file = s.stat_index_path("big");
  constexpr int kN = 60000;
  auto path = [](int i) {
    char b[64];
    std::snprintf(b, sizeof b, "pkg/sub%03d/module_%06d.py", i % 997, i);
    return std::string(b);
  };
  auto digest = [](int i) {
    StatIndex::Digest d{};
    for (int k = 0; k < 32; ++k) d[k] = static_cast<unsigned char>((i * 31 + k * 7) & 0xff);
    return d;
  };
  std::vector<std::string> paths;
  for (int i = 0; i < kN; ++i) paths.push_back(path(i));
  {
    StatIndex idx;
    idx.load(file);
    for (int i = 0; i < kN; ++i) idx.update(paths[i], old_key(static_cast<std::uint64_t>(i), 100 + i), digest(i));
    idx.save(file);
  }
  REQUIRE(fs::file_size(file) > (4u << 20));
  std::vector<int> sorted(kN);
  for (int i = 0; i < kN; ++i) sorted[i] = i;
  std::sort(sorted.begin(), sorted.end(), [&](int a, int b) { return paths[a] < paths[b]; });
  std::vector<int> shuffled = sorted;
  std::mt19937 rng(7);
  std::shuffle(shuffled.begin(), shuffled.end(), rng);
  std::vector<int> reversed(sorted.rbegin(), sorted.rend());
  for (const auto* order : {&sorted, &reversed, &shuffled, &sorted}) {
    StatIndex idx;
    idx.load(file);
    REQUIRE(idx.loaded_size() == static_cast<std::size_t>(kN));
    int found = 0, wrong = 0;
    for (int i : *order) {
      StatIndex::Digest d{};
      if (idx.lookup(paths[i], old_key(static_cast<std::uint64_t>(i), 100 + i), &d)) {
        ++found;
        wrong += d != digest(i);
      }
      // Misses between, before and after the records do not move the answers.
      CHECK_FALSE(idx.lookup(paths[i] + "x", old_key(static_cast<std::uint64_t>(i), 100 + i), &d));
    }
    CHECK(found == kN);
    CHECK(wrong == 0);
    StatIndex::Digest d{};
    CHECK_FALSE(idx.lookup("", old_key(0, 100), &d));
    CHECK_FALSE(idx.lookup("zzz", old_key(0, 100), &d));
  }
  // A rewrite with one change (the save merges through the mapped file) keeps all the others.
  {
    StatIndex idx;
    idx.load(file);
    StatIndex::Digest d{};
    for (int i : sorted) idx.lookup(paths[i], old_key(static_cast<std::uint64_t>(i), 100 + i), &d);
    idx.update(paths[123], old_key(5, 5), digest(999999));
    idx.save(file);
  }
  StatIndex idx;
  idx.load(file);
  int found = 0;
  for (int i : sorted) {
    StatIndex::Digest d{};
    if (i == 123) {
      CHECK(idx.lookup(paths[i], old_key(5, 5), &d));
      CHECK(d == digest(999999));
    } else if (idx.lookup(paths[i], old_key(static_cast<std::uint64_t>(i), 100 + i), &d) && d == digest(i)) {
      ++found;
    }
  }
  CHECK(found == kN - 1);
}
