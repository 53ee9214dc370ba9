//! Authorization: which ids a principal may use, and for which operations.

use rkms_core::{KeyId, ID_PUNCTUATION, MAX_ID_LEN};

/// An id pattern: `*` matches any run of characters (including `/` and none at all); every
/// other character matches itself. `orders/*` is a prefix, `*` is every id, `a/*/keys` a glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPattern(String);

impl IdPattern {
    /// Checks a pattern: ids' characters and `*` only, at most 256 bytes.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() || pattern.len() > MAX_ID_LEN {
            return Err(format!(
                "id pattern {pattern:?} must be 1 to {MAX_ID_LEN} bytes long"
            ));
        }
        if let Some(c) = pattern
            .chars()
            .find(|c| !(*c == '*' || c.is_ascii_alphanumeric() || ID_PUNCTUATION.contains(*c)))
        {
            return Err(format!(
                "id pattern {pattern:?} holds {c:?}, which no id can contain"
            ));
        }
        Ok(Self(pattern.to_owned()))
    }

    /// True when `id` matches the whole pattern.
    pub fn matches(&self, id: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or_default();
        let Some(mut rest) = id.strip_prefix(first) else {
            return false;
        };
        let mut parts: Vec<&str> = parts.collect();
        let Some(last) = parts.pop() else {
            return rest.is_empty();
        };
        for part in parts {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a principal may do with an id it matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Operations {
    /// Read a key whose record exists (any version).
    pub get: bool,
    /// Create the key of an id that has none yet.
    pub create: bool,
    /// Make a new version of an id's key.
    pub rotate: bool,
    /// Schedule an id's deletion.
    pub delete: bool,
    /// Cancel an id's scheduled deletion.
    pub restore: bool,
    /// Read an id's metadata (state, versions, regions), never its key.
    pub describe: bool,
    /// See the id in listings.
    pub list: bool,
}

/// Every operation name the configuration accepts.
pub const OPERATION_NAMES: &str = "get, create, rotate, delete, restore, describe, list";

impl Operations {
    /// Every operation: what a local administrator may do.
    pub fn all() -> Self {
        Self {
            get: true,
            create: true,
            rotate: true,
            delete: true,
            restore: true,
            describe: true,
            list: true,
        }
    }

    /// Reads an operation name from the configuration (see [`OPERATION_NAMES`]).
    pub fn add(&mut self, name: &str) -> Result<(), String> {
        let flag = match name {
            "get" => &mut self.get,
            "create" => &mut self.create,
            "rotate" => &mut self.rotate,
            "delete" => &mut self.delete,
            "restore" => &mut self.restore,
            "describe" => &mut self.describe,
            "list" => &mut self.list,
            other => return Err(format!("unknown operation {other:?} ({OPERATION_NAMES})")),
        };
        *flag = true;
        Ok(())
    }

    /// True when no operation is allowed.
    pub fn is_empty(self) -> bool {
        self == Self::default()
    }

    fn union(self, other: Self) -> Self {
        Self {
            get: self.get || other.get,
            create: self.create || other.create,
            rotate: self.rotate || other.rotate,
            delete: self.delete || other.delete,
            restore: self.restore || other.restore,
            describe: self.describe || other.describe,
            list: self.list || other.list,
        }
    }
}

/// One grant: these operations on ids matching any of these patterns.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The ids the rule covers.
    pub ids: Vec<IdPattern>,
    /// What it allows on them.
    pub operations: Operations,
}

/// A principal's grants; what is not granted is denied.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    /// A policy of these rules.
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules }
    }

    /// Every operation some rule grants on `id`.
    pub fn allowed(&self, id: &KeyId) -> Operations {
        self.rules
            .iter()
            .filter(|rule| rule.ids.iter().any(|p| p.matches(id.as_str())))
            .fold(Operations::default(), |ops, rule| {
                ops.union(rule.operations)
            })
    }

    /// True when some rule grants, on some ids, what `wanted` picks from its operations.
    pub fn grants_anywhere(&self, wanted: impl Fn(Operations) -> bool) -> bool {
        self.rules
            .iter()
            .any(|rule| !rule.ids.is_empty() && wanted(rule.operations))
    }

    /// True when no rule grants anything.
    pub fn is_empty(&self) -> bool {
        self.rules
            .iter()
            .all(|r| r.ids.is_empty() || r.operations.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matches(pattern: &str, id: &str) -> bool {
        IdPattern::parse(pattern).unwrap().matches(id)
    }

    #[test]
    fn patterns_match_exactly_by_prefix_and_by_glob() {
        assert!(matches("orders", "orders"));
        assert!(!matches("orders", "orders/1"));
        assert!(matches("orders/*", "orders/1"));
        assert!(matches("orders/*", "orders/"));
        assert!(matches("orders/*", "orders/eu/7"));
        assert!(!matches("orders/*", "order/1"));
        assert!(!matches("orders/*", "billing/orders/1"));
        assert!(matches("*", "anything/at:all"));
        assert!(matches("t/*/keys", "t/42/keys"));
        assert!(!matches("t/*/keys", "t/42/keys/x"));
        assert!(matches("*-prod", "db-prod"));
        assert!(!matches("a*a", "a"));
        assert!(matches("a*a", "aa"));
        assert!(matches("a**b*c", "abxc"));
    }

    #[test]
    fn patterns_that_no_id_could_match_are_refused() {
        assert!(IdPattern::parse("").is_err());
        assert!(IdPattern::parse("orders/ *").is_err());
        assert!(IdPattern::parse("orders?").is_err());
        assert!(IdPattern::parse(&"a".repeat(257)).is_err());
    }

    #[test]
    fn operations_of_matching_rules_add_up() {
        let rule = |pattern: &str, get, create| Rule {
            ids: vec![IdPattern::parse(pattern).unwrap()],
            operations: Operations {
                get,
                create,
                ..Operations::default()
            },
        };
        let policy = Policy::new(vec![
            rule("shared/*", true, false),
            rule("*/mine", false, true),
        ]);
        let id = |s| KeyId::parse(s).unwrap();
        assert_eq!(
            policy.allowed(&id("shared/x")),
            Operations {
                get: true,
                ..Operations::default()
            }
        );
        assert_eq!(
            policy.allowed(&id("shared/mine")),
            Operations {
                get: true,
                create: true,
                ..Operations::default()
            }
        );
        assert!(policy.allowed(&id("other")).is_empty());
        assert!(Policy::default().is_empty());
    }

    /// A pattern is matched as the regular expression it stands for.
    fn reference(pattern: &str, id: &str) -> bool {
        match pattern.split_once('*') {
            None => pattern == id,
            Some((head, tail)) => {
                id.starts_with(head)
                    && (head.len()..=id.len())
                        .any(|i| id.is_char_boundary(i) && reference(tail, &id[i..]))
            }
        }
    }

    proptest! {
        #[test]
        fn matching_agrees_with_a_reference(pattern in "[ab/*]{1,8}", id in "[ab/]{1,10}") {
            prop_assert_eq!(IdPattern::parse(&pattern).unwrap().matches(&id), reference(&pattern, &id));
        }
    }
}
