// Unit tests for run/unpack: real tars (written with libarchive here, or with the project's own
// layer writer) applied to directories. Flat whiteouts and opaque directories in either entry
// order, type changes, hardlinks, symlinks, modes, owners, special files, hostile layers that try
// to write outside the root, the overlay form (and, where mounting works, overlayfs reading it),
// corrupt blobs and media types.
#include "run/unpack.h"

#include <archive.h>
#include <archive_entry.h>
#include <grp.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "layers/digest.h"
#include "layers/tar_writer.h"
#include "testutil.h"

using namespace kiln::run;
using kiln::testutil::contains;
using kiln::testutil::read_file;
using kiln::testutil::TempDir;
using kiln::testutil::write_file;
namespace fs = std::filesystem;

namespace {

const char* kTar = "application/vnd.oci.image.layer.v1.tar";
const char* kTarGz = "application/vnd.oci.image.layer.v1.tar+gzip";
const char* kTarZst = "application/vnd.oci.image.layer.v1.tar+zstd";

/// One tar entry for write_tar(); `hardlink` makes it a hardlink to that path.
struct Ent {
  std::string path;
  unsigned type = AE_IFREG;
  unsigned mode = 0644;
  std::string data;
  std::string symlink, hardlink;
  la_int64_t uid = 0, gid = 0;
  unsigned major = 0, minor = 0;
};
Ent file(const std::string& p, const std::string& data = "x", unsigned mode = 0644) {
  return Ent{p, AE_IFREG, mode, data};
}
Ent dir(const std::string& p, unsigned mode = 0755) { return Ent{p, AE_IFDIR, mode}; }
Ent slink(const std::string& p, const std::string& target) {
  Ent e{p, AE_IFLNK, 0777};
  e.symlink = target;
  return e;
}
Ent hlink(const std::string& p, const std::string& target) {
  Ent e{p, AE_IFREG, 0644};
  e.hardlink = target;
  return e;
}
Ent whiteout(const std::string& p) { return file(p, ""); }
Ent device(const std::string& p, unsigned type, unsigned major, unsigned minor) {
  Ent e{p, type, 0666};
  e.major = major;
  e.minor = minor;
  return e;
}

enum class Codec { None, Gzip, Zstd };

/// Writes the entries, in the order given, as a tar blob (PAX, or GNU tar) at `out`.
fs::path write_tar(const fs::path& out, const std::vector<Ent>& entries, Codec codec = Codec::None, bool gnu = false) {
  struct archive* a = archive_write_new();
  if (gnu)
    archive_write_set_format_gnutar(a);
  else
    archive_write_set_format_pax_restricted(a);
  if (codec == Codec::Gzip) archive_write_add_filter_gzip(a);
  if (codec == Codec::Zstd) archive_write_add_filter_zstd(a);
  if (archive_write_open_filename(a, out.c_str()) != ARCHIVE_OK)
    throw std::runtime_error(std::string("tar open: ") + archive_error_string(a));
  for (const Ent& e : entries) {
    struct archive_entry* ae = archive_entry_new();
    archive_entry_set_pathname(ae, e.path.c_str());
    archive_entry_set_filetype(ae, e.type);
    archive_entry_set_perm(ae, e.mode);
    archive_entry_set_uid(ae, e.uid);
    archive_entry_set_gid(ae, e.gid);
    archive_entry_set_mtime(ae, 1000000000, 0);
    if (!e.symlink.empty()) archive_entry_set_symlink(ae, e.symlink.c_str());
    if (!e.hardlink.empty()) archive_entry_set_hardlink(ae, e.hardlink.c_str());
    if (e.type == AE_IFCHR || e.type == AE_IFBLK) archive_entry_set_rdev(ae, makedev(e.major, e.minor));
    const bool data = e.type == AE_IFREG && e.hardlink.empty();
    archive_entry_set_size(ae, data ? static_cast<la_int64_t>(e.data.size()) : 0);
    if (archive_write_header(a, ae) < ARCHIVE_WARN)
      throw std::runtime_error(std::string("tar header: ") + archive_error_string(a));
    if (data && !e.data.empty()) archive_write_data(a, e.data.data(), e.data.size());
    archive_entry_free(ae);
  }
  archive_write_close(a);
  archive_write_free(a);
  return out;
}

/// lstat(), failing the test when the path does not exist.
struct stat lstat_of(const fs::path& p) {
  struct stat st{};
  if (::lstat(p.c_str(), &st) != 0) FAIL("lstat " << p << ": " << std::strerror(errno));
  return st;
}

bool present(const fs::path& p) {
  struct stat st{};
  return ::lstat(p.c_str(), &st) == 0;
}

/// Every path below `dir`, relative, sorted.
std::set<std::string> tree_of(const fs::path& dir) {
  std::set<std::string> out;
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator(); ++it)
    out.insert(fs::relative(it->path(), dir).string());
  return out;
}

