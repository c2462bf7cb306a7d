//! API discovery: which kinds the server serves, under which resource name and scope.
//!
//! Discovered once per run and refreshed on demand (after a CRD is established), so an
//! unknown kind costs one more discovery, not one per object. Start at [`Resolver`].

use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};

/// What a cluster offers a chart to check: its version and API versions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub kube_version: String,
    pub api_versions: Vec<String>,
}

/// What tether needs to know to address one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindInfo {
    pub resource: ApiResource,
    pub namespaced: bool,
}

pub struct Resolver {
    client: kube::Client,
    discovery: std::sync::RwLock<Discovery>,
    /// The server's version (`v1.34.4`), read with each discovery.
    kube_version: std::sync::RwLock<String>,
}

impl Resolver {
    pub async fn new(client: kube::Client) -> Result<Self, kube::Error> {
        let (discovery, version) = Self::discover(&client).await?;
        Ok(Self {
            client,
            discovery: std::sync::RwLock::new(discovery),
            kube_version: std::sync::RwLock::new(version),
        })
    }

    async fn discover(client: &kube::Client) -> Result<(Discovery, String), kube::Error> {
        let (discovery, version) = futures::future::try_join(
            Discovery::new(client.clone()).run_aggregated(),
            client.apiserver_version(),
        )
        .await?;
        Ok((discovery, version.git_version))
    }

    /// Discovers again: new CRDs become resolvable.
    pub async fn refresh(&self) -> Result<(), kube::Error> {
        let (fresh, version) = Self::discover(&self.client).await?;
        *self.discovery.write().expect("not poisoned") = fresh;
        *self.kube_version.write().expect("not poisoned") = version;
        Ok(())
    }

    /// The server's version and every API version it serves: what Helm's `.Capabilities`
    /// hold.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            kube_version: self.kube_version.read().expect("not poisoned").clone(),
            api_versions: self.api_versions(),
        }
    }

    /// Resolves `apiVersion` + `kind`.
    pub fn resolve(&self, api_version: &str, kind: &str) -> Option<KindInfo> {
        let (group, version) = match api_version.split_once('/') {
            Some((group, version)) => (group, version),
            None => ("", api_version),
        };
        let gvk = GroupVersionKind::gvk(group, version, kind);
        self.discovery
            .read()
            .expect("not poisoned")
            .resolve_gvk(&gvk)
            .map(
                |(resource, caps): (ApiResource, ApiCapabilities)| KindInfo {
                    resource,
                    namespaced: caps.scope == Scope::Namespaced,
                },
            )
    }

    /// Every `group/version` and `group/version/Kind` served, for Helm's `.Capabilities.APIVersions`.
    pub fn api_versions(&self) -> Vec<String> {
        let discovery = self.discovery.read().expect("not poisoned");
        let mut out = Vec::new();
        for group in discovery.groups() {
            for version in group.versions() {
                let group_version = if group.name().is_empty() {
                    version.to_string()
                } else {
                    format!("{}/{version}", group.name())
                };
                for (resource, _) in group.versioned_resources(version) {
                    out.push(format!("{group_version}/{}", resource.kind));
                }
                out.push(group_version);
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Resolves a group and kind at the version the server prefers (for pruning, where
    /// only the group and kind are recorded).
    pub fn resolve_group_kind(&self, group: &str, kind: &str) -> Option<KindInfo> {
        let discovery = self.discovery.read().expect("not poisoned");
        let api_group = discovery.groups().find(|g| g.name() == group)?;
        let (resource, caps) = api_group.recommended_kind(kind)?;
        Some(KindInfo {
            resource,
            namespaced: caps.scope == Scope::Namespaced,
        })
    }
}
