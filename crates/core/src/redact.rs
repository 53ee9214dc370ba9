//! Hiding secrets in values that are printed, such as connection URLs in configuration.

/// `scheme://user:secret@host/...` becomes `scheme://user:***@host/...`, and
/// `scheme://token@host/...` becomes `scheme://***@host/...` (a lone user part may be a token);
/// a URL without credentials is returned as it is.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://***@{host}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact_url_password("postgres://rkms:hunter2@db:5432/keys"),
            "postgres://rkms:***@db:5432/keys"
        );
        assert_eq!(
            redact_url_password("redis://:hunter2@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(
            redact_url_password("postgres://db/keys"),
            "postgres://db/keys"
        );
        assert_eq!(
            redact_url_password("redis://token@cache"),
            "redis://***@cache"
        );
        assert_eq!(redact_url_password("not a url"), "not a url");
    }
}
