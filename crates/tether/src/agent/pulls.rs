//! The open pull requests an ApplicationSet's `pullRequest` generators list, asked of each
//! Git host with the token of the generator's `tokenRef` (a Secret of the set's namespace).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::Context;
use crate::application::ApplicationSet;
use crate::appset::{Params, Query, read_pull_requests};

/// Each listing the set's generators need, and the parameter sets it found.
pub(super) async fn list(
    ctx: &Context,
    set: &ApplicationSet,
) -> Result<BTreeMap<Query, Vec<Params>>, String> {
    let queries = crate::appset::pull_request_queries(&set.spec.generators)?;
    let mut found = BTreeMap::new();
    if queries.is_empty() {
        return Ok(found);
    }
    crate::source::git::install_crypto_provider();
    // No redirects: the token must not follow one to another host.
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let namespace = set.namespace().unwrap_or_default();
    for query in queries {
        let mut request = client.get(&query.url).header("Accept", "application/json");
        if let Some(token_ref) = &query.token {
            let token = token(ctx, &namespace, token_ref).await?;
            let (header, prefix) = query.auth;
            request = request.header(header, format!("{prefix}{token}"));
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("cannot list the pull requests ({}): {e}", query.url))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            let said: String = text.chars().take(200).collect();
            return Err(format!("{} answered {status}: {said}", query.url));
        }
        let answer =
            serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", query.url))?;
        let sets = read_pull_requests(&query, &answer)?;
        found.insert(query, sets);
    }
    Ok(found)
}

/// The token under `token_ref` of a Secret in `namespace`.
async fn token(
    ctx: &Context,
    namespace: &str,
    token_ref: &crate::appset::TokenRef,
) -> Result<String, String> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let name = &token_ref.secret_name;
    let secret = secrets.get(name).await.map_err(|e| {
        format!(
            "cannot read Secret {namespace}/{name} (tokenRef): {}",
            crate::cluster::describe(&e)
        )
    })?;
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&token_ref.key))
        .ok_or_else(|| {
            format!(
                "Secret {namespace}/{name} has no key {:?} (tokenRef)",
                token_ref.key
            )
        })?;
    Ok(String::from_utf8_lossy(&value.0).trim().to_string())
}
