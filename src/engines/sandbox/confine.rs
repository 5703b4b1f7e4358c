//! Applies an engine's sandbox ([`super::policy`]): a private directory per runner (its `TMPDIR`, `HOME` and
//! working directory, owned by the engine's user, removed when the runner ends), the user switch (or, for a root
//! supervisor without `[engines] user`, uid 0 without any capability), `PR_SET_NO_NEW_PRIVS`, and a Landlock
//! ruleset built in the parent before the fork, so that the child only makes syscalls between fork and exec
//! (no allocation, no lock). Landlock is used best-effort: what this kernel lacks is dropped and said once at
//! start-up.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetError,
    Scope, ABI,
};

use super::{policy, unreachable, EngineFiles, Node, Policy, EXECUTE, READ};
use crate::config::SandboxConfig;
use crate::engines::{EngineCommand, LaunchSpec};

/// The Landlock ABI whose rights we ask for; an older kernel gets what it has of them (best effort).
const TARGET_ABI: ABI = ABI::V6;

/// The user engines switch to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// How engines are confined on this machine, decided once at start-up.
#[derive(Debug)]
pub struct Sandbox {
    config: SandboxConfig,
    /// Set when the supervisor runs as root and `[engines] user` names a user.
    user: Option<EngineUser>,
    /// A root supervisor without `[engines] user`: engines keep uid 0 and lose every capability.
    drop_caps: bool,
    /// Whether we may empty the bounding set (CAP_SETPCAP); without it the bounding set stays what the container
    /// runtime left (Kubernetes' `drop: ["ALL"]` empties it).
    drop_bounding: bool,
    /// The highest capability number this kernel knows.
    last_cap: u32,
    /// Landlock's ABI version on this kernel; 0: none.
    landlock_abi: i64,
}

