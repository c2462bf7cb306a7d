//! tether: a GitOps engine for Kubernetes.
//!
//! The pipeline is source → render → plan → apply → health, driven
//! either once from the CLI (push) or continuously by the agent (pull). Each stage is a
//! module with a small public surface; stages exchange plain data. Start reading at
//! [`cli::run`], which maps every command to one function.
//!
//! Modules, from the bottom up (each of the stages, source to apply, uses only what is
//! above it in this list; none uses the agent or the CLI):
//! - [`object`]: the shared vocabulary: `ObjectKey`, `GroupKind`, `Origin`, `Object`.
//! - [`inventory`]: the ApplySet that records what a set owns (plan reads it, apply writes it).
//! - [`duration`], [`size`], [`output`], [`progress`]: durations and sizes as users write
//!   them, the `-o text|json|yaml` formats, progress reporting.
//! - [`error`]: an error and its causes told on one line, each cause once.
//! - [`health`]: live object → Healthy/Progressing/Degraded/Missing/Unknown.
//! - [`cluster`]: connecting to a Kubernetes API server the way kubectl does (kubeconfig,
//!   contexts, namespaces), discovery, and turning client errors into errors a user can act on.
//! - [`source`]: Git → revision + read-only tree.
//! - [`render`]: tree → desired objects with their origin.
//! - [`plan`]: desired + live → a Plan (create/update/unchanged/prune/conflict) with diffs.
//! - [`apply`]: a Plan → the cluster, with ApplySet ownership, pruning and waits.
//! - [`engine`]: one sync (plan, then apply) and one answer to "did it succeed?", for
//!   `tether apply`, `install`, `bootstrap` and the agent.
//! - [`install`]: the agent's install manifests.
//! - [`application`]: the `Application` custom resource (spec, status, checks, actions).
//! - [`tenancy`]: acting as an Application's ServiceAccount (impersonation).
//! - [`app`]: the Application pipeline (fetch, render, plan) that the agent, `tether diff`,
//!   `bootstrap`, the JSON API and the UI share.
//! - [`agent`]: the pull-mode controller over `Application` resources.
//! - [`cli`]: the command-line interface, writing to any `impl Write`.

#![forbid(unsafe_code)]

pub mod agent;
pub mod app;
pub mod application;
pub mod apply;
pub mod appset;
pub mod audit;
pub mod cli;
pub mod cluster;
pub mod comment;
pub mod duration;
pub mod engine;
pub mod error;
pub mod health;
pub mod images;
pub mod install;
pub mod inventory;
pub mod object;
pub mod output;
pub mod plan;
pub mod progress;
pub mod render;
pub mod size;
pub mod source;
pub mod tenancy;
pub mod windows;
