// libgit2 behind GitRepo: one repository and at most one index load per walk, no git process;
// with a memo, no libgit2 at all until the index is needed.
#include "layers/git_repo.h"

#include <fcntl.h>
#include <git2.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "layers/digest.h"
#include "layers/fsutil.h"

namespace kiln::layers {

struct GitRepo::Handles {
  git_repository* repo = nullptr;
  git_index* index = nullptr;
  ~Handles() {
    if (index) git_index_free(index);
    if (repo) git_repository_free(repo);
    git_libgit2_shutdown();
  }
};

namespace {

std::string last_error() {
  const git_error* e = git_error_last();
  return e && e->message ? e->message : "unknown libgit2 error";
}

std::string real(const std::string& p) {
  char* r = ::realpath(p.c_str(), nullptr);
  if (!r) return p;
  std::string s(r);
  std::free(r);
  return s;
}

}  // namespace

GitRepo::~GitRepo() {
  if (prefetch_.joinable()) prefetch_.join();
}

namespace {
void read_config(git_repository* repo, std::string* excludes_file, bool* ignore_case);
}

/// libgit2 finds no repository (open() answers null).
struct GitRepo::NotARepo {};

std::unique_ptr<GitRepo> GitRepo::open(const std::string& dir) {
  try {
    return open_libgit2(dir);
  } catch (const NotARepo&) {
    return nullptr;
  }
}

std::unique_ptr<GitRepo> GitRepo::open_libgit2(const std::string& dir) {
  std::unique_ptr<GitRepo> g(new GitRepo());
  g->dir_ = dir;
  g->open_handles();
  const char* wd = git_repository_workdir(g->h_->repo);
  if (!wd) return nullptr;  // bare
  std::string workdir = real(wd);
  while (workdir.size() > 1 && workdir.back() == '/') workdir.pop_back();
  if (dir == workdir) {
    g->prefix_.clear();
  } else if (dir.size() > workdir.size() && dir.compare(0, workdir.size(), workdir) == 0 &&
             (workdir == "/" || dir[workdir.size()] == '/')) {
    g->prefix_ = dir.substr(workdir == "/" ? 1 : workdir.size() + 1) + "/";
  } else {
    return nullptr;
  }
  if (g->prefix_ == ".git/" || g->prefix_.rfind(".git/", 0) == 0) return nullptr;
  g->workdir_ = workdir;
  g->commondir_ = git_repository_commondir(g->h_->repo);
  if (!g->commondir_.empty() && g->commondir_.back() != '/') g->commondir_ += '/';
  g->gitdir_ = git_repository_path(g->h_->repo);
  g->stat_gitdir();
  read_config(g->h_->repo, &g->excludes_file_, &g->ignore_case_);
  return g;
}

void GitRepo::stat_gitdir() {
  struct stat st{};
  gitdir_known_ = !gitdir_.empty() && ::stat(gitdir_.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  gitdir_dev_ = gitdir_known_ ? st.st_dev : 0;
  gitdir_ino_ = gitdir_known_ ? st.st_ino : 0;
}

void GitRepo::open_handles() const {
  auto h = std::make_unique<Handles>();
  git_libgit2_init();
  // kiln only reads the index, the exclude files and the config; it runs nothing the repository
  // configures, so a checkout owned by another user (CI as root) is read like any other.
  git_libgit2_opts(GIT_OPT_SET_OWNER_VALIDATION, 0);
  int rc = git_repository_open_ext(&h->repo, dir_.c_str(), 0, nullptr);
  if (rc == GIT_ENOTFOUND) throw NotARepo{};
  if (rc < 0) throw InputError("cannot open the git repository holding '" + dir_ + "': " + last_error());
  h_ = std::move(h);
}

git_index* GitRepo::index() const {
  // Loaded on first use: only a path that an exclude rule matches asks whether git tracks it, and
  // parsing a large index (10,000 entries: ~1.3 MB) is most of what libgit2 costs a walk.
  if (prefetch_.joinable()) prefetch_.join();
  if (prefetch_error_) std::rethrow_exception(std::exchange(prefetch_error_, nullptr));
  index_used_ = true;
  load_index();
  return h_->index;
}

void GitRepo::load_index() const {
  if (!h_) {
    try {
      open_handles();
    } catch (const NotARepo&) {
      throw InputError("the git repository holding '" + dir_ + "' is gone");
    }
  }
  if (!h_->index && git_repository_index(&h_->index, h_->repo) < 0)
    throw InputError("cannot read the git index of '" + workdir_ + "': " + last_error());
}

// ---- The memo ---------------------------------------------------------------------------------

namespace {

constexpr int kMemoVersion = 3;  // 2: core.ignorecase; 3: gitdir

/// What lstat says of a path, as a string ("-" when absent): any change to the entry (content,
/// replacement, entries added to or removed from a directory) changes it.
std::string stat_key(const std::string& path) {
  struct stat st{};
  if (::lstat(path.c_str(), &st) != 0) return "-";
  return std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino) + ":" + std::to_string(st.st_mode) + ":" +
         std::to_string(st.st_size) + ":" + std::to_string(st.st_mtim.tv_sec) + "." +
         std::to_string(st.st_mtim.tv_nsec) + ":" + std::to_string(st.st_ctim.tv_sec) + "." +
         std::to_string(st.st_ctim.tv_nsec);
}

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

/// The hash of the environment git's answer may depend on: $HOME, $XDG_CONFIG_HOME and every GIT_* variable
/// (GIT_CONFIG_GLOBAL, GIT_CEILING_DIRECTORIES… as well as ones that change nothing here, such as
/// GIT_SSL_CAINFO: the memo holds while they stay as they were).
std::string git_environment() {
  std::vector<std::string> vars;
  for (char** e = environ; e && *e; ++e)
    if (std::strncmp(*e, "GIT_", 4) == 0 || std::strncmp(*e, "HOME=", 5) == 0 || std::strncmp(*e, "XDG_CONFIG_HOME=", 16) == 0)
      vars.emplace_back(*e);
  std::sort(vars.begin(), vars.end());
  std::string out;
  for (const auto& v : vars) out.append(v).push_back('\n');
  return sha256_hex(out);  // a GIT_* value may be a credential (GIT_CONFIG_VALUE_0): only its hash is kept
}

/// The config files libgit2 reads besides the repository's own: global, XDG, system.
std::vector<std::string> global_configs() {
  std::vector<std::string> v;
  const std::string home = env_or_empty("HOME"), xdg = env_or_empty("XDG_CONFIG_HOME");
  if (!home.empty()) v.push_back(home + "/.gitconfig");
  if (!xdg.empty()) v.push_back(xdg + "/git/config");
  else if (!home.empty()) v.push_back(home + "/.config/git/config");
  v.push_back("/etc/gitconfig");
  return v;
}

/// What the answer for `dir` rests on. Directories: from `dir` up to `top` (a .git or a bare
/// repository appearing in one changes the directory). Empty when no memo can be trusted.
std::vector<std::pair<std::string, std::string>> watch_list(const std::string& dir, const std::string& top,
                                                            const std::vector<std::string>& files) {
  std::vector<std::pair<std::string, std::string>> w;
  for (std::string d = dir;;) {
    w.emplace_back(d, stat_key(d));
    if (d == top || d == "/" || d.empty()) break;
    std::size_t slash = d.rfind('/');
    d = slash == 0 ? std::string("/") : d.substr(0, slash);
  }
  for (const auto& f : files) w.emplace_back(f, stat_key(f));
  return w;
}

/// Can the state of these files be trusted to show a later change? Not when one changed within
/// the last second (a change in the same clock tick keeps its stat), nor when a config file
/// includes another (the included file is not watched).
bool trustworthy(const std::vector<std::pair<std::string, std::string>>& watch, const std::vector<std::string>& configs) {
  struct timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  for (const auto& [path, key] : watch) {
    struct stat st{};
    if (::lstat(path.c_str(), &st) != 0) continue;
    auto ns = [](const struct timespec& t) { return std::int64_t(t.tv_sec) * 1000000000 + t.tv_nsec; };
    if (ns(st.st_ctim) > ns(now) - 1000000000 || ns(st.st_mtim) > ns(now) - 1000000000) return false;
  }
  for (const auto& c : configs) {
    std::string text;
    try {
      if (!read_file_if_exists(c, &text)) continue;
    } catch (const std::exception&) {
      return false;
    }
    for (char& ch : text) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (text.find("include") != std::string::npos) return false;
  }
  return true;
}

}  // namespace

std::unique_ptr<GitRepo> GitRepo::open_remembered(const std::string& dir, const std::filesystem::path& memo) {
  if (memo.empty()) return open(dir);
  const std::string env = git_environment();
  // The memo, when it still holds.
  try {
    std::string text;
    if (read_file_if_exists(memo, &text)) {
      auto j = nlohmann::json::parse(text);
      const auto watch = j.value("watch", nlohmann::json::array());
      // The first watched path is `dir` itself: a memo without it (damaged, or not kiln's) never holds.
      bool holds = j.value("v", 0) == kMemoVersion && j.value("dir", "") == dir && j.value("env", "") == env &&
                   !watch.empty() && watch.at(0).at(0).get<std::string>() == dir;
      for (const auto& w : watch) {
        if (!holds) break;
        holds = stat_key(w.at(0).get<std::string>()) == w.at(1).get<std::string>();
      }
      if (holds) {
        if (!j.value("repo", false)) return nullptr;
        std::unique_ptr<GitRepo> g(new GitRepo());
        g->from_memo_ = true;
        g->memo_ = memo;
        g->dir_ = dir;
        g->workdir_ = j.at("workdir").get<std::string>();
        g->prefix_ = j.at("prefix").get<std::string>();
        g->commondir_ = j.at("commondir").get<std::string>();
        g->gitdir_ = j.at("gitdir").get<std::string>();
        g->stat_gitdir();
        g->excludes_file_ = j.at("excludes_file").get<std::string>();
        g->ignore_case_ = j.at("ignore_case").get<bool>();
        g->memo_index_used_ = j.value("index_used", false);
        if (g->memo_index_used_) {  // the last walk needed the index: read it while the walk starts
          GitRepo* raw = g.get();
          g->prefetch_ = std::thread([raw] {
            try {
              raw->load_index();
            } catch (...) {
              raw->prefetch_error_ = std::current_exception();  // rethrown by the walk's first index()
            }
          });
        }
        return g;
      }
    }
  } catch (const std::exception&) {  // unreadable or from another version: answered again below
  }
  // libgit2's answer, remembered when what it rests on can be watched.
  std::unique_ptr<GitRepo> g;
  bool found = true;
  try {
    g = open_libgit2(dir);
  } catch (const NotARepo&) {
    found = false;
  }
  std::error_code ec;
  std::vector<std::string> configs = global_configs();
  nlohmann::json j = {{"v", kMemoVersion}, {"dir", dir}, {"env", env}, {"repo", g != nullptr}};
  std::vector<std::pair<std::string, std::string>> watch;
  if (g) {
    const std::string gitdir = git_repository_path(g->h_->repo);  // ends in '/'
    configs.push_back(g->commondir_ + "config");
    configs.push_back(gitdir + "config.worktree");
    std::vector<std::string> files = configs;
    files.push_back(g->workdir_ + "/.git");
    files.push_back(gitdir + "commondir");
    watch = watch_list(dir, g->workdir_, files);
    j["workdir"] = g->workdir_;
    j["prefix"] = g->prefix_;
    j["commondir"] = g->commondir_;
    j["gitdir"] = g->gitdir_;
    j["excludes_file"] = g->excludes_file_;
    j["ignore_case"] = g->ignore_case_;
    j["index_used"] = false;
    g->memo_ = memo;
  } else if (!found) {
    watch = watch_list(dir, "/", configs);  // no repository: every directory up to the root
  } else {
    return g;  // a bare repository, or dir inside .git: rare, not remembered
  }
  if (trustworthy(watch, configs)) {
    j["watch"] = nlohmann::json::array();
    for (const auto& [path, key] : watch) j["watch"].push_back({path, key});
    try {
      atomic_write(memo, j.dump(), memo.parent_path().parent_path() / "tmp", /*sync=*/false);
    } catch (const std::exception&) {
    }
  } else {
    std::filesystem::remove(memo, ec);
  }
  return g;
}

void GitRepo::remember_index_use() const {
  if (memo_.empty() || index_used_ == memo_index_used_) return;
  try {
    std::string text;
    if (!read_file_if_exists(memo_, &text)) return;
    auto j = nlohmann::json::parse(text);
    j["index_used"] = index_used_;
    atomic_write(memo_, j.dump(), memo_.parent_path().parent_path() / "tmp", /*sync=*/false);
  } catch (const std::exception&) {
  }
}

namespace {

bool read_text(const std::string& path, std::string* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  out->assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return true;
}

/// What git's config says for the exclude rules: core.excludesFile (default
/// $XDG_CONFIG_HOME/git/ignore) and core.ignorecase (default false on Linux: git sets it in the
/// repository's config when `git init` or `git clone` ran on a case-insensitive filesystem, and
/// the setting travels with the checkout).
void read_config(git_repository* repo, std::string* excludes_file, bool* ignore_case) {
  git_config* cfg = nullptr;
  std::string path;
  *ignore_case = false;
  if (git_repository_config_snapshot(&cfg, repo) == 0) {
    git_buf buf = GIT_BUF_INIT;
    if (git_config_get_path(&buf, cfg, "core.excludesFile") == 0 && buf.ptr) path = buf.ptr;
    git_buf_dispose(&buf);
    int v = 0;
    if (git_config_get_bool(&v, cfg, "core.ignorecase") == 0) *ignore_case = v != 0;
    git_config_free(cfg);
  }
  if (path.empty()) {
    const char* xdg = std::getenv("XDG_CONFIG_HOME");
    const char* home = std::getenv("HOME");
    if (xdg && *xdg) path = std::string(xdg) + "/git/ignore";
    else if (home && *home) path = std::string(home) + "/.config/git/ignore";
  }
  *excludes_file = path;
}

}  // namespace

void GitRepo::add_rules(IgnoreRules& rules) const {
  rules.set_git_ignore_case(ignore_case_);
  std::string text;
  if (read_text(commondir_ + "info/exclude", &text)) rules.add_git_excludes(text);
  if (!excludes_file_.empty() && read_text(excludes_file_, &text)) rules.add_git_excludes(text);
  // The .gitignore files above `dir`: "", "sub", ... (the prefix without its last component).
  std::string dir;
  for (std::size_t start = 0; !prefix_.empty();) {
    std::string p = workdir_ + (dir.empty() ? "" : "/" + dir) + "/.gitignore";
    if (read_text(p, &text)) rules.add_gitignore(dir, text);
    std::size_t slash = prefix_.find('/', start);
    if (slash == std::string::npos || slash + 1 >= prefix_.size()) break;
    dir = prefix_.substr(0, slash);
    start = slash + 1;
  }
}

namespace {

std::string ascii_folded(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

}  // namespace

void GitRepo::load_tables() const {
  // As `git ls-files` run in `dir` sees the index: first cut to the entries below the prefix,
  // compared byte for byte (ls-files' prune_index), then, under core.ignorecase, looked up without
  // regard to ASCII case (index_file_exists, index_dir_exists). So "Out/t.py" in the index tracks
  // "out/t.py" on disk seen from the work tree's root, not from inside "out".
  if (tables_ready_) return;
  git_index* idx = index();
  const std::size_t n = git_index_entrycount(idx);
  for (std::size_t i = 0; i < n; ++i) {
    const git_index_entry* e = git_index_get_byindex(idx, i);
    if (!e || !e->path) continue;
    std::string_view p = e->path;
    if (!p.starts_with(prefix_)) continue;
    std::string rel = ignore_case_ ? ascii_folded(p.substr(prefix_.size())) : std::string(p.substr(prefix_.size()));
    if ((e->mode & 0170000) == 0160000) gitlinks_.push_back(rel);
    if (ignore_case_) folded_.push_back(std::move(rel));
  }
  std::sort(folded_.begin(), folded_.end());
  std::sort(gitlinks_.begin(), gitlinks_.end());
  tables_ready_ = true;
}

bool GitRepo::in_gitlink(std::string_view rel) const {
  // git's treat_directory: a directory the index records as a submodule (a gitlink) is not looked
  // into, whatever its .git holds (a stale one, or none): nothing below it is listed as ignored.
  if (gitlinks_.empty()) return false;
  const std::string key = ignore_case_ ? ascii_folded(rel) : std::string(rel);
  for (std::size_t end = 0;; ++end) {
    end = key.find('/', end);
    if (std::binary_search(gitlinks_.begin(), gitlinks_.end(), key.substr(0, end))) return true;
    if (end == std::string::npos) return false;
  }
}

bool GitRepo::tracked(std::string_view rel) const {
  load_tables();
  if (in_gitlink(rel)) return true;
  if (ignore_case_) return std::binary_search(folded_.begin(), folded_.end(), ascii_folded(rel));
  std::string p = prefix_ + std::string(rel);
  std::size_t pos = 0;
  return git_index_find(&pos, index(), p.c_str()) == 0;
}

bool GitRepo::tracks_below(std::string_view rel_dir) const {
  load_tables();
  return in_gitlink(rel_dir) || indexes_below(rel_dir);
}

bool GitRepo::indexes_below(std::string_view rel_dir) const {
  load_tables();
  if (ignore_case_) {  // directory_exists_in_index_icase: index_dir_exists
    const std::string d = ascii_folded(rel_dir) + "/";
    auto it = std::lower_bound(folded_.begin(), folded_.end(), d);
    return it != folded_.end() && it->starts_with(d);
  }
  std::string p = prefix_ + std::string(rel_dir) + "/";
  std::size_t pos = 0;
  return git_index_find_prefix(&pos, index(), p.c_str()) == 0;
}

// ---- Nested repositories ----------------------------------------------------------------------

namespace {

constexpr std::size_t kNoLen = static_cast<std::size_t>(-1);

/// Reads at most `max` bytes of the file at `path` (relative to `dfd`, symlinks followed); the
/// length read, or kNoLen when it cannot be opened or read. Never blocks on a fifo.
std::size_t read_at(int dfd, const std::string& path, char* buf, std::size_t max) {
  int fd = ::openat(dfd, path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return kNoLen;
  std::size_t len = 0;
  while (len < max) {
    ssize_t n = ::read(fd, buf + len, max - len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      len = kNoLen;
      break;
    }
    if (n == 0) break;
    len += static_cast<std::size_t>(n);
  }
  ::close(fd);
  return len;
}

bool git_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }  // git's sane_ctype

/// git's validate_headref: HEAD is a symlink into "refs/", a file "ref: refs/...", or a file
/// starting with an object name (40 hex digits).
bool valid_head(int dfd, const std::string& path) {
  struct stat st{};
  if (::fstatat(dfd, path.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return false;
  char buf[256];
  if (S_ISLNK(st.st_mode)) {
    ssize_t n = ::readlinkat(dfd, path.c_str(), buf, sizeof buf - 1);
    return n >= 5 && std::memcmp(buf, "refs/", 5) == 0;
  }
  std::size_t len = read_at(dfd, path, buf, sizeof buf - 1);
  if (len == kNoLen) return false;
  std::string_view head(buf, len);
  head = head.substr(0, head.find('\0'));  // read as a C string
  if (head.starts_with("ref:")) {
    std::size_t i = 4;
    while (i < head.size() && git_space(head[i])) ++i;
    if (head.substr(i).starts_with("refs/")) return true;
  }
  if (head.size() < 40) return false;
  return std::all_of(head.begin(), head.begin() + 40, [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); });
}

/// git's is_git_directory: a valid HEAD, and objects/ and refs/ in the common directory (the
/// "commondir" file's, for a linked work tree's git directory). `dir` is relative to `dfd`.
bool is_git_directory_at(int dfd, const std::string& dir) {
  if (!valid_head(dfd, dir + "/HEAD")) return false;
  std::string common = dir;
  if (const char* env = std::getenv("GIT_COMMON_DIR")) {
    common = env;
  } else {
    struct stat st{};
    if (::fstatat(dfd, (dir + "/commondir").c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      char buf[4096];
      std::size_t len = read_at(dfd, dir + "/commondir", buf, sizeof buf);
      if (len == kNoLen || len == 0) return false;  // git dies here ("failed to read")
      while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) --len;
      std::string data(buf, len);
      data = data.substr(0, data.find('\0'));
      common = !data.empty() && data[0] == '/' ? data : dir + "/" + data;
    }
  }
  if (const char* env = std::getenv("GIT_OBJECT_DIRECTORY")) {
    if (::access(env, X_OK) != 0) return false;
  } else if (::faccessat(dfd, (common + "/objects").c_str(), X_OK, 0) != 0) {
    return false;
  }
  return ::faccessat(dfd, (common + "/refs").c_str(), X_OK, 0) == 0;
}

}  // namespace

bool nonbare_repository_at(int dfd) {
  // read_gitfile_gently(".git"): a regular file (symlinks followed) "gitdir: PATH" naming a git
  // directory; a .git git cannot open or read counts as a repository too.
  struct stat st{};
  if (::fstatat(dfd, ".git", &st, 0) != 0) return false;
  if (!S_ISREG(st.st_mode)) return is_git_directory_at(dfd, ".git");
  if (st.st_size > (1 << 20)) return false;  // too large to be a .git file
  std::string text(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t len = read_at(dfd, ".git", text.data(), text.size());
  if (len != text.size()) return true;  // READ_GITFILE_ERR_OPEN_FAILED / READ_FAILED
  if (!text.starts_with("gitdir: ")) return false;
  while (len && (text[len - 1] == '\n' || text[len - 1] == '\r')) --len;
  if (len < 9) return false;  // no path
  std::string gitdir = text.substr(8, len - 8);
  gitdir = gitdir.substr(0, gitdir.find('\0'));
  if (gitdir.empty()) return false;
  return is_git_directory_at(dfd, gitdir);  // a relative path is relative to the .git file's directory
}

}  // namespace kiln::layers
