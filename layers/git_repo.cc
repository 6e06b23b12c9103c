// libgit2 behind GitRepo: one repository and at most one index load per walk, no git process.
#include "layers/git_repo.h"

#include <git2.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

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

GitRepo::~GitRepo() = default;

std::unique_ptr<GitRepo> GitRepo::open(const std::string& dir) {
  std::unique_ptr<GitRepo> g(new GitRepo());
  g->h_ = std::make_unique<Handles>();
  git_libgit2_init();
  // kiln only reads the index, the exclude files and the config; it runs nothing the repository
  // configures, so a checkout owned by another user (CI as root) is read like any other.
  git_libgit2_opts(GIT_OPT_SET_OWNER_VALIDATION, 0);
  int rc = git_repository_open_ext(&g->h_->repo, dir.c_str(), 0, nullptr);
  if (rc == GIT_ENOTFOUND) return nullptr;
  if (rc < 0) throw InputError("cannot open the git repository holding '" + dir + "': " + last_error());
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
  return g;
}

git_index* GitRepo::index() const {
  // Loaded on first use: only a path that an exclude rule matches asks whether git tracks it, and
  // parsing a large index (10,000 entries: ~1.3 MB) is most of what libgit2 costs a walk.
  if (!h_->index && git_repository_index(&h_->index, h_->repo) < 0)
    throw InputError("cannot read the git index of '" + workdir_ + "': " + last_error());
  return h_->index;
}

namespace {

bool read_text(const std::string& path, std::string* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  out->assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return true;
}

std::string excludes_file(git_repository* repo) {
  git_config* cfg = nullptr;
  std::string path;
  if (git_repository_config_snapshot(&cfg, repo) == 0) {
    git_buf buf = GIT_BUF_INIT;
    if (git_config_get_path(&buf, cfg, "core.excludesFile") == 0 && buf.ptr) path = buf.ptr;
    git_buf_dispose(&buf);
    git_config_free(cfg);
  }
  if (!path.empty()) return path;
  const char* xdg = std::getenv("XDG_CONFIG_HOME");
  if (xdg && *xdg) return std::string(xdg) + "/git/ignore";
  const char* home = std::getenv("HOME");
  return home && *home ? std::string(home) + "/.config/git/ignore" : std::string();
}

}  // namespace

void GitRepo::add_rules(IgnoreRules& rules) const {
  std::string text;
  std::string common = git_repository_commondir(h_->repo);
  if (!common.empty() && common.back() != '/') common += '/';
  if (read_text(common + "info/exclude", &text)) rules.add_git_excludes(text);
  if (std::string f = excludes_file(h_->repo); !f.empty() && read_text(f, &text)) rules.add_git_excludes(text);
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

bool GitRepo::tracked(std::string_view rel) const {
  std::string p = prefix_ + std::string(rel);
  std::size_t pos = 0;
  return git_index_find(&pos, index(), p.c_str()) == 0;
}

bool GitRepo::tracks_below(std::string_view rel_dir) const {
  std::string p = prefix_ + std::string(rel_dir) + "/";
  std::size_t pos = 0;
  return git_index_find_prefix(&pos, index(), p.c_str()) == 0;
}

}  // namespace kiln::layers
