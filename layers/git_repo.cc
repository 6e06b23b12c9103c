// libgit2 behind GitRepo: one repository and one index load per walk, no git process.
#include "layers/git_repo.h"

#include <git2.h>

#include <cstdlib>
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
  if (git_repository_index(&g->h_->index, g->h_->repo) < 0)
    throw InputError("cannot read the git index of '" + workdir + "': " + last_error());
  return g;
}

bool GitRepo::dir_itself_ignored() {
  // Top down: below an excluded directory nothing can be re-included (libgit2's single lookup
  // would let a "!" rule on the deeper path win).
  for (std::size_t slash = prefix_.find('/'); slash != std::string::npos; slash = prefix_.find('/', slash + 1)) {
    int ignored = 0;
    std::string p = prefix_.substr(0, slash + 1);
    if (git_ignore_path_is_ignored(&ignored, h_->repo, p.c_str()) < 0)
      throw InputError("cannot read git's ignore rules for '" + p + "': " + last_error());
    if (ignored) return true;
  }
  return false;
}

bool GitRepo::tracked(std::string_view rel) const {
  std::string p = prefix_ + std::string(rel);
  std::size_t pos = 0;
  return git_index_find(&pos, h_->index, p.c_str()) == 0;
}

bool GitRepo::tracks_below(std::string_view rel_dir) const {
  std::string p = prefix_ + std::string(rel_dir) + "/";
  std::size_t pos = 0;
  return git_index_find_prefix(&pos, h_->index, p.c_str()) == 0;
}

bool GitRepo::rules_match(std::string_view rel, bool is_dir) const {
  std::string p = prefix_ + std::string(rel) + (is_dir ? "/" : "");
  int ignored = 0;
  if (git_ignore_path_is_ignored(&ignored, h_->repo, p.c_str()) < 0)
    throw InputError("cannot read git's ignore rules for '" + p + "': " + last_error());
  return ignored != 0;
}

}  // namespace kiln::layers
