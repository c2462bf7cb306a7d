//! How an error is told to a person: the error and its causes on one line ("what failed:
//! why"), each cause once. Errors keep their sources as values (`#[source]`); a cause whose
//! words its error already shows (kube's errors print their own source) is not repeated.

/// `error` and its sources, joined by ": ", leaving out a cause already in the text.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let words = cause.to_string();
        if !words.is_empty() && !text.contains(&words) {
            text.push_str(": ");
            text.push_str(&words);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot install the CRD")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("ApiError: forbidden")]
    struct Middle(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("forbidden")]
    struct Inner;

    #[test]
    fn each_cause_is_told_once() {
        assert_eq!(
            chain(&Outer(Middle(Inner))),
            "cannot install the CRD: ApiError: forbidden"
        );
        let io = std::io::Error::other("no room");
        assert_eq!(chain(&io), "no room");
    }
}
