//! The binary's command line, as operators meet it.

use std::process::Command;

fn signals() -> Command {
    Command::new(env!("CARGO_BIN_EXE_signals"))
}

#[test]
fn help_lists_the_contract_commands() {
    let output = signals().arg("--help").output().expect("runs");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for command in ["up", "serve", "speed", "batch"] {
        assert!(text.contains(command), "{command} missing from:\n{text}");
    }
}

#[test]
fn a_bad_configuration_names_the_key_and_exits_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[speed]\nmax_batch = \"lots\"\n").expect("written");
    let output = signals()
        .arg("--config")
        .arg(&file)
        .arg("up")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("speed.max_batch"), "{text}");
}

#[test]
fn an_environment_override_is_checked_like_the_file() {
    let output = signals()
        .env("SIGNALS_SERVER__LISTEN", "0.0.0.0:8080")
        .arg("up")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("server.api_tokens"), "{text}");
}
