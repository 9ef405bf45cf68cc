//! Orphaned plans: a policy that no longer defines a plan some tenants are on would lock
//! them out (every request 403 "plan not available"). `keygate check` and a hot reload
//! refuse such a policy, naming the plan and how many tenants use it, unless the
//! operator allows it (`--allow-orphaned-plans`). Renaming a plan goes through
//! `keygate tenants set-plan --from OLD --to NEW` between adding the new plan and
//! removing the old one (docs/operations.md).

use std::collections::BTreeMap;
use std::fmt;

use crate::policy::Policy;

/// A plan the checked policy lacks, and how many tenants are on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphaned {
    pub plan: String,
    pub tenants: usize,
}

impl fmt::Display for Orphaned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "plan \"{}\" is not in the policy but {} tenant(s) are on it: their requests would get 403 \"plan not \
             available\". Move them first (`keygate tenants set-plan --from {} --to NEW_PLAN`), or pass \
             --allow-orphaned-plans",
            self.plan, self.tenants, self.plan
        )
    }
}

/// The plans of `per_plan` (tenants per plan, from the store) that `policy` lacks. With
/// `serving` (a reload), only the plans it drops: those the serving policy defines.
/// Tenants already on a plan the serving policy lacks are locked out already; refusing
/// every later reload for them would only keep fixes out (they are shown by
/// `keygate tenants list` and refused by `keygate check`).
pub fn orphaned(per_plan: &BTreeMap<String, usize>, policy: &Policy, serving: Option<&Policy>) -> Vec<Orphaned> {
    per_plan
        .iter()
        .filter(|(plan, &tenants)| tenants > 0 && !policy.plans.contains_key(*plan))
        .filter(|(plan, _)| serving.is_none_or(|serving| serving.plans.contains_key(*plan)))
        .map(|(plan, &tenants)| Orphaned { plan: plan.clone(), tenants })
        .collect()
}

/// The plans the serving policy defines and `policy` does not: only a reload that drops
/// one needs to read the store.
pub fn dropped_plans(serving: &Policy, policy: &Policy) -> Vec<String> {
    serving.plans.keys().filter(|plan| !policy.plans.contains_key(*plan)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(plans: &str) -> Policy {
        let text = format!(
            "default = \"deny\"\n[scopes]\n\"a:b\" = \"x\"\n{plans}\n[upstreams.app]\nurl = \"http://127.0.0.1:1\"\n\n[[routes]]\nprefix = \
             \"/v1\"\nupstream = \"app\"\n"
        );
        Policy::parse(&text, std::path::Path::new("routes.toml")).expect("valid test policy").0
    }

    #[test]
    fn a_plan_with_tenants_missing_from_the_policy_is_orphaned() {
        let per_plan = BTreeMap::from([("pro".to_string(), 3), ("free".to_string(), 2)]);
        let new = policy("[plans.free]\n[plans.pro-2025]\n");
        assert_eq!(orphaned(&per_plan, &new, None), vec![Orphaned { plan: "pro".into(), tenants: 3 }]);
        let message = orphaned(&per_plan, &new, None)[0].to_string();
        assert!(message.contains("plan \"pro\"") && message.contains("3 tenant(s)"), "{message}");
        assert!(message.contains("--from pro") && message.contains("--allow-orphaned-plans"), "{message}");
        // Every plan in use still defined: nothing.
        assert!(orphaned(&per_plan, &policy("[plans.free]\n[plans.pro]\n"), None).is_empty());
    }

    #[test]
    fn a_reload_is_refused_only_for_the_plans_it_drops() {
        // "legacy" was orphaned before this reload: not this reload's doing.
        let per_plan = BTreeMap::from([("pro".to_string(), 1), ("legacy".to_string(), 4)]);
        let serving = policy("[plans.pro]\n");
        let new = policy("[plans.pro-2025]\n");
        assert_eq!(orphaned(&per_plan, &new, Some(&serving)), vec![Orphaned { plan: "pro".into(), tenants: 1 }]);
        assert_eq!(dropped_plans(&serving, &new), vec!["pro".to_string()]);
        assert!(dropped_plans(&serving, &policy("[plans.pro]\n[plans.more]\n")).is_empty());
    }
}
