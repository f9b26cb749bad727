//! Model access policies (`FANOUT_MODEL_ACL`): who may write a model's records. Every policy
//! lets any authenticated user read (REST `GET`, the `find` method, model topics); they
//! differ in writes:
//!
//! | policy | create | update / delete |
//! | --- | --- | --- |
//! | `owner` (default) | any authenticated user | only the record's owner (its creator) |
//! | `authenticated` | any authenticated user | any authenticated user |
//! | `readonly` | nobody (REST) | nobody (REST) |
//!
//! `readonly` is for models another producer writes (a LoopBack app publishing on the events
//! channel): fanout serves reads and events but refuses REST writes.
//!
//! The setting is a comma-separated list of `Model=policy`; `*=policy` changes the default
//! for models not listed: `Order=owner,Public=authenticated,*=readonly`.

use std::collections::HashMap;
use std::fmt;

use crate::store::{UserId, WriteAccess};
use crate::topics::is_model_name;

/// What a model lets authenticated users write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelPolicy {
    /// Anyone creates; only the owner updates or deletes.
    Owner,
    /// Anyone creates, updates and deletes.
    Authenticated,
    /// No REST writes at all.
    ReadOnly,
}

impl ModelPolicy {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "owner" => Some(Self::Owner),
            "authenticated" => Some(Self::Authenticated),
            "readonly" => Some(Self::ReadOnly),
            _ => None,
        }
    }

    /// The policy's name in `FANOUT_MODEL_ACL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Authenticated => "authenticated",
            Self::ReadOnly => "readonly",
        }
    }

    /// True when the policy lets `user` create records.
    pub fn may_create(self) -> bool {
        self != Self::ReadOnly
    }

    /// The store-level condition an update or delete by `user` must meet, or `None` when the
    /// policy refuses every write.
    pub fn write_access(self, user: &UserId) -> Option<WriteAccess> {
        match self {
            Self::Owner => Some(WriteAccess::Owner(user.clone())),
            Self::Authenticated => Some(WriteAccess::Anyone),
            Self::ReadOnly => None,
        }
    }
}

/// The policy of every model: a default plus per-model exceptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelAcl {
    default: ModelPolicy,
    models: HashMap<String, ModelPolicy>,
}

impl Default for ModelAcl {
    fn default() -> Self {
        Self {
            default: ModelPolicy::Owner,
            models: HashMap::new(),
        }
    }
}

/// A `FANOUT_MODEL_ACL` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FANOUT_MODEL_ACL: {0}")]
pub struct AclError(String);

impl ModelAcl {
    /// Parses `Model=policy,…` (`*` for the default); the empty string is the default ACL.
    pub fn parse(text: &str) -> Result<Self, AclError> {
        let mut acl = ModelAcl::default();
        let mut default_set = false;
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (model, policy) = entry
                .split_once('=')
                .map(|(m, p)| (m.trim(), p.trim()))
                .ok_or_else(|| AclError(format!("{entry:?}: expected Model=policy")))?;
            let policy = ModelPolicy::parse(policy).ok_or_else(|| {
                AclError(format!(
                    "{entry:?}: the policy is owner, authenticated or readonly"
                ))
            })?;
            if model == "*" {
                if default_set {
                    return Err(AclError("`*` is given twice".into()));
                }
                default_set = true;
                acl.default = policy;
            } else if !is_model_name(model) {
                return Err(AclError(format!("{model:?} is not a model name")));
            } else if acl.models.insert(model.to_string(), policy).is_some() {
                return Err(AclError(format!("{model:?} is given twice")));
            }
        }
        Ok(acl)
    }

    /// The policy of `model`.
    pub fn policy(&self, model: &str) -> ModelPolicy {
        self.models.get(model).copied().unwrap_or(self.default)
    }
}

impl fmt::Display for ModelAcl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut entries: Vec<_> = self.models.iter().collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        for (model, policy) in entries {
            write!(f, "{model}={},", policy.as_str())?;
        }
        write!(f, "*={}", self.default.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_policies_and_default() {
        let acl = ModelAcl::parse("").unwrap();
        assert_eq!(acl.policy("Order"), ModelPolicy::Owner);
        let acl = ModelAcl::parse(" Order=owner , Public=authenticated,Feed=readonly").unwrap();
        assert_eq!(acl.policy("Order"), ModelPolicy::Owner);
        assert_eq!(acl.policy("Public"), ModelPolicy::Authenticated);
        assert_eq!(acl.policy("Feed"), ModelPolicy::ReadOnly);
        assert_eq!(acl.policy("Other"), ModelPolicy::Owner);
        let acl = ModelAcl::parse("*=authenticated,Order=owner").unwrap();
        assert_eq!(acl.policy("Other"), ModelPolicy::Authenticated);
        assert_eq!(acl.policy("Order"), ModelPolicy::Owner);
        assert_eq!(acl.to_string(), "Order=owner,*=authenticated");
    }

    #[test]
    fn refuses_bad_entries() {
        for bad in [
            "Order",
            "Order=",
            "Order=admin",
            "=owner",
            "9x=owner",
            "users=owner",
            "Order=owner,Order=authenticated",
            "*=owner,*=readonly",
        ] {
            assert!(ModelAcl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn write_access_follows_the_policy() {
        let alice = UserId::new("1");
        assert!(ModelPolicy::Owner.may_create());
        assert!(!ModelPolicy::ReadOnly.may_create());
        assert_eq!(
            ModelPolicy::Owner.write_access(&alice),
            Some(WriteAccess::Owner(alice.clone()))
        );
        assert_eq!(
            ModelPolicy::Authenticated.write_access(&alice),
            Some(WriteAccess::Anyone)
        );
        assert_eq!(ModelPolicy::ReadOnly.write_access(&alice), None);
    }
}
