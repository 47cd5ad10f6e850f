//! Packing a project folder into a code bundle: deterministic (sorted entries,
//! fixed mtimes and owners), honouring `.gitignore`, and leaving out
//! virtualenvs, caches and VCS folders, so unchanged code always packs to the
//! same bytes and the same sha256.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Files that mark a project's root folder.
pub const ROOT_MARKERS: [&str; 4] = [".git", "pyproject.toml", "setup.py", "requirements.txt"];

/// Folder names never packed.
const SKIPPED: [&str; 10] = [
    ".git",
    ".hg",
    ".venv",
    "venv",
    "__pycache__",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    "node_modules",
    ".rh",
];

/// A packed project.
#[derive(Debug, Clone)]
pub struct Packed {
    pub root: PathBuf,
    pub data: Vec<u8>,
    pub sha256: String,
    pub files: usize,
    /// Where it was packed from: the git commit and whether the tree was dirty, and this packer.
    pub source: wire::BundleSource,
}

/// Where the project at `root` is packed from: the commit of its git
/// repository and whether the packed folder differs from it (`None` outside
/// a repository or without `git`), and this packer's name and version.
pub fn source(root: &Path) -> wire::BundleSource {
    let git = |args: &[&str]| {
        let output = std::process::Command::new("git").arg("-C").arg(root).args(args).output().ok()?;
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let git_commit = git(&["rev-parse", "--verify", "HEAD"]).filter(|c| c.len() >= 7);
    let git_dirty = git_commit.as_ref().and_then(|_| git(&["status", "--porcelain", "--", "."])).map(|s| !s.is_empty());
    wire::BundleSource { git_commit, git_dirty, packer: Some(format!("rh-sdk {}", env!("CARGO_PKG_VERSION"))) }
}

/// The nearest folder at or above `start` holding a root marker. `start`
/// may be relative, even a bare file name (`userfns.py`, `./userfns.py`).
pub fn project_root(start: &Path) -> Option<PathBuf> {
    // Absolute first: the parent of a bare file name is "", which is no folder.
    let start = absolute(start)?;
    let start = if start.is_file() { start.parent()? } else { &start };
    start.ancestors().find(|dir| ROOT_MARKERS.iter().any(|m| dir.join(m).exists())).map(Path::to_path_buf)
}

/// The Python module a file under `root` imports as (`pkg/train.py` → `pkg.train`).
pub fn module_name(root: &Path, file: &Path) -> Option<String> {
    let file = absolute(file)?;
    let relative = file.strip_prefix(root).ok()?;
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".py")?;
    if stem != "__init__" {
        parts.push(stem.to_owned());
    }
    (!parts.is_empty()).then(|| parts.join("."))
}

/// `path` made absolute against the working directory, with `.` and `..`
/// resolved lexically (symlinks are left alone, as Python's imports do).
fn absolute(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in std::path::absolute(path).ok()?.components() {
        match component {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

/// Packs `root` into a tar.gz.
pub fn pack(root: &Path) -> std::io::Result<Packed> {
    let mut files = Vec::new();
    let walker = ignore::WalkBuilder::new(root)
        .hidden(false)
        .git_ignore(true)
        .git_global(false)
        .git_exclude(true)
        .require_git(false)
        .filter_entry(|entry| {
            let name = entry.file_name().to_string_lossy();
            let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
            !(is_dir && (SKIPPED.contains(&name.as_ref()) || entry.path().join("pyvenv.cfg").exists()))
                && !name.ends_with(".pyc")
        })
        .build();
    for entry in walker {
        let entry = entry.map_err(std::io::Error::other)?;
        if entry.file_type().is_some_and(|t| t.is_file()) {
            let relative = entry.path().strip_prefix(root).map_err(std::io::Error::other)?.to_path_buf();
            files.push(relative);
        }
    }
    files.sort();
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    for relative in &files {
        let path = root.join(relative);
        let data = std::fs::read(&path)?;
        let executable = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(&path)?.permissions().mode() & 0o111 != 0
        };
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(if executable { 0o755 } else { 0o644 });
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, relative, data.as_slice())?;
    }
    let tar = builder.into_inner()?;
    let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar)?;
    let data = gz.finish()?;
    let sha256 = hex::encode(Sha256::digest(&data));
    Ok(Packed { root: root.to_path_buf(), data, sha256, files: files.len(), source: source(root) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rh-pack-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("pkg/__pycache__")).unwrap();
        std::fs::create_dir_all(dir.join(".venv/lib")).unwrap();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("pyproject.toml"), "[project]\nname='p'\n").unwrap();
        std::fs::write(dir.join("pkg/__init__.py"), "").unwrap();
        std::fs::write(dir.join("pkg/train.py"), "def fit(): return 1\n").unwrap();
        std::fs::write(dir.join("pkg/__pycache__/train.cpython-311.pyc"), "x").unwrap();
        std::fs::write(dir.join(".venv/lib/site.py"), "x").unwrap();
        std::fs::write(dir.join(".gitignore"), "data/\n").unwrap();
        std::fs::write(dir.join("data/big.csv"), "1,2,3\n").unwrap();
        dir
    }

    fn names(data: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(data));
        archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect()
    }

    #[test]
    fn packing_is_deterministic_and_leaves_out_ignored_files_venvs_and_caches() {
        let dir = project();
        let first = pack(&dir).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.join("pkg/train.py"), "def fit(): return 1\n").unwrap(); // touched, unchanged
        let second = pack(&dir).unwrap();
        assert_eq!(first.sha256, second.sha256);
        assert_eq!(names(&first.data), [".gitignore", "pkg/__init__.py", "pkg/train.py", "pyproject.toml"]);
        std::fs::write(dir.join("pkg/train.py"), "def fit(): return 2\n").unwrap();
        assert_ne!(pack(&dir).unwrap().sha256, first.sha256);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_bare_file_name_finds_its_project_from_the_current_folder() {
        // The one test here that changes the working directory; the others use absolute paths.
        let dir = project();
        let before = std::env::current_dir().unwrap();
        std::env::set_current_dir(dir.join("pkg")).unwrap();
        let found: Vec<_> = ["train.py", "./train.py", "../pkg/train.py"]
            .iter()
            .map(|spelling| (project_root(Path::new(spelling)), module_name(&dir, Path::new(spelling))))
            .collect();
        std::env::set_current_dir(before).unwrap();
        for (root, module) in found {
            assert_eq!(root.as_deref(), Some(dir.as_path()));
            assert_eq!(module.as_deref(), Some("pkg.train"));
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_project_root_is_the_nearest_folder_with_a_marker() {
        let dir = project();
        let root = project_root(&dir.join("pkg/train.py")).unwrap();
        assert_eq!(root, dir);
        assert_eq!(module_name(&root, &dir.join("pkg/train.py")).as_deref(), Some("pkg.train"));
        assert_eq!(module_name(&root, &dir.join("pkg/__init__.py")).as_deref(), Some("pkg"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
