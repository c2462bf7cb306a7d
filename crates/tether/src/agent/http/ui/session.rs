//! Sessions: the login page takes a token once and sets an HttpOnly, SameSite=Strict
//! cookie naming a session the agent keeps in memory (a restart logs everyone out). The
//! API token gives an operator session, the read-only token a viewer session. Every POST
//! from a cookie session must carry the session's CSRF token and come from this origin.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{DOCTYPE, html};
use subtle::ConstantTimeEq;

use super::UiState;

const COOKIE: &str = "tether_session";
/// How long a session lasts without logging in again.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// What a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything: sync, suspend, resume, roll back.
    Operator,
    /// Sees everything, changes nothing.
    Viewer,
}

/// The session a request runs in.
#[derive(Debug, Clone)]
pub struct Session {
    pub role: Role,
    /// The token every POST of a cookie session carries; none for a bearer-token request
    /// (no cookie, so no cross-site forgery to fear).
    pub csrf: Option<String>,
}

#[derive(Clone, Default)]
pub struct Sessions(Arc<Mutex<HashMap<String, (Session, Instant)>>>);

impl Sessions {
    /// The session of a request: its cookie, or its bearer token.
    pub fn authenticate(&self, state: &UiState, headers: &HeaderMap) -> Option<Session> {
        if let Some(token) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            return role_of(state, token.as_bytes()).map(|role| Session { role, csrf: None });
        }
        let id = cookie_value(headers)?;
        let mut sessions = self.0.lock().expect("not poisoned");
        sessions.retain(|_, (_, started)| started.elapsed() < LIFETIME);
        sessions.get(&id).map(|(session, _)| session.clone())
    }

    fn start(&self, role: Role) -> String {
        let id = random_hex();
        let session = Session {
            role,
            csrf: Some(random_hex()),
        };
        self.0
            .lock()
            .expect("not poisoned")
            .insert(id.clone(), (session, Instant::now()));
        id
    }

    fn end(&self, headers: &HeaderMap) {
        if let Some(id) = cookie_value(headers) {
            self.0.lock().expect("not poisoned").remove(&id);
        }
    }
}

/// The role a token gives, compared in constant time.
fn role_of(state: &UiState, given: &[u8]) -> Option<Role> {
    if given.is_empty() {
        return None;
    }
    if bool::from(given.ct_eq(state.api.token.as_slice())) {
        return Some(Role::Operator);
    }
    match &state.readonly_token {
        Some(token) if bool::from(given.ct_eq(token.as_slice())) => Some(Role::Viewer),
        _ => None,
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| cookie::Cookie::split_parse(v.to_string()))
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_string())
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the system's random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a request comes from this origin: browsers send `Sec-Fetch-Site` and `Origin`
/// on a cross-site POST; either one saying so refuses it.
fn same_origin(headers: &HeaderMap) -> bool {
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if site.is_some_and(|s| s != "same-origin" && s != "none") {
        return false;
    }
    match (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (Some(origin), Some(host)) => {
            origin
                .strip_prefix("http://")
                .or(origin.strip_prefix("https://"))
                == Some(host)
        }
        _ => true,
    }
}

/// A POST in a cookie session must come from this origin with the session's CSRF token.
pub fn check_post(session: &Session, headers: &HeaderMap) -> Result<(), &'static str> {
    let Some(expected) = &session.csrf else {
        return Ok(());
    };
    if !same_origin(headers) {
        return Err("refused: the request comes from another site");
    }
    let given = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err("refused: the request lacks this session's CSRF token; reload the page")
    }
}

fn login_form(error: Option<&str>) -> maud::Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Log in · tether" }
                // Inline: nothing under /ui/ but this page answers without a session.
                style { (maud::PreEscaped(super::assets::CSS)) }
            }
            body.login {
                main.login-card {
                    div.brand { span.logo { (maud::PreEscaped(super::layout::LOGO)) } " tether" }
                    p.muted { "GitOps agent. Log in with the agent's API token (or its read-only token)." }
                    @if let Some(error) = error {
                        p.error role="alert" { (error) }
                    }
                    form method="post" action="/ui/login" {
                        label for="token" { "Token" }
                        input #token type="password" name="token" autocomplete="current-password" autofocus required;
                        button.primary type="submit" { "Log in" }
                    }
                    p.hint { "The token is the content of the file given to " code { "--api-token-file" } "." }
                }
            }
        }
    }
}

pub async fn login_page() -> Response {
    Html(login_form(None).into_string()).into_response()
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    token: String,
}

pub async fn login(
    State(state): State<UiState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !same_origin(&headers) {
        return (
            StatusCode::FORBIDDEN,
            "refused: the request comes from another site",
        )
            .into_response();
    }
    let Some(role) = role_of(&state, form.token.trim().as_bytes()) else {
        return (
            StatusCode::UNAUTHORIZED,
            Html(login_form(Some("That token is not valid for this agent.")).into_string()),
        )
            .into_response();
    };
    let id = state.sessions.start(role);
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        LIFETIME.as_secs(),
        if over_https(&state, &headers) {
            "; Secure"
        } else {
            ""
        }
    );
    let mut response = Redirect::to("/ui/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("a valid header"),
    );
    response
}

pub async fn logout(State(state): State<UiState>, headers: HeaderMap) -> Response {
    state.sessions.end(&headers);
    let mut response = Redirect::to("/ui/login").into_response();
    let secure = if over_https(&state, &headers) {
        "; Secure"
    } else {
        ""
    };
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}"
        ))
        .expect("a valid header"),
    );
    response
}

/// Whether the browser reached the agent over HTTPS: the agent was told so
/// (`--secure-cookies`), or the proxy in front says so (`X-Forwarded-Proto: https`, or
/// `Forwarded: proto=https`). The cookie is then Secure: never sent over plain HTTP.
fn over_https(state: &UiState, headers: &HeaderMap) -> bool {
    let said = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    state.api.options.secure_cookies
        || said("x-forwarded-proto").split(',').next().map(str::trim) == Some("https")
        || said("forwarded")
            .split([';', ','])
            .any(|part| part.trim() == "proto=https")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("a header value"));
        }
        map
    }

    #[test]
    fn a_request_from_another_site_is_not_of_this_origin() {
        let host = ("host", "tether.example.com:8080");
        assert!(same_origin(&headers(&[
            host,
            ("origin", "https://tether.example.com:8080"),
            ("sec-fetch-site", "same-origin"),
        ])));
        // A form another site posts, as browsers label it.
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "https://evil.example"),
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("sec-fetch-site", "cross-site"),
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "https://tether.example.com:8080.evil.example"),
        ])));
        // A client that sends neither (curl, an old browser) passes here: the session's
        // CSRF token still guards its POSTs.
        assert!(same_origin(&headers(&[host])));
    }
}
