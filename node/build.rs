//! Finds the CPython the worker embeds: links it with an rpath, so `rh-node`
//! starts without LD_LIBRARY_PATH, and records its home and executable.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    let config = pyo3_build_config::get();
    if let Some(lib_dir) = &config.lib_dir {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
    let executable = config.executable.clone().unwrap_or_else(|| "python3".into());
    let home = Command::new(&executable)
        .args(["-c", "import sys; print(sys.base_prefix)"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("cargo:rustc-env=RH_PYTHON_HOME={home}");
    println!("cargo:rustc-env=RH_PYTHON_EXECUTABLE={executable}");
}
