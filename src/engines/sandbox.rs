//! The engine sandbox's policy, as pure functions: which files an engine may read, write and use as devices,
//! computed from how it is started (its program, the arguments before its own) and what it loads (the model's
//! files in the store); and whether an unprivileged user can reach a path through the directories above it
//! (Landlock adds no permission, so the user needs search rights on every directory on the way).
//! `confine` applies the policy (user, capabilities, `no_new_privs`, Landlock) and owns every syscall; nothing
//! here touches the file system.

pub mod confine;

use std::path::{Path, PathBuf};

use super::{EngineCommand, LaunchSpec};
use crate::config::SandboxConfig;

/// System trees every engine may read and execute: the dynamic linker, libraries, interpreters, CUDA under
/// `/usr/local/cuda`; `/proc` (its own `/proc/self`, CPU and memory facts; other processes' entries stay behind
/// Landlock's ptrace rule) and `/sys` (CPU topology, GPU discovery). `/opt` is not among them: add a tree there
/// with `[engines] sandbox_read`.
pub const SYSTEM_READ: &[&str] = &[
    "/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/proc", "/sys",
];

/// Files and trees of `/etc` an engine may read: the linker's cache, name resolution, users and groups (libc
/// looks its own uid up), TLS roots, time zone, MIME types (Python), GPU vendor files. Not the rest of `/etc`
/// (`/etc/shadow` is readable by a root that kept its uid).
pub const ETC_READ: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/nsswitch.conf",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/mime.types",
    "/etc/os-release",
    "/etc/machine-id",
    "/etc/alternatives",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/OpenCL",
    "/etc/vulkan",
    "/etc/nvidia",
];

/// Character devices an engine may open (read, write, ioctl); the GPUs' are listed at each start
/// ([`gpu_device`]).
pub const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// Shared trees an engine may write besides its private directory: POSIX shared memory and semaphores, which
/// PyTorch and vLLM's workers use.
pub const SHARED_WRITE: &[&str] = &["/dev/shm"];

/// Whether a `/dev` entry is a GPU's: NVIDIA's (`nvidia0`, `nvidiactl`, `nvidia-uvm`, `nvidia-caps`), DRM's
/// (`dri`, Vulkan builds) or AMD's compute device (`kfd`).
pub fn gpu_device(name: &str) -> bool {
    name.starts_with("nvidia") || name == "dri" || name == "kfd"
}

/// What an engine may touch. Directories grant everything beneath them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Read and execute.
    pub read: Vec<PathBuf>,
    /// Read, write, create, remove.
    pub write: Vec<PathBuf>,
    /// Read, write and ioctl on device files.
    pub devices: Vec<PathBuf>,
}

/// What the policy of one engine start is computed from.
pub struct EngineFiles<'a> {
    pub command: &'a EngineCommand,
    /// `command.program` with its symbolic links resolved: a venv's `bin/python` links to its base interpreter,
    /// whose prefix holds the standard library.
    pub program_resolved: Option<&'a Path>,
    /// The engine's install directory under the data directory.
    pub install_dir: &'a Path,
    pub launch: &'a LaunchSpec,
    /// The runner's private directory (`TMPDIR`, `HOME`).
    pub private: &'a Path,
    /// The GPU device files present (`/dev/nvidia0`...).
    pub gpu_devices: &'a [PathBuf],
    pub config: &'a SandboxConfig,
}

