//! `tether version`: tether's own version and, when reachable, the API server's.

use std::io::Write;

use serde::Serialize;

use super::GlobalArgs;
use crate::cluster::Cluster;
use crate::output::{OutputFormat, write_structured};

#[derive(Debug, clap::Args)]
pub struct VersionArgs {
    /// Print only tether's version; do not contact a cluster.
    #[arg(long)]
    pub client: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionReport {
    client: ClientVersion,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<ServerVersion>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ClientVersion {
    version: &'static str,
    platform: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ServerVersion {
    git_version: String,
    platform: String,
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<String>,
}

pub async fn run(
    global: &GlobalArgs,
    args: &VersionArgs,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    let client = ClientVersion {
        version: env!("CARGO_PKG_VERSION"),
        platform: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    };
    let mut report = VersionReport {
        client,
        server: None,
    };
    let mut failure = None;
    if !args.client {
        match server_version(global).await {
            Ok(server) => report.server = Some(server),
            Err(err) => failure = Some(err),
        }
    }
    match global.output {
        OutputFormat::Text | OutputFormat::Markdown => {
            writeln!(
                out,
                "tether: v{} ({})",
                report.client.version, report.client.platform
            )?;
            if let Some(server) = &report.server {
                let context = server
                    .context
                    .as_deref()
                    .map(|c| format!(", context {c}"))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "server: {} ({}, {}{context})",
                    server.git_version, server.platform, server.url
                )?;
            }
        }
        format => write_structured(out, format, &report)?,
    }
    match failure {
        // Like `kubectl version`: the client part is printed, the server part is an error.
        Some(err) => Err(err.into()),
        None => Ok(0),
    }
}

async fn server_version(global: &GlobalArgs) -> Result<ServerVersion, crate::cluster::Error> {
    let cluster = Cluster::connect(&global.cluster_options()).await?;
    let info = cluster.server_version().await?;
    Ok(ServerVersion {
        git_version: info.git_version,
        platform: info.platform,
        url: cluster.server().to_string(),
        context: cluster.context().map(str::to_string),
    })
}
