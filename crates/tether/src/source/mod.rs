//! Source: a Git repository and a ref → a revision (commit id) and a read-only tree.
//!
//! [`tree`] defines the tree the render stage reads, for a Git commit or a plain folder.
pub mod tree;
