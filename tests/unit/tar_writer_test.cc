// Unit tests for layers/tar_writer: entry normalization and the deterministic PAX tar writer, read
// back with libarchive.
#include "layers/tar_writer.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <locale.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <clocale>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "layers/digest.h"
#include "testutil.h"

using namespace kiln::layers;
using kiln::spec::Compression;
using kiln::testutil::contains;
using kiln::testutil::TempDir;
using Type = TarEntry::Type;

namespace {

TarEntry tar_file(const std::string& path, const std::filesystem::path& src, std::uint32_t mode = 0644) {
  TarEntry e;
  e.path = path;
  e.type = Type::File;
  e.mode = mode;
  e.source = src.string();
  e.size = std::filesystem::file_size(src);
  return e;
}
TarEntry tar_dir(const std::string& path, std::uint32_t mode = 0755) {
  TarEntry e;
  e.path = path;
  e.type = Type::Dir;
  e.mode = mode;
  return e;
}
TarEntry tar_symlink(const std::string& path, const std::string& target) {
  TarEntry e;
  e.path = path;
  e.type = Type::Symlink;
  e.mode = 0777;
  e.link_target = target;
  return e;
}
TarEntry tar_hardlink(const std::string& path, const std::string& target) {
  TarEntry e;
  e.path = path;
  e.type = Type::Hardlink;
  e.link_target = target;
  return e;
}

std::vector<std::string> paths_of(const std::vector<TarEntry>& v) {
  std::vector<std::string> out;
  for (auto& e : v) out.push_back(e.path);
  return out;
}

/// One entry as libarchive reads it back.
struct ReadEntry {
  std::string path;
  unsigned filetype = 0;
  unsigned perm = 0;
  la_int64_t uid = -1, gid = -1;
  bool uname_null = false, gname_null = false;
  std::string uname, gname;
  la_int64_t mtime = -1;
  long mtime_nsec = -1;
  bool atime_set = true, ctime_set = true, birthtime_set = true;
  std::string symlink, hardlink;
  la_int64_t size = -1;
  std::string data;
};

/// Runs the reader under a UTF-8 LC_CTYPE (this thread only), as tar does in a UTF-8 locale: in
/// the "C" locale libarchive cannot give back non-ASCII names at all.
struct ReaderUtf8Locale {
  locale_t loc = ::newlocale(LC_CTYPE_MASK, "C.UTF-8", locale_t(0));
  locale_t old = loc ? ::uselocale(loc) : locale_t(0);
  ~ReaderUtf8Locale() {
    if (loc) {
      ::uselocale(old);
      ::freelocale(loc);
    }
  }
};

std::vector<ReadEntry> read_tar(const std::string& blob) {
  ReaderUtf8Locale utf8;
  REQUIRE(utf8.loc != locale_t(0));
  struct archive* a = archive_read_new();
  archive_read_support_format_all(a);
  archive_read_support_filter_all(a);
  REQUIRE(archive_read_open_memory(a, blob.data(), blob.size()) == ARCHIVE_OK);
  std::vector<ReadEntry> out;
  struct archive_entry* ae;
  int rc;
  while ((rc = archive_read_next_header(a, &ae)) == ARCHIVE_OK) {
    ReadEntry r;
    const char* p = archive_entry_pathname_utf8(ae);
    r.path = p ? p : "<null>";
    r.filetype = archive_entry_filetype(ae);
    // Directories are stored with a trailing '/' (the tar convention); compare without it.
    if (r.filetype == AE_IFDIR) {
      CHECK(r.path.back() == '/');
      r.path.pop_back();
    }
    r.perm = archive_entry_perm(ae);
    r.uid = archive_entry_uid(ae);
    r.gid = archive_entry_gid(ae);
    const char* un = archive_entry_uname(ae);
    const char* gn = archive_entry_gname(ae);
    r.uname_null = !un;
    r.gname_null = !gn;
    r.uname = un ? un : "";
    r.gname = gn ? gn : "";
    r.mtime = archive_entry_mtime(ae);
    r.mtime_nsec = archive_entry_mtime_nsec(ae);
    r.atime_set = archive_entry_atime_is_set(ae);
    r.ctime_set = archive_entry_ctime_is_set(ae);
    r.birthtime_set = archive_entry_birthtime_is_set(ae);
    if (const char* s = archive_entry_symlink_utf8(ae)) r.symlink = s;
    if (const char* h = archive_entry_hardlink_utf8(ae)) r.hardlink = h;
    r.size = archive_entry_size(ae);
    char buf[65536];
    la_ssize_t n;
    while ((n = archive_read_data(a, buf, sizeof buf)) > 0) r.data.append(buf, static_cast<std::size_t>(n));
    REQUIRE(n == 0);
    out.push_back(std::move(r));
  }
  INFO((archive_error_string(a) ? archive_error_string(a) : ""));
  CHECK(rc == ARCHIVE_EOF);
  archive_read_free(a);
  return out;
}

struct Written {
  WrittenLayer layer;
  std::string blob;
};

Written write(const std::vector<TarEntry>& entries, LayerWriteOptions opts,
              std::uint64_t* progress = nullptr) {
  Written w;
  w.layer = write_layer(entries, opts, kiln::testutil::string_sink(&w.blob),
                        [progress](std::uint64_t n) { if (progress) *progress += n; });
  return w;
}

/// A tree with one of every entry kind, and the expectations for it.
struct Fixture {
  TempDir tmp;
  std::string hello = "hello, world\n";
  std::string tool = "#!/bin/sh\necho tool\n";
  std::string big = kiln::testutil::text_bytes(3 << 20) + kiln::testutil::random_bytes(12345, 17);
  std::string long_path;
  std::string utf8_path = "donn\xc3\xa9\x65s/\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e-caf\xc3\xa9.txt";  // "données/日本語-café.txt"
  std::vector<TarEntry> entries;

