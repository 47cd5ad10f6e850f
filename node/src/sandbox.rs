//! Running user code as an unprivileged user when the daemon is root.
//!
//! A node daemon running as root starts its workers, and the pip that builds
//! requirement environments, as `--worker-user` (`nobody` unless told
//! otherwise). File permissions then keep user code away from the node's
//! credentials (`identity.json` is 0600 and owned by root), from other users'
//! files, and from anything that needs root.
//!
//! What the user needs often lives where that user cannot go: a Python under
//! `/root/.pyenv`, the `rh-node` executable under a root-only build folder.
//! Each sandboxed process therefore gets a private mount namespace in which
//! every directory it cannot traverse on the way to what it needs (`/root`,
//! mode 0700) is covered by an empty tmpfs, and only the needed paths are
//! bound back at their own addresses. So the interpreter, the bundle and the
//! requirement environment keep their absolute paths, and nothing else under
//! the covered folder is visible, whatever its permissions.
//!
//! Everything is prepared in the daemon (paths as C strings, the folders
//! to create), so the part that runs between `fork` and `exec` makes system
//! calls only and allocates nothing.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};

/// The user that runs workers and pip, when it is not the daemon's own.
#[derive(Debug, Clone)]
pub struct WorkerUser {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    /// `HOME` for its processes: private to that user, kept between calls.
    pub home: PathBuf,
}

impl WorkerUser {
    /// Which user workers run as, from `--worker-user`: a user name, or
    /// `uid[:gid]`. Empty means `nobody` when the daemon is root, and the
    /// daemon's own user otherwise; `root` (or the daemon's own user) keeps
    /// workers as the daemon. The user's home is made under `work_dir`.
    pub fn resolve(spec: &str, work_dir: &Path) -> anyhow::Result<Option<WorkerUser>> {
        let euid = Uid::effective();
        let spec = match spec.trim() {
            "" if euid.is_root() => "nobody",
            "" => return Ok(None),
            other => other,
        };
        let (name, uid, gid) = if let Some((uid, gid)) = parse_ids(spec) {
            (spec.to_owned(), uid, gid.unwrap_or(Gid::from_raw(uid.as_raw())))
        } else {
            let user = nix::unistd::User::from_name(spec)
                .with_context(|| format!("cannot look up the worker user `{spec}`"))?
                .with_context(|| format!("--worker-user: there is no user `{spec}` on this machine"))?;
            (user.name, user.uid, user.gid)
        };
        if uid == euid {
            return Ok(None);
        }
        if !euid.is_root() {
            anyhow::bail!("--worker-user {spec}: only a node daemon running as root can run workers as another user");
        }
        let home = work_dir.join("worker-home");
        std::fs::create_dir_all(&home).with_context(|| format!("cannot create {}", home.display()))?;
        nix::unistd::chown(&home, Some(uid), Some(gid)).with_context(|| format!("cannot chown {}", home.display()))?;
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(Some(WorkerUser { name, uid, gid, home }))
    }

    /// Prepares a sandbox in which `exposed` (files or folders) are reachable.
    pub fn jail(&self, exposed: &[&Path]) -> anyhow::Result<Jail> {
        let mut binds: Vec<Bind> = Vec::new();
        let mut covers: Vec<PathBuf> = Vec::new();
        let exposed = exposed.iter().copied().chain([self.home.as_path()]);
        for path in exposed {
            let path = std::fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))?;
            let Some(blocked) = first_blocked_ancestor(&path, self.uid, self.gid) else { continue };
            if binds.iter().any(|b| b.target == path) {
                continue;
            }
            let skeleton = path
                .ancestors()
                .skip(1)
                .take_while(|a| a.starts_with(&blocked) && *a != blocked)
                .map(Path::to_path_buf)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .map(|dir| c_path(&dir))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if !covers.contains(&blocked) {
                covers.push(blocked.clone());
            }
            binds.push(Bind { c_target: c_path(&path)?, target: path.clone(), skeleton, is_dir: path.is_dir() });
        }
        if binds.len() > MAX_BINDS {
            anyhow::bail!("a sandbox binds at most {MAX_BINDS} paths");
        }
        // Outer folders first, so a cover never hides a bind made before it.
        covers.sort_by_key(|c| c.components().count());
        Ok(Jail {
            uid: self.uid,
            gid: self.gid,
            covers: covers.iter().map(|c| c_path(c)).collect::<anyhow::Result<_>>()?,
            binds,
        })
    }

    /// The environment a sandboxed process gets on top of the daemon's (scrubbed) one.
    pub fn env(&self) -> [(&'static str, std::ffi::OsString); 3] {
        [
            ("HOME", self.home.clone().into_os_string()),
            ("USER", self.name.clone().into()),
            ("LOGNAME", self.name.clone().into()),
        ]
    }
}

