//! One connected cluster (a [`Target`]): its client and discovery, and how messages name it.
//! The agent's destinations and `tether diff` both plan against one.

use std::sync::Arc;

use super::discovery::Resolver;

/// One connected cluster: its client and what it serves.
#[derive(Clone)]
pub struct Target {
    /// The Secret's name; `None` for the agent's own cluster.
    pub name: Option<String>,
    /// The API server's URL, for messages.
    pub server: String,
    pub client: kube::Client,
    pub resolver: Arc<Resolver>,
}

impl Target {
    /// The agent's (or the command's) own cluster.
    pub fn home(client: kube::Client, resolver: Arc<Resolver>) -> Self {
        Self {
            name: None,
            server: String::new(),
            client,
            resolver,
        }
    }

    /// "cluster prod (https://…)", or "the agent's cluster", for messages.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!("cluster {name} ({})", self.server),
            None => "the agent's cluster".into(),
        }
    }

    /// `message` about a request to this cluster, naming it when it is not the agent's own
    /// (so a failure says which cluster failed).
    pub fn context(&self, message: String) -> String {
        match &self.name {
            Some(_) => format!("{}: {message}", self.describe()),
            None => message,
        }
    }
}