impl Sandbox {
    /// Looks the configured user up and what the kernel supports, and says in one line how engines will run (and
    /// in one more what is missing).
    pub fn new(config: &SandboxConfig) -> Result<Sandbox, String> {
        let root = nix::unistd::geteuid().is_root();
        let caps = effective_capabilities();
        let user = match (&config.user, root && config.enabled) {
            (Some(name), true) => {
                let needed = [
                    (CAP_CHOWN, "CAP_CHOWN"),
                    (CAP_SETGID, "CAP_SETGID"),
                    (CAP_SETUID, "CAP_SETUID"),
                ];
                let missing: Vec<&str> = needed
                    .iter()
                    .filter(|(bit, _)| caps & (1 << bit) == 0)
                    .map(|(_, name)| *name)
                    .collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "engines.user: switching engines to {name:?} needs {}, which the supervisor lacks",
                        missing.join(", ")
                    ));
                }
                Some(lookup(name)?)
            }
            _ => None,
        };
        let sandbox = Sandbox {
            config: config.clone(),
            drop_caps: root && config.enabled && user.is_none(),
            drop_bounding: caps & (1 << CAP_SETPCAP) != 0,
            user,
            last_cap: std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(40),
            landlock_abi: landlock_abi(),
        };
        sandbox.announce(root);
        remove_orphaned_private_dirs();
        Ok(sandbox)
    }

    fn announce(&self, root: bool) {
        if !self.config.enabled {
            tracing::warn!("engines run unconfined ([engines] sandbox = false)");
            return;
        }
        let who = match &self.user {
            Some(u) => format!("as {} (uid {})", u.name, u.uid),
            None if self.drop_caps => "as root without capabilities".to_string(),
            None => "as the supervisor's user".to_string(),
        };
        if self.landlock_abi > 0 {
            let scoped = if self.landlock_abi >= 6 {
                ", signals and abstract sockets scoped"
            } else {
                ""
            };
            tracing::info!(
                landlock.abi = self.landlock_abi,
                "engines run {who} with no_new_privs, confined by Landlock (ABI {}): their files read-only, a private directory to write{scoped}",
                self.landlock_abi
            );
        } else {
            tracing::warn!(
                "engines run {who} with no_new_privs but not confined to their files: this kernel has no Landlock"
            );
        }
        if self.drop_caps {
            tracing::warn!(
                "set [engines] user to run engines as an unprivileged user rather than as root"
            );
        } else if !root && self.config.user.is_some() {
            tracing::warn!(
                "[engines] user is not used: the supervisor does not run as root, engines run as it does"
            );
        }
    }

    /// Prepares one engine start: its private directory and, when the sandbox is on, its Landlock ruleset. Fails
    /// when the engine's user cannot reach its program or its model's files (the message names the directory).
    pub fn prepare(
        &self,
        command: &EngineCommand,
        install_dir: &Path,
        launch: &LaunchSpec,
    ) -> Result<Option<Confinement>, String> {
        if !self.config.enabled {
            return Ok(None);
        }
        let private = tempfile::Builder::new()
            .prefix(&super::private_prefix(std::process::id()))
            .tempdir()
            .map_err(|e| format!("cannot make the engine's private directory: {e}"))?;
        if let Some(u) = &self.user {
            std::os::unix::fs::chown(private.path(), Some(u.uid), Some(u.gid)).map_err(|e| {
                format!(
                    "cannot give {} to {}: {e}",
                    private.path().display(),
                    u.name
                )
            })?;
            self.check_reachable(command, launch, private.path(), u)?;
        }
        let resolved = std::fs::canonicalize(&command.program).ok();
        let gpu_devices = gpu_devices();
        let policy = policy(&EngineFiles {
            command,
            program_resolved: resolved.as_deref(),
            install_dir,
            launch,
            private: private.path(),
            gpu_devices: &gpu_devices,
            config: &self.config,
        });
        let ruleset = if self.landlock_abi > 0 {
            ruleset(&policy)
                .map_err(|e| format!("cannot build the engine's Landlock rules: {e}"))?
        } else {
            None
        };
        Ok(Some(Confinement {
            private,
            user: self.user.as_ref().map(|u| (u.uid, u.gid)),
            ruleset,
            drop_caps: self.drop_caps,
            drop_bounding: self.drop_bounding,
            last_cap: self.last_cap,
        }))
    }

    /// The engine's user must be able to walk to its program, its private directory and its model's files:
    /// Landlock grants nothing that the file modes refuse.
    fn check_reachable(
        &self,
        command: &EngineCommand,
        launch: &LaunchSpec,
        private: &Path,
        user: &EngineUser,
    ) -> Result<(), String> {
        let mut wanted: Vec<(&Path, u32)> = vec![(&command.program, EXECUTE), (private, READ)];
        wanted.extend(
            command
                .prefix
                .iter()
                .map(Path::new)
                .filter(|p| p.is_absolute() && p.exists())
                .map(|p| (p, READ)),
        );
        wanted.push((&launch.model_path, READ));
        wanted.extend(launch.chat_template.as_deref().map(|p| (p, READ)));
        wanted.extend(launch.mmproj.as_deref().map(|p| (p, READ)));
        wanted.extend(launch.draft.as_ref().map(|d| (d.path.as_path(), READ)));
        for (path, want) in wanted {
            let chain = chain(path).map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
            let is_dir = chain
                .last()
                .is_some_and(|(_, n)| n.mode & libc::S_IFMT == libc::S_IFDIR);
            let want = if is_dir { READ | EXECUTE } else { want };
            if let Some(why) = unreachable(&chain, user.uid, user.gid, want) {
                return Err(format!(
                    "the engine's user {} cannot reach {}: {why}",
                    user.name,
                    path.display()
                ));
            }
        }
        Ok(())
    }
}

/// An engine start's confinement, made in the parent.
pub struct Confinement {
    private: tempfile::TempDir,
    user: Option<(u32, u32)>,
    ruleset: Option<OwnedFd>,
    drop_caps: bool,
    drop_bounding: bool,
    last_cap: u32,
}

impl Confinement {
    /// Sets the command's user, working directory and environment, and what the child does before exec:
    /// drop capabilities (root kept), `PR_SET_NO_NEW_PRIVS`, enter the Landlock domain. Call after any other
    /// `pre_exec`; keep `self` until the command is spawned (the child inherits the ruleset's descriptor).
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        let private = self.private.path();
        cmd.current_dir(private)
            .env("TMPDIR", private)
            .env("HOME", private);
        if let Some((uid, gid)) = self.user {
            // std sets the group, drops the supplementary groups and sets the user before `pre_exec`.
            cmd.uid(uid).gid(gid);
        }
        let ruleset = self.ruleset.as_ref().map(AsRawFd::as_raw_fd);
        let (drop_caps, last_cap) = (self.drop_caps, self.last_cap);
        let bounding = if self.drop_bounding {
            Some(last_cap)
        } else {
            None
        };
        // SAFETY: runs in the forked child before exec; it only makes syscalls (prctl, capset,
        // landlock_restrict_self) on values computed before the fork, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if drop_caps {
                    drop_all_capabilities(bounding)?;
                }
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = ruleset {
                    if libc::syscall(libc::SYS_landlock_restrict_self, fd, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }

    /// The private directory, to keep until the engine is gone (dropping it removes the directory).
    pub fn into_private(self) -> tempfile::TempDir {
        self.private
    }
}

