//! Who may sign in, and who is an administrator: `--allowed-users`, `--allowed-groups`,
//! `--admin-users`, `--admin-groups`. Checked on every identified request (after the
//! credential, before anything is looked up or started), so a change of the flags or of a
//! person's groups takes effect at the next request or token.
//!
//! A user entry with `@` matches the email address without regard to case, and only an
//! address the identity provider says is verified (`email_verified: true`; in dev mode,
//! where nothing is verified, any); any other entry matches the subject exactly. Groups come from the
//! token (`cognito:groups` or `groups`). With no allow-list at all, every identity the
//! authenticator accepts may sign in (as before these flags).

use std::collections::HashSet;

use super::{Credential, Identity};

#[derive(Debug, Default, Clone)]
pub struct SignInPolicy {
    allowed_users: Entries,
    allowed_groups: HashSet<String>,
    admin_users: Entries,
    admin_groups: HashSet<String>,
}

/// Users named by subject, or by email address (an entry with `@`, kept in lower case).
#[derive(Debug, Default, Clone)]
struct Entries {
    subjects: HashSet<String>,
    emails: HashSet<String>,
    /// Whether an address the identity provider does not call verified counts (dev mode,
    /// where nothing is verified anyway).
    unverified_email: bool,
}

impl Entries {
    fn new(values: &[String], unverified_email: bool) -> Self {
        let values = values.iter().map(|v| v.trim()).filter(|v| !v.is_empty());
        let (emails, subjects): (Vec<&str>, Vec<&str>) = values.partition(|v| v.contains('@'));
        Entries {
            subjects: subjects.into_iter().map(str::to_owned).collect(),
            emails: emails.into_iter().map(str::to_lowercase).collect(),
            unverified_email,
        }
    }

    fn is_empty(&self) -> bool {
        self.subjects.is_empty() && self.emails.is_empty()
    }

    fn len(&self) -> usize {
        self.subjects.len() + self.emails.len()
    }

    fn names(&self, identity: &Identity) -> bool {
        let verified = identity.email_verified == Some(true)
            || (self.unverified_email && identity.email_verified.is_none());
        self.subjects.contains(&identity.user_id)
            || (verified
                && identity
                    .email
                    .as_deref()
                    .is_some_and(|e| self.emails.contains(&e.to_lowercase())))
    }
}

fn groups(list: &[String]) -> HashSet<String> {
    list.iter()
        .map(|g| g.trim())
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect()
}

impl SignInPolicy {
    /// `unverified_email`: whether addresses not called verified count (dev mode only).
    pub fn new(
        allowed_users: &[String],
        allowed_groups: &[String],
        admin_users: &[String],
        admin_groups: &[String],
        unverified_email: bool,
    ) -> Self {
        SignInPolicy {
            allowed_users: Entries::new(allowed_users, unverified_email),
            allowed_groups: groups(allowed_groups),
            admin_users: Entries::new(admin_users, unverified_email),
            admin_groups: groups(admin_groups),
        }
    }

    /// Whether anyone the authenticator accepts may sign in.
    pub fn is_open(&self) -> bool {
        self.allowed_users.is_empty() && self.allowed_groups.is_empty()
    }

    fn in_any(set: &HashSet<String>, identity: &Identity) -> bool {
        identity.groups.iter().any(|g| set.contains(g))
    }

    /// Whether `identity` may use the gateway at all. Administrators always may.
    pub fn allows(&self, identity: &Identity) -> bool {
        self.is_open()
            || self.allowed_users.names(identity)
            || Self::in_any(&self.allowed_groups, identity)
            || self.is_admin_person(identity)
    }

    /// Whether `identity` may use the admin console and its API. A personal access token
    /// never may: it is made for a CLI or an IDE to reach the person's own OpenCode.
    pub fn is_admin(&self, identity: &Identity) -> bool {
        !matches!(identity.credential, Credential::AccessToken { .. })
            && self.is_admin_person(identity)
    }

    fn is_admin_person(&self, identity: &Identity) -> bool {
        self.admin_users.names(identity) || Self::in_any(&self.admin_groups, identity)
    }

    /// How many entries each list has, for the start-up log.
    pub fn summary(&self) -> String {
        if self.is_open() && self.admin_users.is_empty() && self.admin_groups.is_empty() {
            return "anyone the identity provider accepts; no administrators".to_owned();
        }
        format!(
            "{}; administrators: {} users, {} groups",
            if self.is_open() {
                "anyone the identity provider accepts".to_owned()
            } else {
                format!(
                    "{} users and {} groups allowed",
                    self.allowed_users.len(),
                    self.allowed_groups.len()
                )
            },
            self.admin_users.len(),
            self.admin_groups.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Person;

    fn person(id: &str, email: Option<&str>, verified: Option<bool>, groups: &[&str]) -> Identity {
        let person = Person {
            user_id: id.to_owned(),
            email: email.map(str::to_owned),
            name: None,
            email_verified: verified,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        Identity::new(person, Credential::Cookie)
    }

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn no_lists_let_everyone_in_and_make_nobody_admin() {
        let policy = SignInPolicy::default();
        let ana = person("ana", None, None, &[]);
        assert!(policy.allows(&ana));
        assert!(!policy.is_admin(&ana));
    }

    #[test]
    fn users_match_by_subject_or_verified_email() {
        let policy = SignInPolicy::new(&list(&["sub-1", "Ana@Example.com"]), &[], &[], &[], false);
        assert!(policy.allows(&person("sub-1", None, None, &[])));
        assert!(
            !policy.allows(&person("SUB-1", None, None, &[])),
            "subjects are exact"
        );
        assert!(policy.allows(&person("x", Some("ana@example.COM"), Some(true), &[])));
        for verified in [None, Some(false)] {
            assert!(
                !policy.allows(&person("x", Some("ana@example.com"), verified, &[])),
                "an address not called verified names nobody ({verified:?})"
            );
        }
        assert!(
            !policy.allows(&person("ana@example.com", None, None, &[])),
            "an entry with @ is an address, never a subject"
        );
        assert!(!policy.allows(&person("bob", Some("bob@example.com"), Some(true), &[])));
        let dev = SignInPolicy::new(&list(&["ana@localhost"]), &[], &[], &[], true);
        assert!(dev.allows(&person("ana", Some("ana@localhost"), None, &[])));
    }

    #[test]
    fn groups_allow_and_make_admins() {
        let policy = SignInPolicy::new(
            &[],
            &list(&["staff"]),
            &list(&["root-user"]),
            &list(&["ops"]),
            false,
        );
        assert!(policy.allows(&person("a", None, None, &["staff"])));
        assert!(!policy.allows(&person("b", None, None, &["guests"])));
        let op = person("c", None, None, &["ops"]);
        assert!(policy.allows(&op), "admins may always sign in");
        assert!(policy.is_admin(&op));
        assert!(policy.is_admin(&person("root-user", None, None, &[])));
        assert!(!policy.is_admin(&person("a", None, None, &["staff"])));
        let token = op.with_credential(Credential::AccessToken { basic: false });
        assert!(policy.allows(&token));
        assert!(
            !policy.is_admin(&token),
            "a personal access token is never an admin's"
        );
    }
}