  Fixture() {
    kiln::testutil::write_file(tmp / "hello", hello);
    kiln::testutil::write_file(tmp / "tool", tool, 0700);
    kiln::testutil::write_file(tmp / "big", big);
    kiln::testutil::write_file(tmp / "empty", "");
    long_path = "deep";
    while (long_path.size() < 280) long_path += "/segment-" + std::to_string(long_path.size());
    long_path += "/";
    long_path += std::string(300 - long_path.size(), 'x');
    REQUIRE(long_path.size() == 300);

    TarEntry conf = tar_file("etc/conf", tmp / "hello", 0600);
    conf.uid = 5;
    conf.gid = 6;
    entries = {
        conf,
        tar_file("usr/bin/tool", tmp / "tool", 0755),
        tar_file("data/big.bin", tmp / "big"),
        tar_file("data/empty", tmp / "empty"),
        tar_dir("var/empty", 0700),
        tar_symlink("etc/link", "conf"),
        tar_symlink("etc/abs", "/usr/bin/tool"),
        tar_symlink("etc/lien-\xc3\xa9", "caf\xc3\xa9/\xe6\x97\xa5"),  // non-ASCII name and target
        tar_hardlink("etc/hard", "etc/conf"),
        tar_file(long_path, tmp / "hello"),
        tar_file(utf8_path, tmp / "hello"),
    };
    TarEntry wh;
    wh.path = "var/.wh.gone";
    wh.type = Type::Whiteout;
    wh.mode = 0;
    entries.push_back(wh);
    entries = normalize_entries(std::move(entries));
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// normalize_entries

TEST_CASE("tar: normalize_entries sorts bytewise") {
  std::vector<TarEntry> in = {tar_dir("b"), tar_dir("a/b"), tar_dir("a.b"),   tar_dir("a-b"),
                              tar_dir("a"), tar_dir("a/b/c"), tar_dir("B"), tar_dir("a0")};
  // Bytes: 'B' 0x42 < 'a' 0x61; after "a": '-' 0x2d < '.' 0x2e < '/' 0x2f < '0' 0x30.
  CHECK(paths_of(normalize_entries(in)) ==
        std::vector<std::string>{"B", "a", "a-b", "a.b", "a/b", "a/b/c", "a0", "b"});

  // UTF-8 sorts by bytes, after ASCII.
  std::vector<TarEntry> u = {tar_dir("\xc3\xa9"), tar_dir("z"), tar_dir("e")};
  CHECK(paths_of(normalize_entries(u)) == std::vector<std::string>{"e", "z", "\xc3\xa9"});
}

TEST_CASE("tar: normalize_entries adds missing parents as 0755 directories") {
  TarEntry f;
  f.path = "x/y/z.txt";
  f.mode = 0600;
  f.uid = 1;
  auto out = normalize_entries({f}, 1000, 2000);
  REQUIRE(paths_of(out) == std::vector<std::string>{"x", "x/y", "x/y/z.txt"});
  for (int i : {0, 1}) {
    CHECK(out[i].type == Type::Dir);
    CHECK(out[i].mode == 0755);
    CHECK(out[i].uid == 1000);
    CHECK(out[i].gid == 2000);
  }
  CHECK(out[2].type == Type::File);
  CHECK(out[2].mode == 0600);
  CHECK(out[2].uid == 1);  // the entry's own owner is kept

  // A parent given explicitly keeps its own mode.
  auto out2 = normalize_entries({tar_dir("d", 0700), TarEntry{.path = "d/f"}});
  REQUIRE(paths_of(out2) == std::vector<std::string>{"d", "d/f"});
  CHECK(out2[0].mode == 0700);

  // Parents given after their children are not duplicated.
  auto out3 = normalize_entries({TarEntry{.path = "p/q/r"}, tar_dir("p/q", 0711)});
  REQUIRE(paths_of(out3) == std::vector<std::string>{"p", "p/q", "p/q/r"});
  CHECK(out3[1].mode == 0711);
  CHECK(out3[0].mode == 0755);

  CHECK(normalize_entries({}).empty());
}

TEST_CASE("tar: normalize_entries drops duplicates, the last one wins") {
  TarEntry a;
  a.path = "f";
  a.mode = 0644;
  a.link_target = "first";
  TarEntry b = a;
  b.mode = 0755;
  b.link_target = "second";
  TarEntry c = a;
  c.link_target = "third";
  c.mode = 0600;
  auto out = normalize_entries({a, tar_dir("g"), b});
  REQUIRE(paths_of(out) == std::vector<std::string>{"f", "g"});
  CHECK(out[0].mode == 0755);
  CHECK(out[0].link_target == "second");

  auto out2 = normalize_entries({b, a, c});
  REQUIRE(out2.size() == 1);
  CHECK(out2[0].link_target == "third");
  CHECK(out2[0].mode == 0600);
}

TEST_CASE("tar: normalize_entries rejects bad paths") {
  for (const char* bad : {"/abs", "a/../b", "a//b", "", "..", ".", "./a", "a/.", "a/", "/", "a/b/..", "../a"}) {
    INFO("path '" << bad << "'");
    TarEntry e;
    e.path = bad;
    CHECK_THROWS_WITH(normalize_entries({e}), Catch::Contains("invalid path"));
  }
  // Names merely containing dots are fine.
  for (const char* ok : {"...", "..a", "a..", ".hidden", "a/.b", "a/b.."}) {
    INFO("path '" << ok << "'");
    TarEntry e;
    e.path = ok;
    CHECK_NOTHROW(normalize_entries({e}));
  }
}

TEST_CASE("tar: LayerOrder gives normalize's order on random trees, against a plain model") {
  // The model: stable sort, the last of equal paths, every missing ancestor from a std::set,
  // all sorted together. Names with '.', '-' and '!' sort before '/', where a streamed insertion
  // of parents would go wrong ("a/b", "a/b.txt", "a/b/c").
  const std::vector<std::string> names = {"a", "b", "a.txt", "a-", "a!", "b0", "ab", "\xc3\xa9"};
  std::uint64_t seed = 0x9e3779b97f4a7c15ull;
  auto rnd = [&](std::size_t n) {
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    return static_cast<std::size_t>(seed % n);
  };
  for (int round = 0; round < 300; ++round) {
    std::vector<std::string> paths(rnd(40));
    for (auto& p : paths) {
      std::size_t depth = 1 + rnd(4);
      for (std::size_t d = 0; d < depth; ++d) p += (d ? "/" : "") + names[rnd(names.size())];
    }
    if (round % 3 == 0) std::sort(paths.begin(), paths.end());  // walked lists come sorted
    std::vector<std::size_t> idx(paths.size());
    for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = i;
    std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return paths[a] < paths[b]; });
    std::map<std::string, std::size_t> want;  // path -> index (the last given), or npos for a parent
    for (std::size_t i : idx) want[paths[i]] = i;
    for (std::size_t i : idx)
      for (std::size_t pos = paths[i].find('/'); pos != std::string::npos; pos = paths[i].find('/', pos + 1))
        want.emplace(paths[i].substr(0, pos), std::string::npos);
    std::vector<std::pair<std::string, std::size_t>> got;
    LayerOrder order(paths.size(), [&](std::size_t i) { return std::string_view(paths[i]); });
    std::size_t i = 0;
    const std::string* parent = nullptr;
    while (order.next(&i, &parent)) got.emplace_back(parent ? *parent : paths[i], parent ? std::string::npos : i);
    INFO("round " << round);
    CHECK(order.size() == got.size());
    CHECK(got == std::vector<std::pair<std::string, std::size_t>>(want.begin(), want.end()));
  }
}

TEST_CASE("tar: write_layer from a source gives the bytes of write_layer from the list") {
  TempDir tmp;
  std::vector<TarEntry> entries;
  for (int i = 0; i < 20; ++i) {
    auto f = tmp / ("f" + std::to_string(i));
    kiln::testutil::write_file(f, std::string(static_cast<std::size_t>(i) * 70000, static_cast<char>('a' + i)));
    entries.push_back(tar_file("d/f" + std::to_string(i), f));
  }
  entries = normalize_entries(std::move(entries));
  LayerWriteOptions opts;
  opts.compression = Compression::Gzip;
  opts.hash_contents = true;
  std::vector<std::string> hashed;
  opts.on_content = [&](const TarEntry& e, const std::string& hex) { hashed.push_back(e.path + " " + hex); };
  std::string a, b;
  auto wa = write_layer(entries, opts, [&](const void* d, std::size_t n) { a.append(static_cast<const char*>(d), n); });
  std::size_t k = 0;
  auto wb = write_layer([&](TarEntry& e) { return k < entries.size() ? (e = entries[k++], true) : false; }, opts,
                        [&](const void* d, std::size_t n) { b.append(static_cast<const char*>(d), n); });
  CHECK(a == b);
  CHECK(wa.digest == wb.digest);
  REQUIRE(hashed.size() == 40);  // every file, from each of the two writes
  for (std::size_t i = 0; i < 20; ++i) {
    CHECK(hashed[i] == hashed[i + 20]);
    const TarEntry& e = entries[i + 1];  // (entries[0] is the directory "d")
    CHECK(hashed[i] == e.path + " " + sha256_file_hex(e.source));
  }
}

TEST_CASE("tar: a big file's digest from the side hasher is its SHA-256, uncompressed on one thread too") {
  // Files from 4 MiB are hashed on a second thread, beside the tar: with gzip when the layer has
  // two threads, and always when uncompressed (the two SHA-256 passes are most of its work).
  TempDir tmp;
  std::vector<TarEntry> entries;
  const std::size_t sizes[] = {9u << 20, 100, (4u << 20) + 1, 0, (5u << 20) + 4097};
  for (std::size_t i = 0; i < std::size(sizes); ++i) {
    std::string data(sizes[i], '\0');
    for (std::size_t k = 0; k < data.size(); ++k) data[k] = static_cast<char>((k * 2654435761u + i) >> 13);
    auto f = tmp / ("f" + std::to_string(i));
    kiln::testutil::write_file(f, data);
    entries.push_back(tar_file("f" + std::to_string(i), f));
  }
  entries = normalize_entries(std::move(entries));
  for (auto [c, threads] : {std::pair{Compression::None, 1}, std::pair{Compression::None, 2},
                            std::pair{Compression::Gzip, 2}, std::pair{Compression::Gzip, 1}}) {
    INFO("compression " << static_cast<int>(c) << ", threads " << threads);
    LayerWriteOptions opts;
    opts.compression = c;
    opts.threads = threads;
    opts.hash_contents = true;
    std::map<std::string, std::string> hashed;
    opts.on_content = [&](const TarEntry& e, const std::string& hex) { hashed[e.path] = hex; };
    std::string blob;
    auto w = write_layer(entries, opts, [&](const void* d, std::size_t n) { blob.append(static_cast<const char*>(d), n); });
    REQUIRE(hashed.size() == std::size(sizes));
    for (const TarEntry& e : entries) CHECK(hashed[e.path] == sha256_file_hex(e.source));
    if (c == Compression::None) {
      CHECK(w.digest == w.diff_id);
      CHECK(w.digest == "sha256:" + sha256_hex(blob));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// write_layer

TEST_CASE("tar: write_layer headers read back with libarchive") {
  Fixture fx;
  LayerWriteOptions opts;
  opts.compression = Compression::Gzip;
  opts.mtime = 1700000000;
  std::uint64_t progress = 0;
  Written w = write(fx.entries, opts, &progress);
  // etc/conf, the long path and the UTF-8 name each read "hello"; the hardlink reads nothing.
  CHECK(progress == 3 * fx.hello.size() + fx.tool.size() + fx.big.size());

  auto got = read_tar(w.blob);
  std::vector<std::string> got_paths;
  for (auto& r : got) got_paths.push_back(r.path);
  REQUIRE(got_paths == paths_of(fx.entries));  // same order as normalized, nothing extra
  const std::vector<std::string> expect_paths = {
      "data", "data/big.bin", "data/empty", "deep", "deep/segment-4", "donn\xc3\xa9\x65s",
      fx.utf8_path, "etc", "etc/abs", "etc/conf", "etc/lien-\xc3\xa9", "etc/hard", "etc/link", "usr", "usr/bin", "usr/bin/tool",
      "var", "var/.wh.gone", "var/empty"};
  // The long path adds 24 more parent directories between "deep/segment-4" and "données".
  CHECK(got_paths.size() == expect_paths.size() + 24);
  CHECK(got_paths.front() == "data");
  CHECK(got_paths.back() == "var/empty");

  std::map<std::string, ReadEntry> by;
  for (auto& r : got) by[r.path] = r;
  for (auto& p : expect_paths) CHECK(by.count(p) == 1);

  for (auto& r : got) {
    INFO("entry " << r.path);
    CHECK(r.mtime == 1700000000);
    CHECK(r.mtime_nsec == 0);
    CHECK_FALSE(r.atime_set);
    CHECK_FALSE(r.ctime_set);
    CHECK_FALSE(r.birthtime_set);
    CHECK(r.uname == "");
    CHECK(r.gname == "");
    if (r.path != "etc/conf") {
      CHECK(r.uid == 0);
      CHECK(r.gid == 0);
    }
  }

  const ReadEntry& conf = by["etc/conf"];
  CHECK(conf.filetype == AE_IFREG);
  CHECK(conf.perm == 0600);
  CHECK(conf.uid == 5);
  CHECK(conf.gid == 6);
  CHECK(conf.size == static_cast<la_int64_t>(fx.hello.size()));
  CHECK(conf.data == fx.hello);

  const ReadEntry& tool = by["usr/bin/tool"];
  CHECK(tool.filetype == AE_IFREG);
  CHECK(tool.perm == 0755);
  CHECK(tool.data == fx.tool);

  CHECK(by["data/big.bin"].data == fx.big);
  CHECK(by["data/big.bin"].perm == 0644);
  CHECK(by["data/empty"].size == 0);
  CHECK(by["data/empty"].filetype == AE_IFREG);

  for (const char* d : {"data", "etc", "usr", "usr/bin", "var", "deep"}) {
    INFO("dir " << d);
    CHECK(by[d].filetype == AE_IFDIR);
    CHECK(by[d].perm == 0755);
  }
  CHECK(by["var/empty"].filetype == AE_IFDIR);
  CHECK(by["var/empty"].perm == 0700);

  CHECK(by["etc/link"].filetype == AE_IFLNK);
  CHECK(by["etc/link"].symlink == "conf");
  CHECK(by["etc/link"].perm == 0777);
  CHECK(by["etc/abs"].symlink == "/usr/bin/tool");
  CHECK(by["etc/lien-\xc3\xa9"].filetype == AE_IFLNK);
  CHECK(by["etc/lien-\xc3\xa9"].symlink == "caf\xc3\xa9/\xe6\x97\xa5");

  const ReadEntry& hard = by["etc/hard"];
  CHECK(hard.hardlink == "etc/conf");
  CHECK(hard.size == 0);
  CHECK(hard.data.empty());

  const ReadEntry& wh = by["var/.wh.gone"];
  CHECK(wh.filetype == AE_IFREG);
  CHECK(wh.size == 0);
  CHECK(wh.perm == 0);

  // PAX long path and UTF-8 name round-trip exactly.
  REQUIRE(by.count(fx.long_path) == 1);
  CHECK(by[fx.long_path].data == fx.hello);
  REQUIRE(by.count(fx.utf8_path) == 1);
  CHECK(by[fx.utf8_path].data == fx.hello);
}

TEST_CASE("tar: write_layer raw tar has no atime/ctime records, no user names, fixed mtime") {
  Fixture fx;
  LayerWriteOptions opts;
  opts.compression = Compression::None;
  opts.mtime = 1234567890;
  Written w = write(fx.entries, opts);
  const std::string& tar = w.blob;
  REQUIRE(tar.size() % 512 == 0);
  CHECK_FALSE(contains(tar, "atime="));
  CHECK_FALSE(contains(tar, "ctime="));
  CHECK_FALSE(contains(tar, "LIBARCHIVE."));
  CHECK_FALSE(contains(tar, "SCHILY."));
  CHECK(contains(tar, "path=" + fx.long_path + "\n"));  // PAX extended header for the long name
  // Walk the ustar headers: uname/gname empty, mtime octal, magic "ustar\0".
  std::size_t off = 0;
  int headers = 0;
  const std::string mtime_octal = "11145401322";  // 1234567890 in octal
  while (off + 512 <= tar.size()) {
    const char* h = tar.data() + off;
    if (std::all_of(h, h + 512, [](char c) { return c == 0; })) break;  // end-of-archive
    ++headers;
    CHECK(std::string(h + 257, 6) == std::string("ustar\0", 6));
    CHECK(std::string(h + 265, 32) == std::string(32, '\0'));  // uname
    CHECK(std::string(h + 297, 32) == std::string(32, '\0'));  // gname
    CHECK(std::string(h + 136, 11) == mtime_octal);
    std::uint64_t size = std::strtoull(std::string(h + 124, 12).c_str(), nullptr, 8);
    off += 512 + (size + 511) / 512 * 512;
  }
  CHECK(headers >= static_cast<int>(fx.entries.size()));
  // Ends with two zero blocks and no padding to a 10 KiB record.
  REQUIRE(tar.size() >= off + 1024);
  CHECK(tar.size() == off + 1024);
}

TEST_CASE("tar: write_layer digests, sizes and media types") {
  Fixture fx;
  for (Compression c : {Compression::Gzip, Compression::Zstd, Compression::None}) {
    INFO("compression " << kiln::spec::to_string(c));
    LayerWriteOptions opts;
    opts.compression = c;
    Written w = write(fx.entries, opts);
    const std::string tar = kiln::testutil::decode(c, w.blob);
    CHECK(w.layer.digest == sha256_digest(w.blob));
    CHECK(w.layer.diff_id == sha256_digest(tar));
    CHECK(w.layer.size == w.blob.size());
    CHECK(w.layer.tar_size == tar.size());
    CHECK(w.layer.media_type == layer_media_type(c));
    if (c == Compression::None) {
      CHECK(w.layer.digest == w.layer.diff_id);
      CHECK(w.blob == tar);
    } else {
      CHECK(w.layer.digest != w.layer.diff_id);
      CHECK(w.blob.size() < tar.size());
    }
    // The same tar whatever the compression: the diff_id does not depend on it.
    LayerWriteOptions plain;
    plain.compression = Compression::None;
    CHECK(write(fx.entries, plain).layer.diff_id == w.layer.diff_id);
    // libarchive reads every compression back.
    CHECK(read_tar(w.blob).size() == fx.entries.size());
  }
}

TEST_CASE("tar: write_layer output is byte-identical across runs") {
  Fixture fx;
  for (Compression c : {Compression::Gzip, Compression::Zstd, Compression::None}) {
    INFO("compression " << kiln::spec::to_string(c));
    LayerWriteOptions opts;
    opts.compression = c;
    opts.mtime = 42;
    Written a = write(fx.entries, opts);
    // Touch the sources between runs: mtimes and ctimes on disk must not matter.
    ::utimensat(AT_FDCWD, (fx.tmp / "hello").c_str(), nullptr, 0);
    ::chmod((fx.tmp / "tool").c_str(), 0750);
    Written b = write(fx.entries, opts);
    ::chmod((fx.tmp / "tool").c_str(), 0700);
    CHECK(a.blob == b.blob);
    CHECK(a.layer.digest == b.layer.digest);
    CHECK(a.layer.diff_id == b.layer.diff_id);
    // A different mtime option changes the bytes.
    opts.mtime = 43;
    CHECK(write(fx.entries, opts).layer.diff_id != a.layer.diff_id);
  }
}

TEST_CASE("tar: write_layer of no entries is an empty tar") {
  LayerWriteOptions opts;
  opts.compression = Compression::None;
  Written w = write({}, opts);
  CHECK(w.blob == std::string(1024, '\0'));
  CHECK(w.layer.diff_id == sha256_digest(std::string(1024, '\0')));
  CHECK(w.layer.tar_size == 1024);
}

TEST_CASE("tar: write_layer refuses a source file that changed since the entry was made") {
  TempDir tmp;
  kiln::testutil::write_file(tmp / "f", "0123456789");
  LayerWriteOptions opts;
  opts.compression = Compression::None;

  SECTION("grew") {
    auto entries = normalize_entries({tar_file("f", tmp / "f")});
    kiln::testutil::write_file(tmp / "f", "0123456789-more");
    CHECK_THROWS_WITH(write(entries, opts),
                      Catch::Contains("changed") && Catch::Contains((tmp / "f").string()));
  }
  SECTION("shrank") {
    auto entries = normalize_entries({tar_file("f", tmp / "f")});
    kiln::testutil::write_file(tmp / "f", "01234");
    CHECK_THROWS_WITH(write(entries, opts),
                      Catch::Contains("changed") && Catch::Contains((tmp / "f").string()));
  }
  SECTION("same size, different mtime/ctime than recorded") {
    struct stat st{};
    REQUIRE(::stat((tmp / "f").c_str(), &st) == 0);
    TarEntry e = tar_file("f", tmp / "f");
    e.mtime_ns = std::int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    e.ctime_ns = std::int64_t(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec;
    // The recorded identity matches: fine.
    CHECK_NOTHROW(write({e}, opts));
    TarEntry stale = e;
    stale.mtime_ns -= 1;
    CHECK_THROWS_WITH(write({stale}, opts), Catch::Contains("changed"));
    stale = e;
    stale.ctime_ns += 1;
    CHECK_THROWS_WITH(write({stale}, opts), Catch::Contains("changed"));
  }
}

TEST_CASE("tar: write_layer names a missing source file") {
  TempDir tmp;
  kiln::testutil::write_file(tmp / "f", "data");
  TarEntry e = tar_file("f", tmp / "f");
  std::filesystem::remove(tmp / "f");
  LayerWriteOptions opts;
  CHECK_THROWS_WITH(write({e}, opts), Catch::Contains((tmp / "f").string()));

  // A source that is a symlink is not followed.
  kiln::testutil::write_file(tmp / "real", "data");
  std::filesystem::create_symlink(tmp / "real", tmp / "f");
  CHECK_THROWS_WITH(write({e}, opts), Catch::Contains((tmp / "f").string()));
}

TEST_CASE("tar: write_layer refuses a name or link target that is not UTF-8 (no crash)") {
  LayerWriteOptions opts;
  opts.compression = Compression::None;
  CHECK_THROWS_WITH(write({tar_dir("bad\xff-name")}, opts),
                    Catch::Contains("not valid UTF-8") && Catch::Contains("bad\xff-name"));
  CHECK_THROWS_WITH(write({tar_symlink("link", "bad\xfe-target")}, opts),
                    Catch::Contains("not valid UTF-8") && Catch::Contains("bad\xfe-target"));
  CHECK_THROWS_WITH(write({tar_hardlink("hard", "bad\xfe")}, opts), Catch::Contains("not valid UTF-8"));
}

TEST_CASE("tar: write_layer propagates a sink error") {
  TempDir tmp;
  kiln::testutil::write_file(tmp / "f", kiln::testutil::random_bytes(200000, 2));
  LayerWriteOptions opts;
  opts.compression = Compression::None;
  auto failing = [](const void*, std::size_t) { throw std::runtime_error("disk full (test)"); };
  CHECK_THROWS_WITH(write_layer({tar_file("f", tmp / "f")}, opts, failing), Catch::Contains("disk full (test)"));
}

TEST_CASE("tar: write_layer output does not depend on the process locale") {
  Fixture fx;
  LayerWriteOptions opts;
  opts.compression = Compression::None;
  const std::string saved = std::setlocale(LC_ALL, nullptr);
  REQUIRE(std::setlocale(LC_ALL, "C"));
  Written c = write(fx.entries, opts);
  const bool have_utf8 = std::setlocale(LC_CTYPE, "C.UTF-8") != nullptr;
  Written u = have_utf8 ? write(fx.entries, opts) : c;
  std::setlocale(LC_ALL, saved.c_str());
  REQUIRE(have_utf8);
  CHECK(c.blob == u.blob);
  // Names are written as UTF-8 PAX records, whatever the locale.
  CHECK(contains(c.blob, "path=" + fx.utf8_path + "\n"));
  CHECK(contains(c.blob, "linkpath=caf\xc3\xa9/\xe6\x97\xa5\n"));
  CHECK_FALSE(contains(c.blob, "hdrcharset"));
}