bool is_root() {
  if (::geteuid() == 0) return true;
  WARN("not root: part of this unpack test skipped");
  return false;
}

std::string opaque_xattr(const fs::path& p) {
  char buf[8] = {};
  ssize_t n = ::lgetxattr(p.c_str(), "trusted.overlay.opaque", buf, sizeof buf);
  return n < 0 ? std::string() : std::string(buf, static_cast<std::size_t>(n));
}

/// Applies the blob and expects an UnpackError whose message names `needle`.
void expect_refused(const fs::path& blob, const fs::path& root, const std::string& needle) {
  try {
    apply_layer(blob, kTar, root);
    FAIL("no error for " << blob);
  } catch (const UnpackError& e) {
    INFO(e.what());
    CHECK(contains(e.what(), needle));
  }
}

}  // namespace

TEST_CASE("flat: whiteouts remove a file and a directory of the layer below", "[unpack]") {
  using kiln::layers::TarEntry;
  TempDir t;
  write_file(t / "src/a", "a");
  write_file(t / "src/b", "bb");
  write_file(t / "src/x", "xxx");
  auto src_file = [&](const std::string& path, const std::string& src) {
    TarEntry e;
    e.path = path;
    e.source = (t / "src" / src).string();
    e.size = fs::file_size(e.source);
    return e;
  };
  auto wh = [](const std::string& path) {
    TarEntry e;
    e.path = path;
    e.type = TarEntry::Type::Whiteout;
    return e;
  };
  auto write = [&](const std::string& name, std::vector<TarEntry> entries, kiln::layers::Compression c) {
    std::string bytes;
    auto w = kiln::layers::write_layer(kiln::layers::normalize_entries(std::move(entries)), {c},
                                       kiln::testutil::string_sink(&bytes));
    write_file(t / name, bytes);
    return std::make_pair(t / name, w.media_type);
  };
  auto [l1, mt1] = write("l1",
                         {src_file("etc/a", "a"), src_file("etc/b", "b"), src_file("opt/dir/x", "x"),
                          src_file("opt/dir/sub/y", "x"), src_file("keep", "a")},
                         kiln::layers::Compression::Gzip);
  auto [l2, mt2] =
      write("l2", {wh("etc/.wh.a"), wh("opt/.wh.dir"), wh(".wh.not-there"), wh("gone/.wh.x"), src_file("etc/new", "b")},
            kiln::layers::Compression::Zstd);
  fs::create_directories(t / "root");

  UnpackStats s1 = apply_layer(l1, mt1, t / "root");
  CHECK(s1.entries == 9);  // 5 files, 4 directories
  CHECK(s1.bytes == 1 + 2 + 3 + 3 + 1);
  CHECK(s1.whiteouts == 0);
  CHECK(read_file(t / "root/opt/dir/sub/y") == "xxx");

  UnpackStats s2 = apply_layer(l2, mt2, t / "root");
  CHECK(s2.whiteouts == 4);
  // ("gone" is a directory entry normalize_entries added to layer 2.)
  CHECK(tree_of(t / "root") == std::set<std::string>{"etc", "etc/b", "etc/new", "gone", "keep", "opt"});
  CHECK(read_file(t / "root/etc/b") == "bb");
  CHECK(read_file(t / "root/etc/new") == "bb");
}

TEST_CASE("flat: an opaque directory keeps only this layer's children, in either entry order", "[unpack]") {
  for (bool marker_first : {true, false}) {
    INFO("opaque marker " << (marker_first ? "before" : "after") << " its siblings");
    TempDir t;
    fs::create_directories(t / "root");
    write_tar(t / "l1", {dir("d"), file("d/old"), dir("d/sub"), file("d/sub/old2"), file("d/both", "lower"),
                         dir("other"), file("other/f")});
    std::vector<Ent> l2 = {dir("d"),           file("d/new"),           dir("d/sub"),
                           file("d/sub/new2"), file("d/both", "upper"), file("d/deep/implied")};
    l2.insert(marker_first ? l2.begin() + 1 : l2.end(), whiteout("d/.wh..wh..opq"));
    write_tar(t / "l2", l2);

    apply_layer(t / "l1", kTar, t / "root");
    UnpackStats s = apply_layer(t / "l2", kTar, t / "root");
    CHECK(s.whiteouts == 1);
    CHECK(tree_of(t / "root") == std::set<std::string>{"d", "d/both", "d/deep", "d/deep/implied", "d/new", "d/sub",
                                                       "d/sub/new2", "other", "other/f"});
    CHECK(read_file(t / "root/d/both") == "upper");
  }
}

