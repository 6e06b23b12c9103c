// kiln cache du / prune: what the content-addressed store holds, and cleaning it.
#include <cstdio>
#include <iostream>

#include "builder/cli/common.h"

namespace kiln::cli {

void add_cache_commands(CLI::App& app, Common& c, std::vector<Command>& out) {
  auto* cache = app.add_subcommand("cache", "Inspect or prune the content-addressed store");
  cache->require_subcommand(1);
  auto* du = cache->add_subcommand("du", "Show what the store holds");
  add_common_options(du, c, /*cache_used=*/true, /*jobs_used=*/false);
  out.push_back({du, [](Context& ctx) {
                   // Reading creates nothing: where there is no store, it holds nothing.
                   const std::filesystem::path root = ctx.store_root();
                   layers::Store::Usage u;
                   const bool exists = layers::Store::exists_at(root);
                   if (exists) {
                     u = ctx.open_store().usage();
                   } else {
                     ctx.view.warn("no store at " + root.string() + " (nothing cached there yet)");
                   }
                   if (ctx.common.json_out) {
                     std::cout << json{{"path", root.string()}, {"exists", exists}, {"blobs", u.blobs}, {"blob_bytes", u.blob_bytes},
                                       {"layer_records", u.layer_records}, {"stat_indexes", u.stat_indexes},
                                       {"stat_bytes", u.stat_bytes}, {"tmp_files", u.tmp_files},
                                       {"tmp_bytes", u.tmp_bytes}, {"rootfs_trees", u.rootfs_trees},
                                       {"rootfs_bytes", u.rootfs_bytes}}.dump(2)
                               << std::endl;
                   } else {
                     std::printf("%s\n  blobs          %llu (%s)\n  layer records  %llu\n  stat indexes   %llu (%s)\n"
                                 "  temp files     %llu (%s)\n  unpacked trees %llu (%s)\n",
                                 root.c_str(), (unsigned long long)u.blobs, human_bytes(u.blob_bytes).c_str(),
                                 (unsigned long long)u.layer_records, (unsigned long long)u.stat_indexes,
                                 human_bytes(u.stat_bytes).c_str(), (unsigned long long)u.tmp_files,
                                 human_bytes(u.tmp_bytes).c_str(), (unsigned long long)u.rootfs_trees,
                                 human_bytes(u.rootfs_bytes).c_str());
                   }
                   return kOk;
                 }});

  struct PruneArgs {
    double older_days = 7;
    bool all = false;
  };
  auto a = std::make_shared<PruneArgs>();
  auto* prune = cache->add_subcommand("prune", "Remove cache entries unused for a while");
  prune->add_option("--older-than", a->older_days, "Days unused (default 7)");
  prune->add_flag("--all", a->all, "Remove everything (waits for running builds that use the store)");
  add_common_options(prune, c, /*cache_used=*/true, /*jobs_used=*/false);
  out.push_back({prune, [a](Context& ctx) {
                   layers::Store::PruneResult r;
                   if (layers::Store::exists_at(ctx.store_root())) {
                     layers::Store store = ctx.open_store();
                     r = store.prune(a->all ? 0 : static_cast<std::int64_t>(a->older_days * 86400), [&] {
                       ctx.view.log("another kiln is using " + store.root().string() + "; waiting for it to finish");
                     });
                   } else {  // nothing to remove, and no store made to remove nothing from
                     ctx.view.warn("no store at " + ctx.store_root().string() + " (nothing to prune)");
                   }
                   if (ctx.common.json_out) {
                     std::cout << json{{"removed_blobs", r.removed_blobs}, {"removed_bytes", r.removed_bytes},
                                       {"removed_layer_records", r.removed_records},
                                       {"removed_trees", r.removed_trees},
                                       {"removed_tree_bytes", r.removed_tree_bytes}}.dump(2)
                               << std::endl;
                   } else {
                     std::printf("removed %llu blob(s), %s, %llu layer record(s), and %llu unpacked tree(s), %s\n",
                                 (unsigned long long)r.removed_blobs, human_bytes(r.removed_bytes).c_str(),
                                 (unsigned long long)r.removed_records, (unsigned long long)r.removed_trees,
                                 human_bytes(r.removed_tree_bytes).c_str());
                   }
                   return kOk;
                 }});
}

}  // namespace kiln::cli
