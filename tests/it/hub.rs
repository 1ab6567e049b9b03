//! `pipe pull-model` reads the hub's environment: `HF_HUB_OFFLINE` forbids the network,
//! `HF_ENDPOINT` is where it asks, `HF_HOME` where it caches. (The downloads themselves are
//! tested against a local hub in pipe-stages.)

use crate::util::{Project, stderr};

#[test]
fn pull_model_follows_the_hub_environment() {
    let p = Project::new();
    let run = |envs: &[(&str, &str)]| {
        let mut command = p.command(&["pull-model", "org/tiny"]);
        command
            .env("HF_HOME", p.path("hf"))
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_ENDPOINT");
        for (k, v) in envs {
            command.env(k, v);
        }
        command.output().unwrap()
    };
    let out = run(&[("HF_HUB_OFFLINE", "1")]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("HF_HUB_OFFLINE forbids downloading"), "{err}");
    assert!(
        err.contains(&p.path("hf/hub").display().to_string()),
        "{err}"
    );

    // Nothing listens on port 9 of this machine.
    let out = run(&[("HF_ENDPOINT", "http://127.0.0.1:9/")]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("cannot reach http://127.0.0.1:9/org/tiny/resolve/main/config.json"),
        "{err}"
    );
}