TEST_CASE("flat: whiteout and opaque marker never hide the layer's own entries", "[unpack]") {
  TempDir t;
  fs::create_directories(t / "root");
  write_tar(t / "l1", {dir("a"), file("a/lower"), file("f", "lower"), dir("b"), file("b/lower")});
  // Whiteouts after the names they white out, in the same layer ("a", "f"), and before ("b").
  // And a whiteout below a directory nobody has: nothing to remove, nothing created.
  write_tar(t / "l2", {dir("a"), file("a/mine"), file("f", "mine"), whiteout(".wh.a"), whiteout(".wh.f"),
                       whiteout(".wh.b"), dir("b"), file("b/mine"), whiteout("nope/.wh.x")});
  apply_layer(t / "l1", kTar, t / "root");
  apply_layer(t / "l2", kTar, t / "root");
  CHECK(tree_of(t / "root") == std::set<std::string>{"a", "a/mine", "b", "b/mine", "f"});
  CHECK(read_file(t / "root/f") == "mine");
}

TEST_CASE("flat: entries replace entries of another type", "[unpack]") {
  TempDir t;
  fs::create_directories(t / "root");
  write_tar(t / "l1", {dir("x"), dir("x/deep"), file("x/deep/inner"), file("y", "file"), dir("z"), file("z/f"),
                       slink("s", "target"), file("p/f")});
  write_tar(t / "l2", {file("x", "now a file"), dir("y", 0750), file("y/child"), slink("z", "elsewhere"), dir("s"),
                       file("s/in"), file("p/f/under")});  // p/f: the file becomes a parent dir
  apply_layer(t / "l1", kTar, t / "root");
  apply_layer(t / "l2", kTar, t / "root");
  CHECK(read_file(t / "root/x") == "now a file");
  CHECK(S_ISDIR(lstat_of(t / "root/y").st_mode));
  CHECK((lstat_of(t / "root/y").st_mode & 07777) == 0750);
  CHECK(present(t / "root/y/child"));
  CHECK(fs::read_symlink(t / "root/z") == "elsewhere");
  CHECK(S_ISDIR(lstat_of(t / "root/s").st_mode));
  CHECK(present(t / "root/s/in"));
  CHECK(present(t / "root/p/f/under"));

  SECTION("a directory over a directory merges and takes the new mode") {
    write_tar(t / "l3", {dir("y", 0700), file("y/second")});
    apply_layer(t / "l3", kTar, t / "root");
    CHECK(present(t / "root/y/child"));
    CHECK(present(t / "root/y/second"));
    CHECK((lstat_of(t / "root/y").st_mode & 07777) == 0700);
  }
}

TEST_CASE("hardlinks share the inode; bad targets are refused", "[unpack]") {
  TempDir t;
  fs::create_directories(t / "root");
  write_tar(t / "l1", {file("a", "data"), hlink("b", "a"), dir("sub"), hlink("sub/c", "./a"), slink("sym", "a"),
                       hlink("sym2", "sym")});
  apply_layer(t / "l1", kTar, t / "root");
  CHECK(lstat_of(t / "root/a").st_nlink == 3);
  CHECK(lstat_of(t / "root/b").st_ino == lstat_of(t / "root/a").st_ino);
  CHECK(lstat_of(t / "root/sub/c").st_ino == lstat_of(t / "root/a").st_ino);
  CHECK(read_file(t / "root/sub/c") == "data");
  // A hardlink to a symlink links the symlink itself.
  CHECK(lstat_of(t / "root/sym2").st_ino == lstat_of(t / "root/sym").st_ino);

  SECTION("rewriting one name in a later layer leaves the other links alone") {
    write_tar(t / "l2", {file("b", "new")});
    apply_layer(t / "l2", kTar, t / "root");
    CHECK(read_file(t / "root/a") == "data");
    CHECK(read_file(t / "root/b") == "new");
  }
  SECTION("a link to a file of a lower layer") {
    write_tar(t / "l2", {hlink("d", "a")});
    apply_layer(t / "l2", kTar, t / "root");
    CHECK(lstat_of(t / "root/d").st_ino == lstat_of(t / "root/a").st_ino);
  }
  SECTION("missing target") {
    write_tar(t / "l2", {hlink("e", "nothing")});
    expect_refused(t / "l2", t / "root", "'e'");
  }
  SECTION("directory target") {
    write_tar(t / "l2", {hlink("e", "sub")});
    expect_refused(t / "l2", t / "root", "directory");
  }
}

