//! A private PostgreSQL server run from the machine's own server binaries,
//! for `rh-gateway dev` and the test harness.
//!
//! `initdb` and `postgres` refuse to run as root, so under root the cluster is
//! owned by, and run as, the unprivileged `postgres` user.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why the embedded server could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No `initdb`/`pg_ctl` on PATH or in /usr/lib/postgresql/*/bin.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin: \
         install them with `apt-get install postgresql-15` (Debian/Ubuntu), or set DATABASE_URL to use an existing server"
    )]
    NotInstalled,
    /// Running as root with no unprivileged user to run the server as.
    #[error("running as root, but there is no `postgres` user to run the server as: create one (`useradd -r postgres`) or run as another user")]
    NoServerUser,
    /// The server user cannot reach the data directory.
    #[error(
        "the `postgres` user cannot write to {0}: make its parent folders searchable (chmod o+x) \
         or set DATABASE_URL to use an existing server"
    )]
    Unreachable(PathBuf),
    /// A PostgreSQL command failed.
    #[error("`{command}` failed: {output}")]
    Command { command: String, output: String },
    /// A file or process operation failed.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// How to run the server.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Durable commits. Turn off only for throwaway test clusters.
    pub durable: bool,
}

/// A running private PostgreSQL server.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    data_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<&'static str>,
    port: u16,
    /// The superuser's password: every connection authenticates with it
    /// (scram-sha-256), so other local users cannot walk in over loopback.
    password: String,
}