/// The tree an executable belongs to: the parent of its `bin/` (a venv, a pyenv version, an install prefix), or
/// its own directory otherwise; never `/`.
pub fn tree(executable: &Path) -> PathBuf {
    let Some(dir) = executable.parent().filter(|d| *d != Path::new("/")) else {
        return executable.to_path_buf();
    };
    let in_bin = matches!(
        dir.file_name().and_then(|n| n.to_str()),
        Some("bin" | "sbin")
    );
    match dir.parent() {
        Some(up) if in_bin && up != Path::new("/") => up.to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// The policy for one engine start: the system's libraries and the engine's own trees (its program, the
/// program's resolved target, absolute paths among the arguments before its own such as the diffusers runner,
/// its install directory) to read; the model's files in the store (weights file or bundle directory, chat
/// template, projector, speculative decoding's draft model; nothing else of the store) to read; its private
/// directory and `/dev/shm` to write; and the configured extras.
pub fn policy(f: &EngineFiles<'_>) -> Policy {
    let mut read: Vec<PathBuf> = SYSTEM_READ
        .iter()
        .chain(ETC_READ)
        .map(PathBuf::from)
        .collect();
    read.push(tree(&f.command.program));
    if let Some(resolved) = f.program_resolved {
        read.push(tree(resolved));
    }
    for arg in &f.command.prefix {
        let path = Path::new(arg);
        if path.is_absolute() {
            read.push(
                path.parent()
                    .map_or_else(|| path.to_path_buf(), Path::to_path_buf),
            );
        }
    }
    read.push(f.install_dir.to_path_buf());
    read.push(f.launch.model_path.clone());
    read.extend(f.launch.chat_template.iter().cloned());
    read.extend(f.launch.mmproj.iter().cloned());
    read.extend(f.launch.draft.iter().map(|d| d.path.clone()));
    read.extend(f.config.read.iter().cloned());
    let mut write = vec![f.private.to_path_buf()];
    write.extend(SHARED_WRITE.iter().map(PathBuf::from));
    write.extend(f.config.write.iter().cloned());
    let mut devices: Vec<PathBuf> = DEVICES.iter().map(PathBuf::from).collect();
    devices.extend(f.gpu_devices.iter().cloned());
    for list in [&mut read, &mut write, &mut devices] {
        dedup(list);
    }
    Policy {
        read,
        write,
        devices,
    }
}

/// Keeps the first of each path, in order.
fn dedup(list: &mut Vec<PathBuf>) {
    let mut seen = std::collections::HashSet::new();
    list.retain(|p| seen.insert(p.clone()));
}

/// The prefix of a runner's private directory: `dmr-engine-<supervisor pid>-`, so that a supervisor can tell the
/// directories a killed one left behind.
pub fn private_prefix(supervisor: u32) -> String {
    format!("dmr-engine-{supervisor}-")
}

/// The supervisor whose runner made a private directory called `name`, if it is one.
pub fn private_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("dmr-engine-")?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

/// A file's owner and mode bits, as `stat` gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Read permission, in the `rwx` bits of one class.
pub const READ: u32 = 4;
/// Execute (search, on a directory) permission.
pub const EXECUTE: u32 = 1;

/// Whether `uid`:`gid` (no supplementary groups: an engine runs without them) has `want` on `node`.
pub fn permits(node: Node, uid: u32, gid: u32, want: u32) -> bool {
    let bits = if node.uid == uid {
        node.mode >> 6
    } else if node.gid == gid {
        node.mode >> 3
    } else {
        node.mode
    } & 0o7;
    bits & want == want
}

/// Why `uid`:`gid` cannot reach the last entry of `chain` with `want`, if it cannot. `chain` is each directory
/// from `/` down, then the path itself (symbolic links resolved).
pub fn unreachable(chain: &[(PathBuf, Node)], uid: u32, gid: u32, want: u32) -> Option<String> {
    let (last, dirs) = chain.split_last()?;
    for (dir, node) in dirs {
        if !permits(*node, uid, gid, EXECUTE) {
            return Some(format!(
                "{} cannot be searched (mode {:o}, owner {}:{})",
                dir.display(),
                node.mode & 0o7777,
                node.uid,
                node.gid
            ));
        }
    }
    let (path, node) = last;
    (!permits(*node, uid, gid, want)).then(|| {
        format!(
            "{} cannot be {} (mode {:o}, owner {}:{})",
            path.display(),
            if want & EXECUTE != 0 {
                "executed"
            } else {
                "read"
            },
            node.mode & 0o7777,
            node.uid,
            node.gid
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::{llamacpp, Mode};

    fn launch(model_path: &str) -> LaunchSpec {
        LaunchSpec {
            model_name: "ai/tiny".into(),
            engine: llamacpp::ENGINE,
            model_path: model_path.into(),
            chat_template: Some("/store/blobs/sha256/tmpl".into()),
            mmproj: None,
            mode: Mode::Completion,
            context_size: 0,
            runtime_flags: Vec::new(),
            keep_alive: crate::config::KeepAlive::Forever,
            pinned: false,
            vllm: Default::default(),
            draft: Some(crate::engines::speculative::Draft {
                name: "ai/small".into(),
                model_id: "sha256:small".into(),
                path: "/store/blobs/sha256/draft".into(),
                num_tokens: None,
                min_acceptance_rate: None,
            }),
        }
    }

    fn config() -> SandboxConfig {
        SandboxConfig {
            enabled: true,
            user: None,
            read: vec!["/opt/cuda".into()],
            write: vec!["/srv/cache".into()],
        }
    }

    #[test]
    fn an_executable_s_tree_is_above_its_bin_and_never_the_root() {
        for (exe, tree_) in [
            ("/opt/llama/bin/llama-server", "/opt/llama"),
            (
                "/root/.pyenv/versions/3.11.7/bin/python3.11",
                "/root/.pyenv/versions/3.11.7",
            ),
            ("/srv/engines/llama-server", "/srv/engines"),
            ("/bin/llama-server", "/bin"),
            ("/usr/bin/llama-server", "/usr"),
            ("/llama-server", "/llama-server"),
        ] {
            assert_eq!(tree(Path::new(exe)), PathBuf::from(tree_), "{exe}");
        }
    }

    #[test]
    fn a_gguf_engine_reads_its_own_blobs_and_tree_and_writes_only_its_private_dir() {
        let command = EngineCommand {
            program: "/data/engines/llama.cpp/0.3/bin/llama-server".into(),
            prefix: Vec::new(),
        };
        let spec = launch("/store/blobs/sha256/weights");
        let p = policy(&EngineFiles {
            command: &command,
            program_resolved: Some(Path::new("/data/engines/llama.cpp/0.3/bin/llama-server")),
            install_dir: Path::new("/data/engines/llama.cpp"),
            launch: &spec,
            private: Path::new("/tmp/dmr-engine-x"),
            gpu_devices: &["/dev/nvidia0".into(), "/dev/nvidiactl".into()],
            config: &config(),
        });
        for allowed in [
            "/usr",
            "/etc/ld.so.cache",
            "/etc/ssl",
            "/proc",
            "/sys",
            "/data/engines/llama.cpp/0.3",
            "/data/engines/llama.cpp",
            "/store/blobs/sha256/weights",
            "/store/blobs/sha256/tmpl",
            "/store/blobs/sha256/draft",
            "/opt/cuda",
        ] {
            assert!(
                p.read.contains(&PathBuf::from(allowed)),
                "{allowed}: {:?}",
                p.read
            );
        }
        assert_eq!(
            p.write,
            [
                PathBuf::from("/tmp/dmr-engine-x"),
                "/dev/shm".into(),
                "/srv/cache".into()
            ]
        );
        assert!(p.devices.contains(&"/dev/null".into()));
        assert!(p.devices.contains(&"/dev/nvidia0".into()));
        // Nothing else of the store, nothing of /etc beyond the list, no home, no /tmp.
        for denied in [
            "/store",
            "/store/blobs",
            "/store/blobs/sha256",
            "/etc",
            "/tmp",
            "/root",
            "/",
        ] {
            assert!(!p.read.contains(&PathBuf::from(denied)), "{denied}");
            assert!(!p.write.contains(&PathBuf::from(denied)), "{denied}");
        }
        let n = p.read.len();
        let mut unique = p.read.clone();
        unique.dedup();
        assert_eq!(unique.len(), n, "no path twice");
    }

    #[test]
    fn a_venv_python_reads_its_venv_its_base_prefix_and_its_runner_s_directory() {
        let command = EngineCommand {
            program: "/srv/diffusers/bin/python".into(),
            prefix: vec!["/srv/runner/runner.py".into(), "-u".into()],
        };
        let spec = launch("/store/bundles/sha256/abc/model");
        let p = policy(&EngineFiles {
            command: &command,
            program_resolved: Some(Path::new("/root/.pyenv/versions/3.11.7/bin/python3.11")),
            install_dir: Path::new("/data/engines/diffusers"),
            launch: &spec,
            private: Path::new("/tmp/p"),
            gpu_devices: &[],
            config: &config(),
        });
        for allowed in [
            "/srv/diffusers",
            "/root/.pyenv/versions/3.11.7",
            "/srv/runner",
            "/store/bundles/sha256/abc/model",
        ] {
            assert!(
                p.read.contains(&PathBuf::from(allowed)),
                "{allowed}: {:?}",
                p.read
            );
        }
        assert!(!p.read.contains(&PathBuf::from("/store/bundles/sha256")));
    }

    #[test]
    fn a_private_directory_names_its_supervisor() {
        let name = format!("{}a1B2c3", private_prefix(4242));
        assert_eq!(private_owner(&name), Some(4242));
        for other in [
            "dmr-engine-x-1",
            "dmr-engine-12",
            "tmp.abc",
            "dmr-engine--3",
        ] {
            assert_eq!(private_owner(other), None, "{other}");
        }
    }

    fn node(mode: u32, uid: u32, gid: u32) -> Node {
        Node { mode, uid, gid }
    }

    #[test]
    fn permission_bits_follow_owner_then_group_then_others() {
        assert!(permits(node(0o700, 5, 5), 5, 9, READ | EXECUTE));
        assert!(!permits(node(0o700, 0, 0), 5, 5, EXECUTE));
        assert!(permits(node(0o750, 0, 5), 7, 5, EXECUTE));
        // The owner's bits decide for the owner, even when others may.
        assert!(!permits(node(0o077, 5, 0), 5, 5, READ));
        assert!(permits(node(0o755, 0, 0), 65534, 65534, READ | EXECUTE));
        assert!(!permits(node(0o711, 0, 0), 65534, 65534, READ));
    }

    #[test]
    fn a_path_under_a_private_home_is_unreachable_and_says_which_directory() {
        let chain = vec![
            ("/".into(), node(0o755, 0, 0)),
            ("/root".into(), node(0o700, 0, 0)),
            ("/root/bin".into(), node(0o755, 0, 0)),
            ("/root/bin/llama-server".into(), node(0o755, 0, 0)),
        ];
        let why = unreachable(&chain, 65534, 65534, EXECUTE).unwrap();
        assert!(
            why.starts_with("/root cannot be searched (mode 700"),
            "{why}"
        );
        assert_eq!(unreachable(&chain, 0, 0, EXECUTE), None);
        let readable = vec![
            ("/".into(), node(0o755, 0, 0)),
            ("/srv".into(), node(0o711, 0, 0)),
            ("/srv/model.gguf".into(), node(0o644, 0, 0)),
        ];
        assert_eq!(unreachable(&readable, 65534, 65534, READ), None);
        let private_file = vec![
            ("/".into(), node(0o755, 0, 0)),
            ("/srv/model.gguf".into(), node(0o600, 0, 0)),
        ];
        let why = unreachable(&private_file, 65534, 65534, READ).unwrap();
        assert!(why.contains("cannot be read"), "{why}");
    }
}