TEST_CASE("symlinks are stored as written, never followed", "[unpack]") {
  TempDir t;
  fs::create_directories(t / "root");
  fs::create_directories(t / "outside");
  write_file(t / "outside/victim", "safe");
  write_tar(t / "l1", {slink("abs", "/etc/passwd"), slink("rel", "../../x/y"),
                       slink("over", (t / "outside/victim").string()), slink("dangling", "nowhere")});
  write_tar(t / "l2", {file("over", "replaced")});  // replaces the link, does not write through it
  apply_layer(t / "l1", kTar, t / "root");
  CHECK(fs::read_symlink(t / "root/abs") == "/etc/passwd");
  CHECK(fs::read_symlink(t / "root/rel") == "../../x/y");
  CHECK(fs::read_symlink(t / "root/dangling") == "nowhere");
  apply_layer(t / "l2", kTar, t / "root");
  CHECK(S_ISREG(lstat_of(t / "root/over").st_mode));
  CHECK(read_file(t / "root/over") == "replaced");
  CHECK(read_file(t / "outside/victim") == "safe");
}

TEST_CASE("permission bits, including setuid and read-only directories", "[unpack]") {
  TempDir t;
  fs::create_directories(t / "root");
  write_tar(t / "l1", {file("suid", "x", 04755), file("sgid", "x", 02711), file("secret", "x", 0600),
                       file("none", "x", 0), dir("tmp", 01777), dir("shared", 02775), dir("ro", 0555),
                       file("ro/inside", "written after its read-only dir"), dir("ro/sub", 0500), file("ro/sub/f")});
  apply_layer(t / "l1", kTar, t / "root");
  auto mode = [&](const char* p) { return lstat_of(t / "root" / p).st_mode & 07777; };
  CHECK(mode("suid") == 04755);
  CHECK(mode("sgid") == 02711);
  CHECK(mode("secret") == 0600);
  CHECK(mode("none") == 0);
  CHECK(mode("tmp") == 01777);
  CHECK(mode("shared") == 02775);
  CHECK(mode("ro") == 0555);
  CHECK(mode("ro/sub") == 0500);
  CHECK(read_file(t / "root/ro/inside") == "written after its read-only dir");
  CHECK(lstat_of(t / "root/suid").st_mtime == 1000000000);

  SECTION("a later layer writes into a read-only directory of a lower one") {
    write_tar(t / "l2", {file("ro/sub/g"), whiteout("ro/.wh.inside")});
    apply_layer(t / "l2", kTar, t / "root");
    CHECK(present(t / "root/ro/sub/g"));
    CHECK(!present(t / "root/ro/inside"));
    CHECK(mode("ro") == 0555);
    CHECK(mode("ro/sub") == 0500);
  }
}

TEST_CASE("without root, read-only directories are still written into and restored", "[unpack]") {
  if (!is_root()) return;  // the test drops to nobody in a child
  TempDir t;
  ::chmod(t.path().c_str(), 0755);
  fs::create_directories(t / "root");
  ::chown((t / "root").c_str(), 65534, 65534);
  write_tar(t / "l1", {dir("ro", 0555), file("ro/a"), dir("ro/sub", 0500), file("ro/sub/b"), dir("gone", 0555),
                       file("gone/c"), dir("op", 0555), file("op/old")});
  write_tar(t / "l2", {file("ro/sub/new"), whiteout("ro/.wh.a"), whiteout(".wh.gone"), dir("op", 0555),
                       whiteout("op/.wh..wh..opq"), file("op/mine")});
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(77);
    try {
      UnpackOptions mine;
      mine.preserve_owner = false;
      apply_layer(t / "l1", kTar, t / "root", mine);
      apply_layer(t / "l2", kTar, t / "root", mine);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "apply_layer as nobody: %s\n", e.what());
      ::_exit(100);
    }
    ::_exit(0);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 77) {
    WARN("cannot become nobody: test skipped");
    return;
  }
  REQUIRE(WEXITSTATUS(status) == 0);
  CHECK(tree_of(t / "root") == std::set<std::string>{"op", "op/mine", "ro", "ro/sub", "ro/sub/b", "ro/sub/new"});
  CHECK((lstat_of(t / "root/ro").st_mode & 07777) == 0555);
  CHECK((lstat_of(t / "root/ro/sub").st_mode & 07777) == 0500);
  CHECK((lstat_of(t / "root/op").st_mode & 07777) == 0555);
  CHECK(lstat_of(t / "root/ro/sub/new").st_uid == 65534);
}

