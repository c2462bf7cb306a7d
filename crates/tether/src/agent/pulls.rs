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
    let client = crate::source::git::host_api_client(std::time::Duration::from_secs(30))?;
    let namespace = set.namespace().unwrap_or_default();
    for query in queries {
        let sets = all_pages(&client, ctx, &namespace, &query).await?;
        found.insert(query, sets);
    }
    Ok(found)
}

/// Every open pull request of `query`, page by page (at most 20 pages: more is an error, lest
/// the previews of those left out be deleted).
async fn all_pages(
    client: &reqwest::Client,
    ctx: &Context,
    namespace: &str,
    query: &Query,
) -> Result<Vec<Params>, String> {
    let token = match &query.token {
        Some(token_ref) => Some(token(ctx, namespace, token_ref).await?),
        None => None,
    };
    let mut sets = Vec::new();
    for page in 1..=20 {
        let url = format!("{}&page={page}", query.url);
        let mut request = client.get(&url).header("Accept", "application/json");
        if let Some(token) = &token {
            let (header, prefix) = query.auth;
            request = request.header(header, format!("{prefix}{token}"));
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("cannot list the pull requests ({url}): {e}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            let said: String = text.chars().take(200).collect();
            return Err(format!("{url} answered {status}: {said}"));
        }
        let answer: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{url}: not JSON: {e}"))?;
        let listed = answer.as_array().map_or(0, Vec::len);
        sets.extend(read_pull_requests(query, &answer)?);
        if listed < query.page_size() {
            return Ok(sets);
        }
    }
    Err(format!(
        "{}: more than 20 pages of open pull requests; narrow the generator (labels) or raise the limit",
        query.url
    ))
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
