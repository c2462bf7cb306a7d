//! Running tether for many: `tether install` and `bootstrap`, the agent's OCI image, many
//! clusters, shards, tenants, and commit statuses in a real Gitea. One test binary; each
//! file is a module (a test's name starts with its file's, e.g. `shards::…`).

#[path = "../support/mod.rs"]
mod support;

mod appsets;
mod bootstrap;
mod ci_recipe;
mod clusters;
mod gitea;
mod image;
mod image_updates;
mod install;
mod plan_comments;
mod previews;
mod shards;
mod tenants;