/// `uid` or `uid:gid`.
fn parse_ids(spec: &str) -> Option<(Uid, Option<Gid>)> {
    let (uid, gid) = match spec.split_once(':') {
        Some((uid, gid)) => (uid, Some(gid)),
        None => (spec, None),
    };
    let uid = Uid::from_raw(uid.parse().ok()?);
    let gid = match gid {
        Some(gid) => Some(Gid::from_raw(gid.parse().ok()?)),
        None => None,
    };
    Some((uid, gid))
}

fn c_path(path: &Path) -> anyhow::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).with_context(|| format!("{} contains a NUL", path.display()))
}

/// The outermost ancestor of `path` (not `path` itself) that `uid`/`gid` may not traverse.
fn first_blocked_ancestor(path: &Path, uid: Uid, gid: Gid) -> Option<PathBuf> {
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    ancestors.into_iter().find(|dir| !may_traverse(dir, uid, gid)).map(Path::to_path_buf)
}

fn may_traverse(dir: &Path, uid: Uid, gid: Gid) -> bool {
    let Ok(meta) = std::fs::metadata(dir) else { return false };
    let mode = meta.mode();
    if meta.uid() == uid.as_raw() {
        mode & 0o100 != 0
    } else if meta.gid() == gid.as_raw() {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// One needed path, bound back over a cover.
struct Bind {
    target: PathBuf,
    c_target: CString,
    /// Folders between the cover and the target, outermost first.
    skeleton: Vec<CString>,
    is_dir: bool,
}

/// Most paths one sandbox binds back.
const MAX_BINDS: usize = 16;

/// `/proc/self/fd/<fd>` as a C string in `buf`, without allocating.
fn fd_path(fd: i32, buf: &mut [u8; 32]) -> &std::ffi::CStr {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (fd.unsigned_abs(), 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[PREFIX.len() + i] = digits[len - 1 - i];
    }
    buf[PREFIX.len() + len] = 0;
    std::ffi::CStr::from_bytes_until_nul(&buf[..]).expect("NUL written above")
}

/// A prepared sandbox: apply it in the child with [`Jail::enter`].
pub struct Jail {
    uid: Uid,
    gid: Gid,
    covers: Vec<CString>,
    binds: Vec<Bind>,
}

impl Jail {
    /// Makes the mounts and drops to the worker user. Runs between `fork`
    /// and `exec`: system calls only, no allocation.
    pub fn enter(&self) -> std::io::Result<()> {
        let no_path: Option<&[u8]> = None;
        unshare(CloneFlags::CLONE_NEWNS)?;
        // Nothing done here leaks back into the daemon's namespace.
        mount(no_path, c"/", no_path, MsFlags::MS_REC | MsFlags::MS_PRIVATE, no_path)?;
        // Hold each needed path before the covers hide it. (Opened here, not
        // in the daemon: a bind's source must be a mount of this namespace.)
        let mut held = [-1; MAX_BINDS];
        for (slot, bind) in held.iter_mut().zip(&self.binds) {
            *slot = open(bind.c_target.as_c_str(), OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())?;
        }
        for cover in &self.covers {
            mount(
                Some(c"tmpfs"),
                cover.as_c_str(),
                Some(c"tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(c"mode=0755,size=1m"),
            )?;
            let cover_path = Path::new(std::ffi::OsStr::from_bytes(cover.to_bytes()));
            for (bind, fd) in self.binds.iter().zip(held).filter(|(b, _)| b.target.starts_with(cover_path)) {
                for dir in &bind.skeleton {
                    match nix::unistd::mkdir(dir.as_c_str(), Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                        Err(err) => return Err(err.into()),
                    }
                }
                if bind.is_dir {
                    match nix::unistd::mkdir(bind.c_target.as_c_str(), Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                        Err(err) => return Err(err.into()),
                    }
                } else {
                    let file = open(
                        bind.c_target.as_c_str(),
                        OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o644),
                    )?;
                    nix::unistd::close(file)?;
                }
                let mut source = [0u8; 32];
                mount(
                    Some(fd_path(fd, &mut source)),
                    bind.c_target.as_c_str(),
                    no_path,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    no_path,
                )?;
            }
        }
        for fd in held.into_iter().filter(|fd| *fd >= 0) {
            nix::unistd::close(fd)?;
        }
        nix::unistd::setgroups(&[self.gid])?;
        nix::unistd::setgid(self.gid)?;
        nix::unistd::setuid(self.uid)?;
        // No set-user-ID program (sudo, su) can give the privileges back.
        nix::sys::prctl::set_no_new_privs()?;
        Ok(())
    }

    /// Arranges for `command`'s process to enter this sandbox. Keep `self`
    /// alive until the process has been spawned.
    pub fn apply(self: &std::sync::Arc<Self>, command: &mut tokio::process::Command) {
        let jail = self.clone();
        #[allow(unsafe_code)]
        // SAFETY: `enter` only makes system calls on data prepared before the fork.
        unsafe {
            command.pre_exec(move || jail.enter());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As root: a sandboxed Python runs as `nobody`, sees its own prefix
    /// under a root-only folder, and nothing else there.
    #[test]
    fn fd_paths_are_written_without_allocating() {
        let mut buf = [0u8; 32];
        assert_eq!(fd_path(7, &mut buf).to_str().unwrap(), "/proc/self/fd/7");
        assert_eq!(fd_path(1234, &mut buf).to_str().unwrap(), "/proc/self/fd/1234");
    }

    #[tokio::test]
    async fn a_sandboxed_process_runs_unprivileged_and_sees_only_what_it_needs() {
        if !Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let work = std::env::temp_dir().join(format!("rh-sandbox-{}", std::process::id()));
        let secret_dir = work.join("private");
        std::fs::create_dir_all(secret_dir.join("shown")).unwrap();
        std::fs::set_permissions(&secret_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        std::fs::write(secret_dir.join("secret"), "s").unwrap();
        std::fs::write(secret_dir.join("shown/data"), "d").unwrap();
        let user = WorkerUser::resolve("", &work).unwrap().expect("root daemons get a worker user");
        assert_eq!(user.name, "nobody");
        let python = PathBuf::from(env!("RH_PYTHON_EXECUTABLE"));
        let prefix = python.parent().unwrap().parent().unwrap();
        let shown = secret_dir.join("shown");
        let jail = std::sync::Arc::new(user.jail(&[prefix, &shown]).unwrap());
        let script = format!(
            "import os; print(os.getuid(), open({:?}).read(), os.path.exists({:?}), sorted(os.listdir({:?})))",
            shown.join("data").display().to_string(),
            secret_dir.join("secret").display().to_string(),
            secret_dir.display().to_string(),
        );
        let mut command = tokio::process::Command::new(&python);
        command.args(["-c", &script]).envs(user.env());
        jail.apply(&mut command);
        let output = command.output().await.unwrap();
        let _ = std::fs::remove_dir_all(&work);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "65534 d False ['shown']");
    }
}
