//! The web UI in a real browser: Debian's chromium, driven headless through its
//! chromedriver, against the real cluster and an agent running in this test. Log in, see
//! the list, open an application and its resource tree (Deployment → ReplicaSet → Pods),
//! see a hand edit appear as a diff without reloading, sync it away, roll back; and a
//! request without a session gets nothing. Screenshots go to
//! `target/tmp/ui-screenshots/`.

mod support;
use support::fixtures::configmap;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::agent::{applied, create_application, options_for, start_agent, until};
use support::git::{GitDaemon, GitRepo};
use support::{TestNamespace, cluster};
use tether::agent::{AgentOptions, Application, install_crd};

const OPERATOR: &str = "operator-token-for-the-ui-test";
const VIEWER: &str = "viewer-token-for-the-ui-test";

/// chromedriver (and the chromium it starts), stopped with the test, also when it fails.
struct Driver {
    _process: support::ProcessGroup,
    port: u16,
}

impl Driver {
    fn start() -> Self {
        use std::os::unix::process::CommandExt;
        let port = support::free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect(
                "chromedriver runs (scripts/install-deps.sh installs Debian's chromium-driver)",
            );
        let driver = Self {
            _process: support::ProcessGroup::new(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    async fn browser(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,900", "--hide-scrollbars"]
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("chromium starts")
    }
}

fn screenshots() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

async fn shoot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).expect("write screenshot");
}

/// Waits until `css` matches an element, up to `limit`; returns how long it took.
async fn wait_for(browser: &Client, css: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if browser.find(Locator::Css(css)).await.is_ok() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{css} did not appear within {limit:?}; the page:\n{}",
            browser.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Clicks the element `css` matches; the live part of a page may be swapped while this
/// runs, so a stale element is found again (a few times).
async fn click(browser: &Client, css: &str) {
    for _ in 0..20 {
        match browser.find(Locator::Css(css)).await {
            Ok(element) => match element.click().await {
                Ok(()) => return,
                Err(fantoccini::error::CmdError::Standard(e))
                    if e.error == fantoccini::error::ErrorStatus::StaleElementReference => {}
                Err(e) => panic!("click {css}: {e}"),
            },
            Err(e) => panic!("find {css}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{css} kept going stale");
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client")
}

fn deployment(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: web\n        image: registry.invalid/web:1\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_ui_shows_applications_live_and_acts_on_them() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "ui").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("shop/web.yaml", &deployment(2));
    repo.write("shop/settings.yaml", &configmap("settings", "blue"));
    repo.write(
        "shop/db.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: hunter2-never-shown\n",
    );
    repo.write("blog/a.yaml", &configmap("blog", "green"));
    let first = repo.commit("shop: first release");
    let daemon = GitDaemon::start(&root);
    let (port, listen) = support::agent::free_listen();
    let agent = start_agent(
        &client,
        AgentOptions {
            listen,
            api_token: Some(OPERATOR.as_bytes().to_vec()),
            api_readonly_token: Some(VIEWER.as_bytes().to_vec()),
            ..options_for(&ns, dir.path())
        },
    );
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    for (name, self_heal) in [("shop", false), ("blog", true)] {
        create_application(
            &apps,
            name,
            json!({
                "source": {"repoURL": daemon.url("deploy"), "path": name},
                "destination": {"namespace": ns.name},
                "syncPolicy": {"interval": "1h", "selfHeal": self_heal}
            }),
        )
        .await;
    }
    // Both at the first commit before the second exists: otherwise shop's first sync may
    // already find the second commit, and history would hold one sync, not two.
    for name in ["shop", "blog"] {
        until(&apps, name, "first sync", |a| {
            applied(a) == Some(first.as_str())
        })
        .await;
    }
    // A second commit, so that history has a revision to roll back to.
    repo.write("shop/settings.yaml", &configmap("settings", "teal"));
    let second = repo.commit("shop: teal");
    apps.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Merge(tether::application::actions::sync()),
    )
    .await
    .expect("sync requested");
    until(&apps, "shop", "the second commit, Healthy", |a| {
        applied(a) == Some(second.as_str())
            && a.status.as_ref().and_then(|s| s.health.as_deref()) == Some("Healthy")
    })
    .await;
    let base = format!("http://127.0.0.1:{port}");
    let shop = format!("{base}/ui/apps/{}/shop", ns.name);

    // Without a session: a page leads to the login page, everything else is 401, and no
    // answer holds Application data.
    let anonymous = {
        let (base, shop, ns) = (base.clone(), shop.clone(), ns.name.clone());
        tokio::task::spawn_blocking(move || {
            let http = http();
            let mut seen = Vec::new();
            for url in [
                format!("{base}/ui/"),
                shop.clone(),
                format!("{shop}/tree"),
                format!("{shop}/object?kind=Secret&namespace={ns}&name=db"),
                format!("{base}/ui/events"),
                format!("{base}/ui/assets/ui.js"),
            ] {
                let page = http
                    .get(&url)
                    .header("Accept", "text/html")
                    .send()
                    .expect("GET");
                let status = page.status().as_u16();
                let location = page
                    .headers()
                    .get("location")
                    .map(|l| l.to_str().unwrap_or_default().to_string());
                let body = page.text().unwrap_or_default();
                seen.push((url, status, location, body));
            }
            let forged = http
                .post(format!("{shop}/sync"))
                .header("Cookie", "tether_session=forged")
                .send()
                .expect("POST");
            (seen, forged.status().as_u16())
        })
        .await
        .expect("requests")
    };
    for (url, status, location, body) in &anonymous.0 {
        assert!(
            (*status == 303 && location.as_deref() == Some("/ui/login")) || *status == 401,
            "{url}: {status} {location:?}"
        );
        assert!(
            !body.contains("shop") && !body.contains(&ns.name),
            "{url} leaked: {body}"
        );
    }
    assert_eq!(anonymous.1, 401, "a forged session cannot act");

    // Every UI response carries the security headers, and the session cookie is Secure
    // when the UI is reached over HTTPS (a proxy in front says so).
    let (missing, plain_cookie, proxied_cookie) = {
        let (base, shop) = (base.clone(), shop.clone());
        tokio::task::spawn_blocking(move || {
            let http = http();
            let mut missing = Vec::new();
            for (url, bearer) in [
                (format!("{base}/ui/login"), false),
                (format!("{base}/ui/"), false),
                (format!("{base}/ui/"), true),
                (shop.clone(), true),
                (format!("{shop}/tree"), true),
                (format!("{base}/ui/assets/ui.js"), true),
            ] {
                let mut request = http.get(&url).header("Accept", "text/html");
                if bearer {
                    request = request.header("Authorization", format!("Bearer {OPERATOR}"));
                }
                let response = request.send().expect("GET");
                for (name, value) in tether::agent::http::ui::SECURITY_HEADERS {
                    if response.headers().get(name).and_then(|v| v.to_str().ok()) != Some(value) {
                        missing.push(format!("{url}: {name}"));
                    }
                }
            }
            let login = |proxied: bool| {
                let mut request = http
                    .post(format!("{base}/ui/login"))
                    .header("Origin", base.clone())
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(format!("token={OPERATOR}"));
                if proxied {
                    request = request.header("X-Forwarded-Proto", "https");
                }
                request
                    .send()
                    .expect("POST")
                    .headers()
                    .get("set-cookie")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            (missing, login(false), login(true))
        })
        .await
        .expect("requests")
    };
    assert!(missing.is_empty(), "missing: {missing:?}");
    assert!(
        plain_cookie.contains("HttpOnly") && !plain_cookie.contains("Secure"),
        "{plain_cookie}"
    );
    assert!(proxied_cookie.contains("; Secure"), "{proxied_cookie}");

    let driver = Driver::start();
    let browser = driver.browser().await;
    browser.goto(&format!("{base}/")).await.expect("open");
    wait_for(&browser, "input#token", Duration::from_secs(10)).await;
    assert!(
        browser
            .current_url()
            .await
            .expect("url")
            .path()
            .ends_with("/ui/login")
    );
    shoot(&browser, "1-login").await;
    let token = browser
        .find(Locator::Css("input#token"))
        .await
        .expect("token field");
    token.send_keys("not-the-token").await.expect("type");
    click(&browser, "button.primary").await;
    wait_for(&browser, "p.error", Duration::from_secs(5)).await;
    let token = browser
        .find(Locator::Css("input#token"))
        .await
        .expect("token field");
    token.send_keys(OPERATOR).await.expect("type");
    click(&browser, "button.primary").await;
    let list_took = wait_for(&browser, "table.apps", Duration::from_secs(10)).await;
    let rows = browser
        .find_all(Locator::Css("table.apps tbody tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 2);
    let list = browser
        .find(Locator::Css("main"))
        .await
        .expect("main")
        .text()
        .await
        .expect("text");
    for text in ["shop", "blog", "Synced", "Healthy", "shop: teal"] {
        assert!(list.contains(text), "the list lacks {text:?}:\n{list}");
    }
    shoot(&browser, "2-applications").await;
    eprintln!("the list appeared {list_took:?} after logging in");

    // One application: the tree with the Deployment's ReplicaSet and Pods.
    click(
        &browser,
        &format!("tr[data-app='{}/shop'] td.name a", ns.name),
    )
    .await;
    wait_for(&browser, "#tree-card", Duration::from_secs(10)).await;
    wait_for(
        &browser,
        "li.node[data-depth='3'] button[data-kind='Pod']",
        Duration::from_secs(10),
    )
    .await;
    let pods = browser
        .find_all(Locator::Css(
            "li.node[data-depth='3'] button[data-kind='Pod']",
        ))
        .await
        .expect("pods");
    assert_eq!(pods.len(), 2, "two Pods under the ReplicaSet");
    browser
        .find(Locator::Css(
            "li.node[data-depth='2'] button[data-kind='ReplicaSet']",
        ))
        .await
        .expect("the Deployment's ReplicaSet");
    let history = browser
        .find_all(Locator::Css("#history tbody tr"))
        .await
        .expect("history");
    assert_eq!(history.len(), 2, "two syncs in history");
    shoot(&browser, "3-application").await;

    // A Secret shows its keys, never its values.
    click(&browser, "button.object[data-kind='Secret']").await;
    wait_for(&browser, "#object pre.manifest", Duration::from_secs(5)).await;
    let secret = browser
        .find(Locator::Css("#object"))
        .await
        .expect("panel")
        .text()
        .await
        .expect("text");
    assert!(
        secret.contains("password") && secret.contains("redacted"),
        "{secret}"
    );
    assert!(
        !browser.source().await.expect("source").contains("hunter2"),
        "a Secret value reached the browser"
    );

    // A hand edit appears as a diff without reloading.
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    configmaps
        .patch(
            "settings",
            &PatchParams::apply("hand-edit").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"color": "red"}})),
        )
        .await
        .expect("hand edit");
    let shown_after = wait_for(
        &browser,
        "button.object[data-name='settings'][data-sync='OutOfSync']",
        Duration::from_secs(10),
    )
    .await;
    eprintln!("the hand edit showed as a diff {shown_after:?} after it was made");
    click(&browser, "button.object[data-name='settings']").await;
    wait_for(&browser, "#object pre.diff", Duration::from_secs(5)).await;
    let diff = browser
        .find(Locator::Css("#object pre.diff"))
        .await
        .expect("diff")
        .text()
        .await
        .expect("text");
    assert!(
        diff.contains("-  color: red") && diff.contains("+  color: teal"),
        "{diff}"
    );
    // Who changed it: the field, its writer, how and when (no value).
    let who = browser
        .find(Locator::Css("#object ul.who"))
        .await
        .expect("who changed it")
        .text()
        .await
        .expect("text");
    assert!(
        who.contains(r#".data.color: changed by "hand-edit" (Apply at 20"#) && !who.contains("red"),
        "{who}"
    );
    shoot(&browser, "4-hand-edit-diff").await;

    // Sync: confirmed, then corrected, and the page shows it.
    click(&browser, "button[data-action='sync']").await;
    browser.accept_alert().await.expect("confirm the sync");
    wait_for(
        &browser,
        "button.object[data-name='settings'][data-sync='Synced']",
        Duration::from_secs(15),
    )
    .await;
    let live = configmaps
        .get("settings")
        .await
        .expect("get")
        .data
        .expect("data");
    assert_eq!(live["color"], "teal");
    shoot(&browser, "5-synced").await;

    // Roll back to the first commit.
    click(
        &browser,
        &format!("button[data-action='rollback'][data-revision='{first}']"),
    )
    .await;
    browser.accept_alert().await.expect("confirm the rollback");
    until(&apps, "shop", "rolled back", |a| {
        applied(a) == Some(first.as_str())
    })
    .await;
    assert_eq!(
        configmaps
            .get("settings")
            .await
            .expect("get")
            .data
            .expect("data")["color"],
        "blue"
    );
    let applied_text = format!("revision {} applied", &first[..12]);
    let started = Instant::now();
    while !browser
        .source()
        .await
        .expect("source")
        .contains(&applied_text)
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the page did not show the rollback"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shoot(&browser, "6-rolled-back").await;
    browser.close().await.expect("close the browser");

    // A read-only token sees everything and can do nothing.
    let (viewer_page, viewer_sync) = {
        let shop = shop.clone();
        tokio::task::spawn_blocking(move || {
            let http = http();
            let page = http
                .get(&shop)
                .header("Authorization", format!("Bearer {VIEWER}"))
                .send()
                .expect("GET")
                .text()
                .expect("text");
            let sync = http
                .post(format!("{shop}/sync"))
                .header("Authorization", format!("Bearer {VIEWER}"))
                .send()
                .expect("POST")
                .status()
                .as_u16();
            (page, sync)
        })
        .await
        .expect("requests")
    };
    assert!(
        viewer_page.contains("settings") && !viewer_page.contains("data-action"),
        "a viewer sees no action"
    );
    assert_eq!(viewer_sync, 403);
    let _ = agent.stop().await;
}