TEST_CASE("owners are restored with preserve_owner, not without", "[unpack]") {
  TempDir t;
  Ent f = file("f"), d = dir("d"), l = slink("l", "f");
  for (Ent* e : {&f, &d, &l}) e->uid = 1234, e->gid = 5678;
  Ent suid = file("suid", "x", 04755);
  suid.uid = 1234;
  write_tar(t / "l1", {f, d, l, suid});

  fs::create_directories(t / "plain");
  UnpackOptions mine;
  mine.preserve_owner = false;
  apply_layer(t / "l1", kTar, t / "plain", mine);
  CHECK(lstat_of(t / "plain/f").st_uid == ::geteuid());

  if (!is_root()) return;
  fs::create_directories(t / "root");
  apply_layer(t / "l1", kTar, t / "root");
  for (const char* p : {"f", "d", "l"}) {
    INFO(p);
    CHECK(lstat_of(t / "root" / p).st_uid == 1234);
    CHECK(lstat_of(t / "root" / p).st_gid == 5678);
  }
  CHECK((lstat_of(t / "root/suid").st_mode & 07777) == 04755);  // chown did not clear it
}

TEST_CASE("special files: fifos; device nodes never made, standard ones skipped, others refused", "[unpack]") {
  TempDir t;
  write_tar(t / "l1", {dir("dev"), device("dev/null", AE_IFCHR, 1, 3), device("dev/urandom", AE_IFCHR, 1, 9),
                       device("dev/console", AE_IFCHR, 5, 1), Ent{"fifo", AE_IFIFO, 0640}});
  for (bool owner : {false, true}) {
    if (owner && ::geteuid() != 0) break;
    fs::path root = t / (owner ? "root" : "plain");
    fs::create_directories(root);
    UnpackOptions o;
    o.preserve_owner = owner;
    UnpackStats s = apply_layer(t / "l1", kTar, root, o);
    CHECK(S_ISFIFO(lstat_of(root / "fifo").st_mode));
    CHECK((lstat_of(root / "fifo").st_mode & 07777) == 0640);
    CHECK(!present(root / "dev/null"));
    CHECK(!present(root / "dev/urandom"));
    CHECK(!present(root / "dev/console"));
    REQUIRE(s.warnings.size() == 3);
    CHECK(contains(s.warnings[0], "dev/null"));
    CHECK(contains(s.warnings[0], "1:3"));
  }
  // A device that opens the host's disks or memory fails the layer, whoever unpacks it.
  struct Case {
    Ent dev;
    const char* what;
  };
  for (const Case& c : {Case{device("dev/sda", AE_IFBLK, 8, 0), "block device 8:0"},
                        Case{device("mem", AE_IFCHR, 1, 1), "character device 1:1"},
                        Case{device("deep/kmsg", AE_IFCHR, 1, 11), "character device 1:11"}}) {
    TempDir u;
    write_tar(u / "bad", {dir("dev"), c.dev});
    fs::create_directories(u / "root");
    try {
      apply_layer(u / "bad", kTar, u / "root");
      FAIL("no error for " << c.dev.path);
    } catch (const UnpackError& e) {
      INFO(e.what());
      CHECK(contains(e.what(), c.what));
      CHECK(contains(e.what(), "refusing entry '" + c.dev.path + "'"));
    }
    CHECK(!present(u / "root" / c.dev.path));
  }
}

