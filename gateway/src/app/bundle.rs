//! Code bundles: validated, content-addressed tar.gz uploads; and named functions.

use std::io::Read;
use std::path::{Component, Path};

use sha2::{Digest, Sha256};

use super::dispatch::{is_function_ref, parse_cluster_ref, validate_requirements, MAX_FUNCTION_REF};
use super::App;
use crate::auth::Caller;
use crate::config::BundleSettings;
use crate::db::{BundleRow, FunctionRow};
use crate::{Error, Result};

/// How many bundle shas [`App::bundle_exists`] remembers before starting over.
const BUNDLES_REMEMBERED: usize = 10_000;

impl App {
    /// Validates and stores a bundle, held by the caller's project. Returns it
    /// and whether it was new.
    /// `source` says where it was packed from (kept per project; the latest upload's wins).
    pub async fn bundle_put(
        &self,
        caller: &Caller,
        data: Vec<u8>,
        source: wire::BundleSource,
    ) -> Result<(BundleRow, bool)> {
        if let Some(commit) = &source.git_commit {
            if commit.is_empty() || commit.len() > 64 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::invalid("git_commit", "`git_commit` must be a hex commit id of at most 64 digits"));
            }
        }
        if let Some(packer) = &source.packer {
            if packer.is_empty() || packer.len() > 128 || packer.chars().any(char::is_control) {
                return Err(Error::invalid("packer", "`packer` must be 1 to 128 printable characters"));
            }
        }
        let limits = self.settings.bundles.clone();
        let (data, sha256, unpacked, files) = tokio::task::spawn_blocking(move || {
            let (unpacked, files) = bundle_inspect(&data, &limits)?;
            let sha256 = hex::encode(Sha256::digest(&data));
            Ok::<_, Error>((data, sha256, unpacked, files))
        })
        .await
        .map_err(|e| Error::Internal(e.into()))??;
        let (row, new) = match self.db.bundle_get(&sha256).await? {
            Some(existing) => (existing, false),
            None => self.db.bundle_insert(&sha256, &data, unpacked as i64, files as i32).await?,
        };
        // Uploading the bytes is what lets a project use them.
        let source = (source != wire::BundleSource::default())
            .then(|| serde_json::to_value(&source))
            .transpose()
            .map_err(|e| Error::Internal(e.into()))?;
        self.db.bundle_hold(&caller.project, &sha256, source.as_ref()).await?;
        Ok((row, new))
    }

    /// True if `project` holds bundle `sha256`. Bundles are immutable and
    /// never deleted, so a pair seen once is remembered and not read again.
    pub async fn bundle_held(&self, project: &str, sha256: &str) -> Result<bool> {
        let pair = (project.to_owned(), sha256.to_owned());
        if self.bundles_seen.lock().expect("bundle cache lock poisoned").contains(&pair) {
            return Ok(true);
        }
        let held = self.db.bundle_held(project, sha256).await?;
        if held {
            let mut seen = self.bundles_seen.lock().expect("bundle cache lock poisoned");
            if seen.len() >= BUNDLES_REMEMBERED {
                seen.clear();
            }
            seen.insert(pair);
        }
        Ok(held)
    }

    /// A bundle's bytes: for a node, only a bundle a dispatch running on it
    /// uses; for anyone else, only one their project holds.
    pub async fn bundle_data(&self, caller: &Caller, sha256: &str) -> Result<Vec<u8>> {
        let not_found = || Error::NotFound { kind: "bundle", id: sha256.to_owned() };
        let allowed = match caller.node() {
            Some(binding) => match self.node_id_of(caller, binding).await? {
                Some(node_id) => self.db.bundle_placed_on(sha256, node_id).await?,
                None => false,
            },
            None => self.bundle_held(&caller.project, sha256).await?,
        };
        if !allowed {
            return Err(not_found());
        }
        self.db.bundle_data(sha256).await?.ok_or_else(not_found)
    }

    /// Registers (or replaces) a named function in the caller's project.
    pub async fn function_register(&self, caller: &Caller, req: wire::RegisterFunction) -> Result<FunctionRow> {
        if req.name.is_empty() || req.name.len() > 128 || req.name.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Error::invalid("name", "`name` must be 1 to 128 characters with no spaces"));
        }
        if !is_function_ref(&req.function) || req.function.len() > MAX_FUNCTION_REF {
            return Err(Error::invalid(
                "function",
                format!("`function` must be `module:qualname` of at most {MAX_FUNCTION_REF} characters, e.g. `pipeline.train:fit`"),
            ));
        }
        if let Some(cluster) = &req.cluster {
            parse_cluster_ref(&caller.project, cluster)?;
        }
        validate_requirements(&req.requirements)?;
        if let Some(sha) = &req.bundle {
            if !self.bundle_held(&caller.project, sha).await? {
                return Err(Error::invalid(
                    "bundle",
                    format!("this project has no bundle with sha256 `{sha}`; upload it first with POST /v1/bundles"),
                ));
            }
        }
        let row = FunctionRow {
            project: caller.project.clone(),
            name: req.name,
            function_ref: req.function,
            bundle: req.bundle,
            requirements: serde_json::json!(req.requirements),
            cluster: req.cluster,
            created_by: caller.sub.clone(),
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        };
        self.db.function_upsert(&row).await
    }

    /// One named function of the caller's project.
    pub async fn function_get(&self, caller: &Caller, name: &str) -> Result<FunctionRow> {
        self.db
            .function_get(&caller.project, name)
            .await?
            .ok_or_else(|| Error::NotFound { kind: "function", id: name.to_owned() })
    }

    /// The caller's project's named functions.
    pub async fn function_list(&self, caller: &Caller) -> Result<Vec<FunctionRow>> {
        self.db.function_list(&caller.project).await
    }
}

