//! The Lua scripts, one `.lua` file each under `scripts/` (each opens with its KEYS, ARGV,
//! reply, and why it is a script). Every script's KEYS are on one slot, the tenant's hash
//! tag, and so are the record names the scripts build from `layout::key_prefix`: on a
//! Redis Cluster a script may only touch keys of one slot. Loaded once, run with EVALSHA.

use std::sync::LazyLock;

use redis::Script;

/// Lua: `norm(t)`, RFC 3339 UTC times made comparable as strings; prepended to the
/// scripts that compare times.
const NORM: &str = include_str!("scripts/norm.lua");

/// A key record and its tenant's hash, in one round trip.
pub(super) static READ: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/read.lua")));

/// The first step of creating a tenant.
pub(super) static CREATE_TENANT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/create_tenant.lua")));

/// A tenant's plan change.
pub(super) static SET_PLAN: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/set_plan.lua")));

/// A tenant's or a key's limit overrides replaced.
pub(super) static SET_LIMITS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/set_limits.lua")));

/// The first step of deleting a tenant: its hash gone, its keys revoked.
pub(super) static DELETE_TENANT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/delete_tenant.lua")));

/// The first step of creating a key, `max_keys` included.
pub(super) static CREATE_KEY: LazyLock<Script> =
    LazyLock::new(|| Script::new(&[NORM, include_str!("scripts/create_key.lua")].concat()));

/// The first step of rotating a key, if what was checked is unchanged.
pub(super) static ROTATE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/rotate.lua")));

/// The first step of revoking a key.
pub(super) static REVOKE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/revoke.lua")));

/// A key record's digest switched to the current pepper's.
pub(super) static RESTORE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/restore.lua")));

/// `last_used_at` of some key records of one tenant.
pub(super) static TOUCH: LazyLock<Script> =
    LazyLock::new(|| Script::new(&[NORM, include_str!("scripts/touch.lua")].concat()));

/// The undo of a create whose second step failed.
pub(super) static UNDO_CREATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/undo_create.lua")));

/// The undo of a rotation whose second step failed.
pub(super) static UNDO_ROTATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/undo_rotate.lua")));