TEST_CASE("the diff_id is computed while unpacking, and a mismatch is refused", "[unpack]") {
  TempDir t;
  std::vector<Ent> entries = {dir("etc"), file("etc/motd", "honest\n"), file("bin/tool", std::string(100000, 'x'), 0755)};
  write_tar(t / "l.tar", entries);
  const std::string tar = read_file(t / "l.tar");
  const std::string diff_id = kiln::layers::sha256_digest(tar);
  write_tar(t / "l.tgz", entries, Codec::Gzip);
  write_tar(t / "l.tzst", entries, Codec::Zstd);

  for (const char* blob : {"l.tar", "l.tgz", "l.tzst"}) {
    INFO(blob);
    TempDir r;
    UnpackOptions o;
    o.expect_diff_id = diff_id;
    // The media type need not name the codec: the magic bytes decide (some images mislabel).
    UnpackStats s = apply_layer(t / blob, kTarGz, r.path(), o);
    CHECK(s.diff_id == diff_id);
    CHECK(read_file(r / "etc/motd") == "honest\n");
  }
  SECTION("other content claiming this diff_id") {
    write_tar(t / "evil.tgz", {dir("etc"), file("etc/motd", "EVIL!!\n"), file("bin/tool", std::string(100000, 'x'), 0755)},
              Codec::Gzip);
    fs::create_directories(t / "root");
    UnpackOptions o;
    o.expect_diff_id = diff_id;
    try {
      apply_layer(t / "evil.tgz", kTarGz, t / "root", o);
      FAIL("no error");
    } catch (const UnpackError& e) {
      INFO(e.what());
      CHECK(contains(e.what(), "does not match its diff_id"));
      CHECK(contains(e.what(), diff_id));
    }
  }
  SECTION("bytes after the end-of-archive blocks count") {
    write_file(t / "padded.tar", tar + std::string(4096, '\0'));
    fs::create_directories(t / "root");
    UnpackStats s = apply_layer(t / "padded.tar", kTar, t / "root");
    CHECK(s.diff_id == kiln::layers::sha256_digest(tar + std::string(4096, '\0')));
    UnpackOptions o;
    o.expect_diff_id = diff_id;
    fs::create_directories(t / "root2");
    CHECK_THROWS_AS(apply_layer(t / "padded.tar", kTar, t / "root2", o), UnpackError);
  }
  SECTION("concatenated gzip members are one stream") {
    const std::string gz = read_file(t / "l.tgz");
    // Split the tar in two and gzip each half: gzip -c a; gzip -c b is a valid gzip of a+b.
    write_file(t / "a", tar.substr(0, 5000));
    write_file(t / "b", tar.substr(5000));
    std::string cat;
    for (const char* part : {"a", "b"}) {
      std::string cmd = "gzip -nc " + (t / part).string() + " >> " + (t / "two.tgz").string();
      REQUIRE(std::system(cmd.c_str()) == 0);
    }
    fs::create_directories(t / "root");
    UnpackOptions o;
    o.expect_diff_id = diff_id;
    UnpackStats s = apply_layer(t / "two.tgz", kTarGz, t / "root", o);
    CHECK(s.diff_id == diff_id);
    CHECK(read_file(t / "root/etc/motd") == "honest\n");
  }
  SECTION("a zstd bomb is streamed, not held in memory") {
    // 64 MiB of zeros in a file: a few KiB of zstd. The reader hands it out in small pieces.
    std::string zeros(64u << 20, '\0');
    write_tar(t / "bomb.tzst", {file("zeros", zeros)}, Codec::Zstd);
    zeros.clear();
    zeros.shrink_to_fit();
    CHECK(fs::file_size(t / "bomb.tzst") < (1u << 20));
    fs::create_directories(t / "root");
    UnpackStats s = apply_layer(t / "bomb.tzst", kTarZst, t / "root");
    CHECK(s.bytes == (64u << 20));
  }
}

TEST_CASE("errors name a layer in a blob store by its digest", "[unpack]") {
  TempDir t;
  const std::string hex(64, 'a');
  fs::create_directories(t / "blobs/sha256");
  write_tar(t / "blobs/sha256" / hex, {file("../escape", "x")});
  fs::create_directories(t / "root");
  try {
    apply_layer(t / "blobs/sha256" / hex, kTar, t / "root");
    FAIL("no error");
  } catch (const UnpackError& e) {
    INFO(e.what());
    CHECK(contains(e.what(), "layer sha256:" + hex));
    CHECK(contains(e.what(), "'../escape'"));
    // Bad input: the CLI maps it to exit 2.
    CHECK(dynamic_cast<const kiln::layers::InputError*>(&e) != nullptr);
  }
}

TEST_CASE("names: ./ prefixes, the root entry, long names, GNU tar", "[unpack]") {
  TempDir t;
  fs::create_directories(t / "root");
  ::chmod((t / "root").c_str(), 0755);
  const std::string long_dir(150, 'd'), long_name(200, 'n');
  for (bool gnu : {false, true}) {
    INFO((gnu ? "GNU tar" : "PAX"));
    write_tar(t / "l1",
              {dir("./", 0700), dir("./etc/"), file("./etc/./conf", "c"), dir(long_dir),
               file(long_dir + "/" + long_name, "long"), file("caf\xc3\xa9", "utf8")},
              Codec::Gzip, gnu);
    apply_layer(t / "l1", kTarGz, t / "root");
    CHECK(read_file(t / "root/etc/conf") == "c");
    CHECK(read_file(t / "root" / long_dir / long_name) == "long");
    CHECK(read_file(t / "root/caf\xc3\xa9") == "utf8");
    CHECK((lstat_of(t / "root").st_mode & 07777) == 0755);  // "./" leaves the root alone
  }
}