/// `capset`'s header and data (`linux/capability.h`, version 3: two 32-bit words per set).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Empties the bounding set up to capability `bounding` (an exec as uid 0 would otherwise be given every
/// capability in it back; `None` without CAP_SETPCAP, when it cannot be reduced and stays what the container
/// runtime left) and then the effective, permitted and inheritable sets (which clears the ambient set).
/// Async-signal-safe.
fn drop_all_capabilities(bounding: Option<u32>) -> std::io::Result<()> {
    if let Some(last) = bounding {
        for cap in 0..=last {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
                let e = std::io::Error::last_os_error();
                // Past the kernel's last capability (an older kernel than cap_last_cap said): done.
                if e.raw_os_error() == Some(libc::EINVAL) {
                    break;
                }
                return Err(e);
            }
        }
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and data are the layout capset(2) reads, alive for the call.
    if unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

const CAP_CHOWN: u32 = 0;
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SETPCAP: u32 = 8;

/// Our effective capabilities (`CapEff` in /proc/self/status); 0 when unreadable.
fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// The Landlock ruleset of a policy, as the descriptor the child enters; `None` when the kernel has none.
fn ruleset(policy: &Policy) -> Result<Option<OwnedFd>, RulesetError> {
    let abi = TARGET_ABI;
    let read = AccessFs::from_read(abi);
    let device = read | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev;
    let created = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .scope(Scope::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(&policy.read, read))?
        .add_rules(path_beneath_rules(&policy.write, AccessFs::from_all(abi)))?
        .add_rules(path_beneath_rules(&policy.devices, device))?;
    Ok(created.into())
}

/// Landlock's ABI version on this kernel (`landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`);
/// 0 when it has none or it is disabled.
pub fn landlock_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: the version query reads no memory (NULL attributes, size 0).
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    v.max(0)
}

fn lookup(name: &str) -> Result<EngineUser, String> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(EngineUser {
            name: name.to_string(),
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        }),
        Ok(None) => Err(format!(
            "engines.user: there is no user {name:?} on this machine (create one: useradd --system --no-create-home --shell /usr/sbin/nologin {name})"
        )),
        Err(e) => Err(format!("engines.user: cannot look {name:?} up: {e}")),
    }
}

/// Removes the private directories that supervisors no longer running left in `$TMPDIR` (killed before their
/// runners ended); those of running supervisors stay.
fn remove_orphaned_private_dirs() {
    let dir = std::env::temp_dir();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(owner) = name.to_str().and_then(super::private_owner) else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => {
                tracing::info!(path = %entry.path().display(), "removed an engine's private directory that a stopped supervisor left")
            }
            Err(e) => {
                tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove an engine's old private directory")
            }
        }
    }
}

/// The GPU device files present in `/dev`.
fn gpu_devices() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(super::gpu_device))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// Each directory from `/` down to `path` (symbolic links resolved), then `path` itself, with their modes.
fn chain(path: &Path) -> std::io::Result<Vec<(PathBuf, Node)>> {
    use std::os::unix::fs::MetadataExt;
    let real = std::fs::canonicalize(path)?;
    let mut out = Vec::new();
    for p in real.ancestors().collect::<Vec<_>>().into_iter().rev() {
        let m = std::fs::metadata(p)?;
        out.push((
            p.to_path_buf(),
            Node {
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_landlock_version_query_answers() {
        // 0 on a kernel without Landlock; this machine's kernel says which ABI it has.
        assert!(landlock_abi() >= 0);
    }

    #[test]
    fn a_chain_starts_at_the_root_and_ends_at_the_path() {
        let c = chain(Path::new("/usr/bin")).unwrap();
        assert_eq!(c.first().unwrap().0, PathBuf::from("/"));
        assert!(c.last().unwrap().0.ends_with("bin"));
    }
}
