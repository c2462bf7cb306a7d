//! tether: a GitOps engine for Kubernetes.
//!
//! The pipeline (see `shared/DESIGN.md`) is source → render → plan → apply → health, driven
//! either once from the CLI (push) or continuously by the agent (pull). Each stage is a
//! module with a small public surface; stages exchange plain data. Start reading at
//! [`cli::run`], which maps every command to one function.
//!
//! Modules today:
//! - [`cluster`]: connecting to a Kubernetes API server the way kubectl does (kubeconfig,
//!   contexts, namespaces) and turning connection failures into errors a user can act on.
//! - [`cli`]: the command-line interface, writing to any `impl Write`.
//! - [`output`]: the `-o text|json|yaml` output formats shared by every command.
//! - [`source`]: Git → revision + read-only tree.
//! - [`render`]: tree → desired objects with their origin.
//! - [`plan`]: desired + live → a Plan (create/update/unchanged/prune/conflict) with diffs.
//! - [`apply`]: a Plan → the cluster, with ApplySet ownership, pruning and waits.
//! - [`health`]: live object → Healthy/Progressing/Degraded/Missing/Unknown.
//! - [`agent`]: the pull-mode controller over `Application` resources.

#![forbid(unsafe_code)]

pub mod agent;
pub mod apply;
pub mod cli;
pub mod cluster;
pub mod duration;
pub mod health;
pub mod install;
pub mod output;
pub mod plan;
pub mod progress;
pub mod render;
pub mod size;
pub mod source;
