//! The scope model: a tool runs only when the agent's token (remote grant) and the sidecar's
//! pairing record (local grant) both allow its scope.

use protocol::catalog::{self, ToolSpec, scopes};
use std::collections::BTreeSet;

/// A set of scopes, parsed from an OAuth `scope` claim or a pairing record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeSet(BTreeSet<String>);

impl ScopeSet {
    /// Parses a space-separated OAuth scope string. Unknown scopes are kept (a token may carry
    /// scopes for other resources) but never grant anything here.
    pub fn from_oauth(scope_claim: &str) -> Self {
        ScopeSet(scope_claim.split_whitespace().map(str::to_string).collect())
    }

    pub fn from_list<S: AsRef<str>>(items: &[S]) -> Self {
        ScopeSet(items.iter().map(|s| s.as_ref().to_string()).collect())
    }

    /// The read-only scopes a new local pairing gets by default.
    pub fn read_only_default() -> Self {
        Self::from_list(scopes::READ_ONLY)
    }

    pub fn contains(&self, scope: &str) -> bool {
        self.0.contains(scope)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// Space-separated, sorted (the OAuth wire form).
    pub fn to_oauth(&self) -> String {
        self.0.iter().cloned().collect::<Vec<_>>().join(" ")
    }

    /// Whether this set allows `tool`.
    pub fn allows(&self, tool: &ToolSpec) -> bool {
        self.contains(tool.scope)
    }

    /// The catalog tools this set allows, in catalog order.
    pub fn allowed_tools(&self) -> impl Iterator<Item = &'static ToolSpec> + '_ {
        catalog::CATALOG.iter().filter(|tool| self.allows(tool))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_tokens_see_only_read_tools() {
        let set = ScopeSet::from_oauth("ibkr:health:read openid");
        let names: Vec<_> = set.allowed_tools().map(|t| t.name).collect();
        assert_eq!(names, vec!["ibkr_health", "ibkr_session_status"]);
        assert!(!set.contains("ibkr:orders:write"));
        assert_eq!(ScopeSet::from_oauth("b a").to_oauth(), "a b");
    }
}
