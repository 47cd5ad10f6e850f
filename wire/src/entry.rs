//! What a dispatch runs: its `function` text, parsed. Besides
//! `module:qualname`, it may name a program run in the bundle's folder:
//!
//! - `python path/to/script.py`: a script, with `args` as its command line;
//! - `shell <command>`: a `/bin/sh -c` command, with `args` as `$1`, `$2`, …;
//! - `notebook path/to/report.ipynb`: a notebook run top to bottom, with
//!   `kwargs` injected as parameters after its cell tagged `parameters`.
//!
//! A function reference never holds a space, so the forms cannot be confused.

/// The longest `shell` command, in bytes.
pub const MAX_SHELL_COMMAND: usize = 8192;

/// A parsed entry point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryPoint<'a> {
    Function { module: &'a str, qualname: &'a str },
    Script { path: &'a str },
    Shell { command: &'a str },
    Notebook { path: &'a str },
}

impl<'a> EntryPoint<'a> {
    /// Parses `text`, or says what is wrong with it.
    pub fn parse(text: &'a str) -> Result<EntryPoint<'a>, String> {
        let Some((kind, rest)) = text.split_once(' ') else {
            return match text.split_once(':') {
                Some((module, qualname)) if is_dotted(module) && is_dotted(qualname) => {
                    Ok(EntryPoint::Function { module, qualname })
                }
                _ => Err(format!(
                    "`function` must be `module:qualname` (e.g. `pipeline.train:fit`), `python <script.py>`, \
                     `shell <command>` or `notebook <file.ipynb>`; got `{text}`"
                )),
            };
        };
        let rest = rest.trim();
        match kind {
            "python" => {
                relative_path(rest, ".py")?;
                Ok(EntryPoint::Script { path: rest })
            }
            "notebook" => {
                relative_path(rest, ".ipynb")?;
                Ok(EntryPoint::Notebook { path: rest })
            }
            "shell" if rest.is_empty() => Err("`function`: `shell` needs a command, e.g. `shell ./prepare.sh`".into()),
            "shell" if rest.len() > MAX_SHELL_COMMAND => {
                Err(format!("a `shell` command is at most {MAX_SHELL_COMMAND} bytes"))
            }
            "shell" if rest.contains('\0') => Err("a `shell` command cannot contain a NUL".into()),
            "shell" => Ok(EntryPoint::Shell { command: rest }),
            other => Err(format!(
                "`function` `{other} …` is not an entry point: use `module:qualname`, `python <script.py>`, \
                 `shell <command>` or `notebook <file.ipynb>`"
            )),
        }
    }

    /// `script`, `shell` or `notebook` for a program; `None` for a function.
    pub fn program(&self) -> Option<(&'static str, &'a str)> {
        match *self {
            EntryPoint::Function { .. } => None,
            EntryPoint::Script { path } => Some(("script", path)),
            EntryPoint::Shell { command } => Some(("shell", command)),
            EntryPoint::Notebook { path } => Some(("notebook", path)),
        }
    }
}

/// `module.path:Qual.name`, each part a Python identifier.
pub fn is_function_ref(text: &str) -> bool {
    matches!(text.split_once(':'), Some((module, qualname)) if is_dotted(module) && is_dotted(qualname))
}

/// True for a Python identifier.
pub fn is_identifier(part: &str) -> bool {
    let mut chars = part.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_alphabetic()) && chars.all(|c| c == '_' || c.is_alphanumeric())
}

fn is_dotted(text: &str) -> bool {
    !text.is_empty() && text.split('.').all(is_identifier)
}

/// A path inside the bundle ending in `suffix`.
fn relative_path(path: &str, suffix: &str) -> Result<(), String> {
    if !path.ends_with(suffix) || path.len() <= suffix.len() {
        return Err(format!("`function`: `{path}` must name a `{suffix}` file in the bundle"));
    }
    if path.contains(char::is_whitespace) || path.contains(['\\', '\0']) {
        return Err(format!("`function`: `{path}` must be a path with no spaces or backslashes"));
    }
    if path.starts_with('/') || path.split('/').any(|part| part.is_empty() || part == "..") {
        return Err(format!("`function`: `{path}` must be a path inside the bundle (relative, with no `..`)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::EntryPoint::{self, *};

    #[test]
    fn entry_points_parse_by_their_first_word() {
        assert_eq!(EntryPoint::parse("pipeline.train:fit"), Ok(Function { module: "pipeline.train", qualname: "fit" }));
        assert_eq!(EntryPoint::parse("python scripts/train.py"), Ok(Script { path: "scripts/train.py" }));
        assert_eq!(EntryPoint::parse("notebook eda.ipynb"), Ok(Notebook { path: "eda.ipynb" }));
        assert_eq!(EntryPoint::parse("shell echo hi && ls -l"), Ok(Shell { command: "echo hi && ls -l" }));
        for bad in [
            "pipeline.train",
            "a:b:c",
            "python",
            "python ../x.py",
            "python /etc/x.py",
            "python train.txt",
            "notebook a.py",
            "shell ",
            "ruby x.rb",
            "python a b.py",
        ] {
            assert!(EntryPoint::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
