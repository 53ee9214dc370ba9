//! Hiding secrets in values that are printed, such as connection URLs in configuration.

/// `scheme://user:secret@host/...` becomes `scheme://user:***@host/...`, and
/// `scheme://token@host/...` becomes `scheme://***@host/...` (a lone user part may be a token);
/// a `password` query parameter (which PostgreSQL URLs may carry) becomes `password=***`. A URL
/// without credentials is returned as it is.
pub fn redact_url_password(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((credentials, host)) => match credentials.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => format!("{scheme}://***@{host}"),
            },
            None => base.to_owned(),
        },
        None => base.to_owned(),
    };
    let Some(query) = query else {
        return base;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if name.eq_ignore_ascii_case("password") => format!("{name}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
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
        assert_eq!(
            redact_url_password("postgres://rkms@db:5432/rkms?sslmode=require&password=hunter2"),
            "postgres://***@db:5432/rkms?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url_password("postgres://db/rkms?PASSWORD=hunter2"),
            "postgres://db/rkms?PASSWORD=***"
        );
    }
}