TEST_CASE("hostile layers are refused and write nothing outside the root", "[unpack]") {
  TempDir t;
  const fs::path out = t / "outside";
  fs::create_directories(out);
  struct Case {
    const char* what;
    std::vector<Ent> entries;
    std::string needle;
  };
  std::vector<Case> cases = {
      {"dot-dot", {file("../outside/evil")}, "../outside/evil"},
      {"dot-dot inside", {dir("a"), file("a/../../outside/evil")}, "a/../../outside/evil"},
      {"absolute", {file((out / "abs").string())}, (out / "abs").string()},
      {"through a symlink", {slink("link", out.string()), file("link/file")}, "link/file"},
      {"through a symlink, dir", {slink("link", out.string()), dir("link/sub")}, "link/sub"},
      {"deeper through a symlink", {slink("link", out.string()), file("link/x/y/file")}, "link/x/y/file"},
      {"relative symlink", {dir("d"), slink("d/up", "../.."), file("d/up/outside/evil")}, "d/up/outside/evil"},
      {"whiteout through a symlink", {slink("link", out.string()), whiteout("link/.wh.keep")}, "link/.wh.keep"},
      {"opaque through a symlink", {slink("link", out.string()), whiteout("link/.wh..wh..opq")}, "link/.wh..wh..opq"},
      {"hardlink out", {hlink("h", "../outside/keep")}, "'h'"},
      {"hardlink absolute", {hlink("h", (out / "keep").string())}, "'h'"},
      {"hardlink through a symlink", {slink("link", out.string()), hlink("h", "link/keep")}, "'h'"},
      {"whiteout of dot-dot", {whiteout(".wh..."), file("x")}, ".wh..."},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    write_file(out / "keep", "keep");
    TempDir root("kiln-unpack-root");
    write_tar(t / "evil", c.entries);
    expect_refused(t / "evil", root.path(), c.needle);
    CHECK(tree_of(out) == std::set<std::string>{"keep"});
    CHECK(read_file(out / "keep") == "keep");
  }

  SECTION("a symlink planted by a lower layer is no way out either") {
    TempDir root("kiln-unpack-root");
    write_tar(t / "l1", {slink("etc", out.string())});
    write_tar(t / "l2", {file("etc/passwd", "pwned")});
    apply_layer(t / "l1", kTar, root.path());
    expect_refused(t / "l2", root.path(), "etc/passwd");
    CHECK(tree_of(out) == std::set<std::string>{"keep"});
  }
}

TEST_CASE("overlay form: whiteouts become 0/0 devices, opaque dirs get the xattr", "[unpack]") {
  if (!is_root()) return;
  TempDir t;
  fs::create_directories(t / "root");
  write_tar(t / "l", {dir("a"), whiteout("a/.wh.gone"), whiteout("b/c/.wh.deep"), dir("o"), whiteout("o/.wh..wh..opq"),
                      file("o/new"), whiteout(".wh.re"), dir("re"), file("re/f")});
  UnpackOptions o;
  o.format = UnpackFormat::Overlay;
  UnpackStats s;
  try {
    s = apply_layer(t / "l", kTar, t / "root", o);
  } catch (const std::system_error& e) {
    if (e.code().value() == EPERM || e.code().value() == ENOTSUP) {
      WARN("no mknod or trusted.* xattrs here: overlay form test skipped (" << e.what() << ")");
      return;
    }
    throw;
  }
  CHECK(s.whiteouts == 4);
  for (const char* p : {"a/gone", "b/c/deep"}) {
    INFO(p);
    struct stat st = lstat_of(t / "root" / p);
    CHECK(S_ISCHR(st.st_mode));
    CHECK(st.st_rdev == makedev(0, 0));
    CHECK((st.st_mode & 07777) == 0);
  }
  CHECK(opaque_xattr(t / "root/o") == "y");
  CHECK(present(t / "root/o/new"));
  CHECK(opaque_xattr(t / "root/a") == "");
  // Whited out, then made a directory by the same layer: the lower "re" must stay hidden.
  CHECK(S_ISDIR(lstat_of(t / "root/re").st_mode));
  CHECK(opaque_xattr(t / "root/re") == "y");
}