/// Checks that `data` is a gzip-compressed tar whose entries all stay inside
/// the folder it unpacks into, within the size and count limits. Returns the
/// unpacked size and the number of entries.
pub fn bundle_inspect(data: &[u8], limits: &BundleSettings) -> Result<(u64, u32)> {
    let bad = |message: String| Error::invalid("bundle", message);
    if !data.starts_with(&[0x1f, 0x8b]) {
        return Err(bad("the bundle is not gzip-compressed: send a .tar.gz".into()));
    }
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(data));
    let entries = archive.entries().map_err(|e| bad(format!("the bundle is not a readable tar.gz: {e}")))?;
    let (mut unpacked, mut files) = (0u64, 0u32);
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("the bundle is not a readable tar.gz: {e}")))?;
        let path = entry.path().map_err(|e| bad(format!("an entry has an unreadable path: {e}")))?.into_owned();
        if !stays_inside(&path) {
            return Err(bad(format!("entry `{}` would unpack outside the bundle folder", path.display())));
        }
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry.link_name().ok().flatten().map(|t| t.into_owned());
            let inside = target.as_ref().is_some_and(|t| {
                let base = path.parent().unwrap_or(Path::new(""));
                stays_inside(&base.join(t))
            });
            if !inside {
                return Err(bad(format!("link `{}` points outside the bundle folder", path.display())));
            }
        } else if !(kind.is_file()
            || kind.is_dir()
            || kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname())
        {
            return Err(bad(format!("entry `{}` is not a file, folder or link", path.display())));
        }
        files += 1;
        if files > limits.max_files {
            return Err(bad(format!("the bundle has more than {} entries", limits.max_files)));
        }
        // Count real bytes, not the header's claim, so a lying header cannot slip a bomb through.
        let mut sink = std::io::sink();
        let budget = limits.max_unpacked_bytes.saturating_sub(unpacked) + 1;
        let read = std::io::copy(&mut (&mut entry).take(budget), &mut sink)
            .map_err(|e| bad(format!("the bundle is not a readable tar.gz: {e}")))?;
        unpacked += read;
        if unpacked > limits.max_unpacked_bytes {
            return Err(bad(format!("the bundle unpacks to more than {} bytes", limits.max_unpacked_bytes)));
        }
    }
    if files == 0 {
        return Err(bad("the bundle is empty".into()));
    }
    Ok((unpacked, files))
}

/// True if `path`, resolved lexically, stays within its root.
fn stays_inside(path: &Path) -> bool {
    let mut depth = 0i32;
    for component in path.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        let tar = builder.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap()
    }

    fn file(builder: &mut tar::Builder<Vec<u8>>, path: &str, body: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // Write the name bytes directly: `set_path` refuses `..`, and hostile archives do not ask.
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        builder.append(&header, body).unwrap();
    }

    #[test]
    fn a_plain_project_is_accepted_with_its_size() {
        let data = tar_gz(|b| {
            file(b, "pkg/__init__.py", b"");
            file(b, "pkg/train.py", b"def fit():\n    return 1\n");
        });
        assert_eq!(bundle_inspect(&data, &BundleSettings::default()).unwrap(), (24, 2));
    }

    #[test]
    fn path_traversal_is_refused() {
        for path in ["../evil.py", "pkg/../../evil.py", "/etc/cron.d/evil"] {
            let data = tar_gz(|b| file(b, path, b"x"));
            let err = bundle_inspect(&data, &BundleSettings::default()).unwrap_err();
            assert!(err.to_string().contains("outside"), "{path}: {err}");
        }
    }

    #[test]
    fn a_link_out_of_the_bundle_is_refused() {
        let data = tar_gz(|b| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            b.append_link(&mut header, "pkg/passwd", "../../etc/passwd").unwrap();
        });
        let err = bundle_inspect(&data, &BundleSettings::default()).unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
    }

    #[test]
    fn something_that_is_not_a_tar_gz_is_refused() {
        assert!(bundle_inspect(b"hello", &BundleSettings::default()).is_err());
        let gz_of_garbage = {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, &[7u8; 1000]).unwrap();
            gz.finish().unwrap()
        };
        assert!(bundle_inspect(&gz_of_garbage, &BundleSettings::default()).is_err());
    }

    #[test]
    fn a_bundle_that_unpacks_too_large_is_refused() {
        let data = tar_gz(|b| file(b, "big.bin", &vec![0u8; 10_000]));
        let limits = BundleSettings { max_unpacked_bytes: 5_000, ..BundleSettings::default() };
        let err = bundle_inspect(&data, &limits).unwrap_err();
        assert!(err.to_string().contains("unpacks to more than"), "{err}");
    }
}
