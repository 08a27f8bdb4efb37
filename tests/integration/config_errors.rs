//! Config mistakes, as the user sees them from the command line.

use std::process::Command;

use tempfile::TempDir;

use crate::common::binary;

/// Runs `tributary check` with `yaml` as the config and returns (exit code, stderr).
fn check_with(yaml: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("tributary.yaml");
    std::fs::write(&path, yaml).unwrap();
    let o = Command::new(binary())
        .args(["--config", path.to_str().unwrap(), "check"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let file = path.display().to_string();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).replace(&file, "FILE"),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn unknown_key() {
    let (code, err, _) = check_with(
        "sources:\n  - name: lake\n    kind: files\n    url: .\n    tabels: []\n",
        &[],
    );
    assert_eq!(code, Some(1));
    assert!(err.starts_with("error: FILE: sources[0]"), "{err}");
    assert!(
        err.contains("unknown field `tabels`, expected one of"),
        "{err}"
    );
}

#[test]
fn bad_type() {
    let (code, err, _) = check_with("server:\n  probe_timeout: [5]\n", &[]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim_end(),
        "error: FILE: server.probe_timeout: invalid type: sequence, expected a string, number or boolean"
    );
}

#[test]
fn missing_env_var_and_the_default_that_fixes_it() {
    let yaml =
        "sources:\n  - name: gen\n    kind: tpch\n    scale_factor: ${TRIBUTARY_TEST_UNSET_SF}\n";
    let (code, err, _) = check_with(yaml, &[]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim_end(),
        "error: FILE: sources[0].scale_factor: environment variable `TRIBUTARY_TEST_UNSET_SF` is not set (write `${TRIBUTARY_TEST_UNSET_SF:-default}` to give a default)"
    );
    let (code, err, out) = check_with(yaml, &[("TRIBUTARY_TEST_UNSET_SF", "0.001")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("scale factor 0.001"), "{out}");
}

#[test]
fn missing_file() {
    let o = Command::new(binary())
        .args(["--config", "/nonexistent/tributary.yaml", "sources"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim_end(),
        "error: cannot read config file /nonexistent/tributary.yaml: No such file or directory (os error 2)"
    );
}