impl EmbeddedPostgres {
    /// Finds the directory holding `initdb` and `pg_ctl`: `RH_PG_BINDIR` if
    /// set, else the first on PATH, else the newest /usr/lib/postgresql/*/bin.
    pub fn find_bin_dir() -> Result<PathBuf, Error> {
        let has_binaries = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
        if let Some(dir) = std::env::var_os("RH_PG_BINDIR") {
            let dir = PathBuf::from(dir);
            return if has_binaries(&dir) { Ok(dir) } else { Err(Error::NotInstalled) };
        }
        let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
        if let Some(dir) = on_path.into_iter().find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        {
            return Ok(dir);
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").is_file().then_some((version, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, dir)| dir).ok_or(Error::NotInstalled)
    }

    /// Initialises `data_dir` if it is new, then starts the server on a free
    /// loopback port (TCP only, trust auth for local connections).
    /// A server left running in `data_dir` by an earlier process is restarted.
    pub fn start(data_dir: &Path, options: Options) -> Result<EmbeddedPostgres, Error> {
        let bin_dir = Self::find_bin_dir()?;
        let run_as = if is_root() {
            let exists = Command::new("id").args(["-u", "postgres"]).output().is_ok_and(|o| o.status.success());
            if !exists {
                return Err(Error::NoServerUser);
            }
            Some("postgres")
        } else {
            None
        };
        let data_dir = absolute(data_dir)?;
        let password = read_or_create_password(&password_file(&data_dir))?;
        let mut pg = EmbeddedPostgres { data_dir, bin_dir, run_as, port: 0, password };
        if !pg.data_dir.join("PG_VERSION").is_file() {
            pg.init()?;
        }
        pg.require_password()?;
        if pg.pg_ctl(&["status"]).is_ok() {
            pg.pg_ctl(&["-m", "fast", "-w", "stop"])?;
        }
        let mut last_error = None;
        for _ in 0..3 {
            pg.port = free_port()?;
            let mut settings = format!(
                "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=200",
                pg.port
            );
            if !options.durable {
                settings.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
            }
            let log = pg.data_dir.join("server.log");
            let log = log.to_string_lossy();
            match pg.pg_ctl(&["-w", "-t", "60", "-l", &log, "-o", &settings, "start"]) {
                Ok(_) => return Ok(pg),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.expect("three attempts were made"))
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database`, as the superuser `postgres`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres:{}@127.0.0.1:{}/{database}", self.password, self.port)
    }

    /// Stops the server (fast shutdown: clients are disconnected, data is kept).
    pub fn stop(&self) -> Result<(), Error> {
        if self.pg_ctl(&["status"]).is_err() {
            return Ok(());
        }
        self.pg_ctl(&["-m", "fast", "-w", "stop"]).map(|_| ())
    }

    fn init(&self) -> Result<(), Error> {
        std::fs::create_dir_all(&self.data_dir)
            .map_err(|source| Error::Io { context: format!("cannot create {}", self.data_dir.display()), source })?;
        if let Some(user) = self.run_as {
            run(Command::new("chown").arg(format!("{user}:")).arg(&self.data_dir))?;
            let reachable = Command::new("runuser")
                .args(["-u", user, "--", "test", "-w"])
                .arg(&self.data_dir)
                .status()
                .is_ok_and(|s| s.success());
            if !reachable {
                return Err(Error::Unreachable(self.data_dir.clone()));
            }
        }
        let data_dir = self.data_dir.to_string_lossy();
        // initdb reads the password from a file the server user can read; it
        // lives only for the call, in a private folder.
        let scratch = std::env::temp_dir().join(format!("rh-pg-init-{}", std::process::id()));
        let io = |context: String| move |source| Error::Io { context, source };
        std::fs::create_dir_all(&scratch).map_err(io(format!("cannot create {}", scratch.display())))?;
        let pwfile = scratch.join("pw");
        write_private(&pwfile, self.password.as_bytes()).map_err(io(format!("cannot write {}", pwfile.display())))?;
        if let Some(user) = self.run_as {
            run(Command::new("chown").arg("-R").arg(format!("{user}:")).arg(&scratch))?;
        }
        let pwfile_arg = format!("--pwfile={}", pwfile.display());
        let result = run(&mut self.command(
            "initdb",
            &[
                "-D",
                &data_dir,
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                &pwfile_arg,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        ));
        let _ = std::fs::remove_dir_all(&scratch);
        result.map(|_| ())
    }

    /// A data folder made before passwords (trust auth) gets one: its
    /// `pg_hba.conf` is rewritten to scram-sha-256 and the password set on
    /// the next start, through the one trusted local connection it allows.
    fn require_password(&self) -> Result<(), Error> {
        let hba = self.data_dir.join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba)
            .map_err(|source| Error::Io { context: format!("cannot read {}", hba.display()), source })?;
        if !text.lines().any(|l| !l.trim_start().starts_with('#') && l.split_whitespace().last() == Some("trust")) {
            return Ok(());
        }
        let single = self.data_dir.to_string_lossy().to_string();
        let sql = format!("alter user postgres password '{}';", self.password.replace('\'', ""));
        let mut command = self.command("postgres", &["--single", "-D", &single, "postgres"]);
        command.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
        let mut child =
            command.spawn().map_err(|source| Error::Io { context: "cannot run postgres --single".into(), source })?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            let _ = stdin.write_all(sql.as_bytes());
        }
        let _ = child.wait();
        let rewritten: String = text
            .lines()
            .map(|l| {
                if !l.trim_start().starts_with('#') && l.split_whitespace().last() == Some("trust") {
                    format!("{} scram-sha-256\n", l.trim_end().trim_end_matches("trust").trim_end())
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        // Writing in place keeps the file's owner (the server user).
        std::fs::write(&hba, rewritten)
            .map_err(|source| Error::Io { context: format!("cannot write {}", hba.display()), source })
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<String, Error> {
        let data_dir = self.data_dir.to_string_lossy();
        let mut all = vec!["-D", &data_dir];
        all.extend_from_slice(args);
        run(&mut self.command("pg_ctl", &all))
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let program = self.bin_dir.join(program);
        let mut command = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        command.args(args).current_dir("/");
        command
    }
}

fn run(command: &mut Command) -> Result<String, Error> {
    let rendered = format!("{command:?}").replace('"', "");
    let output = command.output().map_err(|source| Error::Io { context: format!("cannot run {rendered}"), source })?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() {
        Ok(text)
    } else {
        Err(Error::Command { command: rendered, output: text.trim().to_owned() })
    }
}

/// Where the superuser's password is kept: beside the data folder, readable
/// only by whoever runs the gateway (the data folder belongs to the server user).
fn password_file(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".password");
    data_dir.with_file_name(name)
}

fn read_or_create_password(path: &Path) -> Result<String, Error> {
    if let Ok(text) = std::fs::read_to_string(path) {
        if !text.trim().is_empty() {
            return Ok(text.trim().to_owned());
        }
    }
    let password = hex::encode(rand::random::<[u8; 24]>());
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|source| Error::Io { context: format!("cannot create {}", parent.display()), source })?;
    }
    write_private(path, password.as_bytes())
        .map_err(|source| Error::Io { context: format!("cannot write {}", path.display()), source })?;
    Ok(password)
}

/// Writes `bytes` to a file only its owner can read (mode 0600).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    // An existing file keeps its mode when opened: tighten it too.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)
}

fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|source| Error::Io { context: "cannot find a free loopback port".into(), source })?;
    Ok(listener.local_addr().expect("bound").port())
}

fn absolute(path: &Path) -> Result<PathBuf, Error> {
    std::path::absolute(path).map_err(|source| Error::Io { context: format!("bad path {}", path.display()), source })
}

#[allow(unsafe_code)]
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// One throwaway server per process, for test harnesses and benchmarks:
/// `RH_TEST_DATABASE_URL` if set (as `make test` does, so all test binaries
/// share one server), else a private server in a temporary folder, stopped
/// and deleted when the process exits. Returns a connection URL with `{db}`
/// in place of the database name. The first caller's `durable` wins.
pub fn shared_server(durable: bool) -> &'static str {
    struct Shared {
        url_pattern: String,
        embedded: Option<(EmbeddedPostgres, PathBuf)>,
    }
    static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();

    extern "C" fn stop_at_exit() {
        if let Some((pg, dir)) = SHARED.get().and_then(|s| s.embedded.as_ref()) {
            let _ = pg.stop();
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    &SHARED
        .get_or_init(|| match std::env::var("RH_TEST_DATABASE_URL") {
            Ok(url) => {
                let base = url.rsplit_once('/').map(|(base, _)| base.to_owned()).unwrap_or(url);
                Shared { url_pattern: format!("{base}/{{db}}"), embedded: None }
            }
            Err(_) => {
                let dir = std::env::temp_dir().join(format!("rh-test-pg-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                let pg = EmbeddedPostgres::start(&dir, Options { durable }).expect("start a test postgres");
                // SAFETY: `stop_at_exit` is a plain function that neither unwinds nor touches thread-locals.
                #[allow(unsafe_code)]
                unsafe {
                    libc::atexit(stop_at_exit);
                }
                Shared { url_pattern: pg.url("{db}"), embedded: Some((pg, dir)) }
            }
        })
        .url_pattern
}
