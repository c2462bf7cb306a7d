//! [`classify`] against the words gix, ssh and HTTP servers really say.

use super::*;

#[test]
fn a_404_is_the_servers_not_the_urls() {
    let url = "https://127.0.0.1:40419/x";
    assert!(!says_404(
        "https://127.0.0.1:40419/x: connection refused (os error 111)",
        url
    ));
    assert!(!says_404("io error: port 14045 is closed", "git://h/r"));
    assert!(says_404(
        "https://127.0.0.1:40419/x: received http status 404",
        url
    ));
    assert!(says_404("http 404 not found", "https://h/r"));
}

#[test]
fn a_5xx_answer_is_a_failing_server_not_an_unreachable_one() {
    assert_eq!(
        http_server_error(
            "An IO error occurred when talking to the server: HTTP status server error \
             (503 Service Unavailable) for url (http://h/r/info/refs?service=git-upload-pack)"
        )
        .as_deref(),
        Some("503 Service Unavailable")
    );
    assert_eq!(http_server_error("connection refused (os error 111)"), None);
}