TEST_CASE("overlayfs reads an overlay-form layer as a whiteout", "[unpack]") {
  if (!is_root()) return;
  TempDir t;
  for (const char* d : {"l1", "l2", "mnt"}) fs::create_directories(t / d);
  write_tar(t / "b1", {dir("a"), file("a/x"), file("a/y"), dir("d"), file("d/z")});
  write_tar(t / "b2", {dir("a"), whiteout("a/.wh.x"), dir("d"), whiteout("d/.wh..wh..opq"), file("d/new")});
  UnpackOptions o;
  o.format = UnpackFormat::Overlay;
  try {
    apply_layer(t / "b1", kTar, t / "l1", o);
    apply_layer(t / "b2", kTar, t / "l2", o);
  } catch (const std::system_error& e) {
    WARN("overlay form not possible here: " << e.what());
    return;
  }
  // In a child with its own mount namespace, so no mount outlives it.
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    if (::unshare(CLONE_NEWNS) != 0 || ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) ::_exit(77);
    std::string opts = "lowerdir=" + (t / "l2").string() + ":" + (t / "l1").string();
    if (::mount("overlay", (t / "mnt").c_str(), "overlay", MS_RDONLY, opts.c_str()) != 0) ::_exit(77);
    int rc = 0;
    if (present(t / "mnt/a/x")) rc |= 1;
    if (!present(t / "mnt/a/y")) rc |= 2;
    if (present(t / "mnt/d/z")) rc |= 4;
    if (!present(t / "mnt/d/new")) rc |= 8;
    ::umount((t / "mnt").c_str());
    ::_exit(rc);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 77) {
    WARN("cannot mount overlayfs here: mount test skipped");
    return;
  }
  INFO("bits: 1 a/x visible, 2 a/y missing, 4 d/z visible, 8 d/new missing");
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("corrupt and truncated blobs, media types", "[unpack]") {
  TempDir t;
  fs::create_directories(t / "root");
  std::vector<Ent> entries = {file("big", kiln::testutil::random_bytes(200000)), file("small", "s")};
  write_tar(t / "good.tgz", entries, Codec::Gzip);
  std::string gz = read_file(t / "good.tgz");

  SECTION("truncated gzip") {
    write_file(t / "cut.tgz", gz.substr(0, gz.size() / 2));
    try {
      apply_layer(t / "cut.tgz", kTarGz, t / "root");
      FAIL("no error");
    } catch (const UnpackError& e) {
      INFO(e.what());
      CHECK(contains(e.what(), (t / "cut.tgz").string()));
    }
  }
  SECTION("truncated plain tar") {
    write_tar(t / "good.tar", entries);
    std::string tar = read_file(t / "good.tar");
    write_file(t / "cut.tar", tar.substr(0, 100000));  // in the middle of "big"'s data
    try {
      apply_layer(t / "cut.tar", kTar, t / "root");
      FAIL("no error");
    } catch (const UnpackError& e) {
      INFO(e.what());
      CHECK(contains(e.what(), (t / "cut.tar").string()));
      CHECK(contains(e.what(), "big"));
    }
  }
  SECTION("garbage") {
    write_file(t / "junk", kiln::testutil::random_bytes(5000));
    CHECK_THROWS_AS(apply_layer(t / "junk", kTar, t / "root"), UnpackError);
  }
  SECTION("missing blob") { CHECK_THROWS_AS(apply_layer(t / "nothing", kTar, t / "root"), std::system_error); }
  SECTION("media types") {
    write_tar(t / "good.tar", entries);
    write_tar(t / "good.tzst", entries, Codec::Zstd);
    CHECK(apply_layer(t / "good.tgz", "application/vnd.docker.image.rootfs.diff.tar.gzip", t / "root").entries == 2);
    CHECK(apply_layer(t / "good.tgz", kTarGz, t / "root").bytes == 200001);
    CHECK(apply_layer(t / "good.tzst", kTarZst, t / "root").entries == 2);
    CHECK(apply_layer(t / "good.tar", kTar, t / "root").entries == 2);
    CHECK(apply_layer(t / "good.tar", "application/vnd.docker.image.rootfs.diff.tar", t / "root").entries == 2);
    CHECK_THROWS_AS(apply_layer(t / "good.tar", "application/json", t / "root"), UnpackError);
    CHECK(read_file(t / "root/big") == kiln::testutil::random_bytes(200000));
  }
}

TEST_CASE("a large layer streams quickly", "[unpack]") {
  TempDir t;
  fs::create_directories(t / "root");
  const std::string big = kiln::testutil::random_bytes(64u << 20);
  write_tar(t / "big.tar", {file("blob", big), file("other", big.substr(0, 1 << 20))});
  auto start = std::chrono::steady_clock::now();
  UnpackStats s = apply_layer(t / "big.tar", kTar, t / "root");
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO("64 MiB in " << secs << " s");
  CHECK(s.bytes == big.size() + (1 << 20));
  CHECK(fs::file_size(t / "root/blob") == big.size());
  CHECK(read_file(t / "root/blob") == big);
  CHECK(secs < 5);  // generous: well under a second on an idle machine
}
