//! Engine trust, round 2 (issue #27): what a hostile user could do to lose
//! work or corrupt the cache, one test per cause. Each checks that the
//! user's bytes (and modes) survive and that the cache recovers.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::util::{Project, status_of, stderr};

/// One stage writing `r.txt`.
const ONE_FILE: &str =
    "pipeline: p\nstages:\n  s:\n    run: echo made > r.txt\n    outs: [r.txt]\n";

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// Writes `rel` under `root` with `contents`, creating its folders.
fn put(root: &Path, rel: &str, contents: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}

/// The user files a folder taken for a store must keep, under pipe's own folder names.
const USER_FILES: [&str; 6] = [
    "tmp/notes.txt",
    "logs/p/s.log",
    "scratch/old-run/weights.bin",
    "stages/notes.json",
    "trash/keep.txt",
    "objects/ab/mine",
];

#[test]
fn a_folder_that_is_not_a_pipe_store_is_refused_by_every_command_that_writes_it() {
    let elsewhere = tempfile::tempdir().unwrap();
    let folder = elsewhere.path().join("store");
    for rel in USER_FILES {
        put(&folder, rel, rel);
    }
    let p = Project::new();
    p.file("p.yaml", ONE_FILE);
    for command in [
        &["run", "p.yaml"][..],
        &["status", "p.yaml"],
        &["gc", "p.yaml", "--grace", "0s"],
    ] {
        let out = p
            .command(command)
            .env("PIPE_STORE", &folder)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {err}");
        assert!(
            err.contains("is not a pipe store") && err.contains("help:"),
            "{err}"
        );
    }
    for rel in USER_FILES {
        assert_eq!(std::fs::read_to_string(folder.join(rel)).unwrap(), rel);
    }
    assert!(!folder.join("STORE").exists() && !folder.join("out").exists());
    assert!(!p.path("r.txt").exists(), "nothing ran");

    // An empty folder becomes a store.
    let fresh = elsewhere.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    let out = p
        .command(&["run", "p.yaml"])
        .env("PIPE_STORE", &fresh)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(fresh.join("STORE").is_file());
}

#[test]
fn files_pipe_did_not_make_inside_its_store_survive_run_and_gc() {
    let p = Project::new();
    p.file("p.yaml", ONE_FILE);
    p.run_json("p.yaml", 0);
    let store = p.path(".pipe");
    for rel in USER_FILES {
        put(&store, rel, rel);
    }
    assert_eq!(status_of(&p.run_json("p.yaml", 0), "s"), "cached");
    let out = p.pipe(&["run", "p.yaml", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = p.pipe(&["gc", "p.yaml", "--grace", "0s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for rel in USER_FILES.iter().filter(|r| !r.starts_with("logs/")) {
        assert_eq!(std::fs::read_to_string(store.join(rel)).unwrap(), *rel);
    }
    assert_eq!(status_of(&p.run_json("p.yaml", 0), "s"), "cached");
}

#[test]
fn a_stage_log_that_is_a_link_is_replaced_and_its_target_left_alone() {
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("diary.txt");
    std::fs::write(&target, "the user's diary").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    let p = Project::new();
    p.file("p.yaml", ONE_FILE);
    p.run_json("p.yaml", 0);
    let log = p.path(".pipe/logs/p/s.log");
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&target, &log).unwrap();
    let out = p.pipe(&["run", "p.yaml", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "the user's diary"
    );
    assert_eq!(mode(&target), 0o600);
    assert!(std::fs::symlink_metadata(&log).unwrap().is_file());
}

#[test]
fn a_store_made_before_the_marker_is_adopted_and_keeps_its_cache() {
    let p = Project::new();
    p.file("p.yaml", ONE_FILE);
    p.run_json("p.yaml", 0);
    std::fs::remove_file(p.path(".pipe/STORE")).unwrap();
    std::fs::remove_file(p.path("r.txt")).unwrap();
    assert_eq!(status_of(&p.run_json("p.yaml", 0), "s"), "cached");
    assert!(p.path(".pipe/STORE").is_file());
    assert_eq!(p.read("r.txt"), "made\n");
}

/// `p.yaml` and `p.yml` would share `p.lock`: the second is refused (exit 2,
/// naming both) and the first's entries and cache survive, with a lockfile
/// that names its manifest and with an older one that does not.
#[test]
fn manifests_with_one_stem_do_not_share_a_lockfile() {
    let p = Project::new();
    p.file(
        "p.yaml",
        &ONE_FILE.replace("pipeline: p", "pipeline: first"),
    );
    p.file(
        "p.yml",
        &ONE_FILE
            .replace("pipeline: p", "pipeline: second")
            .replace("r.txt", "q.txt"),
    );
    p.run_json("p.yaml", 0);
    assert!(p.read("p.lock").contains("manifest: p.yaml"));
    let refused = |p: &Project| {
        let before = p.read("p.lock");
        for command in [
            &["run", "p.yml"][..],
            &["status", "p.yml"],
            &["metrics", "p.yml"],
        ] {
            let out = p.pipe(command);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{command:?}: {err}");
            assert!(
                err.contains("p.lock") && err.contains("p.yaml") && err.contains("p.yml"),
                "names both manifests: {err}"
            );
        }
        assert_eq!(p.read("p.lock"), before);
        assert!(!p.path("q.txt").exists());
    };
    refused(&p);
    // A lockfile of an older pipe names no manifest: the pipeline name tells.
    let older = p.read("p.lock").replace("manifest: p.yaml\n", "");
    p.file("p.lock", &older);
    refused(&p);
    let out = p.pipe(&["gc", "p.yaml", "--grace", "0s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    std::fs::remove_file(p.path("r.txt")).unwrap();
    assert_eq!(status_of(&p.run_json("p.yaml", 0), "s"), "cached");
    assert!(p.read("p.lock").contains("manifest: p.yaml"));
    // Renaming a pipeline keeps its lockfile.
    p.file(
        "p.yaml",
        &ONE_FILE.replace("pipeline: p", "pipeline: renamed"),
    );
    std::fs::remove_file(p.path("p.yml")).unwrap();
    assert_eq!(status_of(&p.run_json("p.yaml", 0), "s"), "cached");
}

/// pipe advises deleting a lockfile it cannot read only when it wrote it.
#[test]
fn a_file_pipe_did_not_write_is_never_advised_to_be_deleted() {
    let p = Project::new();
    p.file("p.yaml", ONE_FILE);
    let manifest_named_lock = ONE_FILE.replace("pipeline: p", "pipeline: q");
    p.file("q.lock", &manifest_named_lock);
    let out = p.pipe(&["run", "q.lock"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot end in `.lock`") && err.contains("q.yaml"),
        "{err}"
    );
    assert!(!err.contains("delete"), "{err}");
    assert_eq!(p.read("q.lock"), manifest_named_lock);

    p.file("p.lock", "my: [own notes\n");
    let out = p.pipe(&["run", "p.yaml"]);
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        !err.contains("delete") && err.contains("move this file aside"),
        "{err}"
    );
    assert_eq!(p.read("p.lock"), "my: [own notes\n");
    p.file("p.lock", "stages: 3\n");
    let err = stderr(&p.pipe(&["run", "p.yaml"]));
    assert!(!err.contains("delete"), "{err}");

    // A lockfile pipe wrote, damaged: delete it and run again.
    std::fs::remove_file(p.path("p.lock")).unwrap();
    p.run_json("p.yaml", 0);
    let damaged = p.read("p.lock").replace("stages:", "stages: [");
    p.file("p.lock", &damaged);
    let err = stderr(&p.pipe(&["run", "p.yaml"]));
    assert!(err.contains("delete it and run again"), "{err}");
}

/// 80 CJK characters: 240 bytes, a name ext4 accepts (255 at most) with no
/// room for a suffix.
fn long_name() -> String {
    "界".repeat(80)
}

#[test]
fn files_with_the_longest_names_the_file_system_accepts_are_restored() {
    let name = long_name();
    let p = Project::new();
    p.file(
        "p.yaml",
        &format!(
            "pipeline: long\nstages:\n  s:\n    run: printf one > {name} && mkdir -p dir && printf two > dir/{name}\n    outs: [{name}, dir]\n"
        ),
    );
    p.run_json("p.yaml", 0);
    std::fs::remove_file(p.path(&name)).unwrap();
    std::fs::remove_dir_all(p.path("dir")).unwrap();
    let report = p.run_json("p.yaml", 0);
    assert_eq!(status_of(&report, "s"), "cached", "{report}");
    assert_eq!(p.read(&name), "one");
    assert_eq!(p.read(&format!("dir/{name}")), "two");
    assert!(!p.path(".pipe/trash").exists());
}

/// A stage writing `big/`, a folder of `FILES` files holding WORD.
const BIG_FOLDER: &str = "pipeline: big\nstages:\n  s:\n    run: mkdir -p big && for i in $(seq 3000); do echo WORD > big/f$i; done\n    outs: [big]\n";

/// Whether `dir` holds the 3,000 files of [`BIG_FOLDER`] with `word` and nothing else.
fn big_folder_is(dir: &Path, word: &str) -> bool {
    let entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.len() == 3000
        && entries
            .iter()
            .all(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t == format!("{word}\n")))
}

/// `timeout`, `docker stop` or a preemption during a restore: the next run
/// finishes pipe's own partial restore. It never reruns the stage and never
/// moves pipe's files to the trash. Kills land at growing delays, by SIGTERM
/// and SIGKILL, over an empty out and over another key's files.
#[test]
fn a_restore_killed_midway_is_finished_by_the_next_run_not_rerun() {
    let p = Project::new();
    let manifest = |word: &str| BIG_FOLDER.replace("WORD", word);
    p.file("p.yaml", &manifest("one"));
    p.run_json("p.yaml", 0);
    p.file("p.yaml", &manifest("two"));
    p.run_json("p.yaml", 0);
    let journal = p.path(".pipe/restoring/big/s.json");
    let mut caught = 0;
    for attempt in 0..60u64 {
        if caught >= 4 {
            break;
        }
        let word = ["one", "two"][attempt as usize % 2];
        if attempt % 4 < 2 && p.path("big").exists() {
            std::fs::remove_dir_all(p.path("big")).unwrap();
        }
        p.file("p.yaml", &manifest(word));
        let child = p.spawn(&["run", "p.yaml"]);
        std::thread::sleep(std::time::Duration::from_millis(5 + 5 * attempt));
        let signal = [libc::SIGKILL, libc::SIGTERM][attempt as usize % 2];
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success() || !journal.exists());
        if !journal.exists() {
            drop(out);
            continue;
        }
        caught += 1;
        let report = p.run_json("p.yaml", 0);
        assert_eq!(
            status_of(&report, "s"),
            "cached",
            "attempt {attempt}: {report}"
        );
        assert!(big_folder_is(&p.path("big"), word), "attempt {attempt}");
        assert!(!journal.exists());
        assert!(
            !p.path(".pipe/trash").exists(),
            "pipe's own files are not trashed"
        );
    }
    assert!(caught > 0, "no kill landed during a restore");
}

/// How many times `dir` itself was opened (listed) while `during` ran,
/// counted by inotify, not by time.
fn listings_of(dir: &Path, during: impl FnOnce()) -> usize {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: plain syscalls on a descriptor this function owns and closes.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    assert!(fd >= 0, "inotify_init1");
    let watch = unsafe { libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_OPEN) };
    assert!(watch >= 0, "inotify_add_watch");
    during();
    let mut opened = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        let mut at = 0;
        while at < n as usize {
            let field = |i: usize| u32::from_ne_bytes(buf[at + i..at + i + 4].try_into().unwrap());
            let (mask, len) = (field(4), field(12) as usize);
            // An event about the watched folder itself carries no name.
            if len == 0 && mask & libc::IN_OPEN != 0 {
                opened += 1;
            }
            at += 16 + len;
        }
    }
    unsafe { libc::close(fd) };
    opened
}

/// A no-op rerun must not list the folder of each out to look for what a
/// killed restore left (issue #27, item 13: 1,000 outs in one folder made a
/// million entries per no-op).
#[test]
fn a_no_op_rerun_lists_no_folder_per_out() {
    let p = Project::new();
    let mut manifest = String::from("pipeline: many\nstages:\n");
    for i in 0..150 {
        manifest.push_str(&format!(
            "  s{i}:\n    run: mkdir -p o && echo {i} > o/{i}.txt\n    outs: [o/{i}.txt]\n"
        ));
    }
    p.file("p.yaml", &manifest);
    p.run_json("p.yaml", 0);
    let opened = listings_of(&p.path("o"), || {
        let report = p.run_json("p.yaml", 0);
        assert!(
            crate::util::statuses(&report)
                .iter()
                .all(|(_, s)| s == "cached"),
            "{report}"
        );
    });
    assert!(opened <= 2, "`o/` was listed {opened} times for 150 outs");
}

/// A user's folder at an out path holding only empty folders was deleted
/// without the trash: a folder pipe did not make goes to the trash whole,
/// with its mode, and so does an empty folder a user adds inside an out.
#[test]
fn a_users_folder_of_empty_folders_at_an_out_goes_to_the_trash_with_its_mode() {
    let p = Project::new();
    for sub in ["build/a", "build/b/c"] {
        std::fs::create_dir_all(p.path(sub)).unwrap();
    }
    std::fs::set_permissions(p.path("build"), std::fs::Permissions::from_mode(0o700)).unwrap();
    p.file(
        "p.yaml",
        "pipeline: p\nstages:\n  s:\n    run: mkdir -p build && echo made > build/made.txt\n    outs: [build]\n",
    );
    p.run_json("p.yaml", 0);
    let (note, kept) = trashed_folder(&p, "build");
    assert_eq!(note["stage"], "s");
    assert_eq!(mode(&kept), 0o700);
    assert!(kept.join("a").is_dir() && kept.join("b/c").is_dir());
    assert_eq!(p.read("build/made.txt"), "made\n");

    // An edit inside the out (the stage reruns): the empty folder is kept too.
    std::fs::create_dir(p.path("build/mine")).unwrap();
    p.run_json("p.yaml", 0);
    assert!(trash_path(&p, "build/mine").is_dir());
    assert_eq!(p.read("build/made.txt"), "made\n");
}

/// A folder out restored by pipe came back `0755` where the command had made it `0700`:
/// folder modes are recorded with the outputs (not in their hash: the key stays the one of
/// the same files under `0755`) and given back, in the workspace and under `.pipe/out/`.
#[test]
fn a_restored_folder_out_gets_the_modes_it_was_committed_with() {
    let p = Project::new();
    let made = "mkdir -p build/private/deep build/open && echo made > build/private/deep/x.txt \
                && chmod 700 build/private && chmod 750 build/private/deep";
    p.file(
        "p.yaml",
        &format!("pipeline: p\nstages:\n  s:\n    run: {made}\n    outs: [build]\n"),
    );
    let first = p.run_json("p.yaml", 0);
    assert_eq!(status_of(&first, "s"), "ran");
    let committed = [
        ("build", mode(&p.path("build"))),
        ("build/open", mode(&p.path("build/open"))),
        ("build/private", 0o700),
        ("build/private/deep", 0o750),
    ];
    for (rel, want) in committed {
        assert_eq!(mode(&p.path(rel)), want, "{rel} as the command made it");
    }

    std::fs::remove_dir_all(p.path("build")).unwrap();
    let second = p.run_json("p.yaml", 0);
    assert_eq!(status_of(&second, "s"), "cached");
    for (rel, want) in committed {
        assert_eq!(
            mode(&p.path(rel)),
            want,
            "{rel} restored: {:o}",
            mode(&p.path(rel))
        );
    }
    assert_eq!(p.read("build/private/deep/x.txt"), "made\n");

    // The same files under usual modes have the same key: the cache is used, not rerun.
    std::fs::remove_dir_all(p.path("build")).unwrap();
    let usual = made.replace("chmod 700 build/private", "chmod 755 build/private");
    let usual = usual.replace(
        "chmod 750 build/private/deep",
        "chmod 755 build/private/deep",
    );
    let q = Project::new();
    q.file(
        "p.yaml",
        &format!("pipeline: p\nstages:\n  s:\n    run: {usual}\n    outs: [build]\n"),
    );
    q.run_json("p.yaml", 0);
    let lock = |p: &Project| {
        let text = p.read("p.lock");
        let at = text.find("outputs").expect("outputs in the lockfile");
        text[at..].lines().next().unwrap().to_string()
    };
    assert_eq!(
        lock(&p),
        lock(&q),
        "the folder's hash does not depend on its modes"
    );
}

/// The note of the one trash batch that holds `rel`, which may be a folder.
fn trashed_folder(p: &Project, rel: &str) -> (serde_json::Value, std::path::PathBuf) {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(p.path(".pipe/trash")).unwrap() {
        let folder = entry.unwrap().path();
        let note: serde_json::Value =
            serde_json::from_slice(&std::fs::read(folder.join("note.json")).unwrap()).unwrap();
        if let Some(kept) = note["kept_at"][rel].as_str() {
            found.push((note.clone(), folder.join(kept)));
        }
    }
    assert_eq!(found.len(), 1, "`{rel}` is in exactly one trash batch");
    found.remove(0)
}

/// Where the trash keeps `rel`.
fn trash_path(p: &Project, rel: &str) -> std::path::PathBuf {
    trashed_folder(p, rel).1
}

/// Mistakes in how pipe was called are exit 2 and touch nothing: a NUL in an
/// out path (found at validation, before anything runs), `predict` of a
/// stage the manifest lacks, `pull-model` of an id the hub cannot have,
/// `init` onto its own data file or from a FIFO (which would block).
#[test]
fn usage_mistakes_are_exit_2_found_before_anything_is_touched() {
    let p = Project::new();
    p.file(
        "p.yaml",
        "pipeline: p\nstages:\n  s:\n    run: echo made > r.txt\n    outs: [\"r\\0.txt\"]\n",
    );
    let out = p.pipe(&["validate", "p.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("NUL"), "{}", stderr(&out));
    assert!(!p.path(".pipe").exists() && !p.path("r.txt").exists());

    p.file("p.yaml", ONE_FILE);
    for command in [
        &["predict", "nope", "some text"][..],
        &["pull-model", "bad//id"],
    ] {
        let out = p.pipe(command);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {}", stderr(&out));
    }

    let data = "text,label\nhello there,a\nbye now,b\n".repeat(4);
    p.file("q.csv", &data);
    let out = p.pipe(&["init", "--from", "q.csv", "--yes", "-o", "q.csv", "--force"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(p.read("q.csv"), data, "the data survives");

    let fifo = std::ffi::CString::new(p.path("f.csv").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let mut child = p
        .command(&["init", "--from", "f.csv", "--yes", "-o", "f.yaml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("`pipe init --from <a FIFO>` blocks");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(2));
    assert!(!p.path("f.yaml").exists());
}

/// An ingest stage (store outputs under `.pipe/out/p/ingest/`) and a command reading them
/// through `$PIPE_FROM`, running `read`.
fn ingest_then(read: &str) -> String {
    format!(
        "pipeline: p\nstages:\n  ingest:\n    source: q.csv\n  use:\n    from: ingest\n    run: |\n      {read}\n    outs: [used.txt]\n"
    )
}

/// The store object a file under `.pipe/out/` is a hard link to.
fn object_of(p: &Project, rel: &str) -> std::path::PathBuf {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(p.path(rel)).unwrap().ino();
    let mut stack = vec![p.path(".pipe/objects")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.ino() == ino {
                return entry.path();
            }
        }
    }
    panic!("no object is linked at {rel}");
}

/// What is set aside under `.pipe/damaged/`.
fn damaged(p: &Project) -> Vec<String> {
    match std::fs::read_dir(p.path(".pipe/damaged")) {
        Ok(entries) => entries
            .flatten()
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_command_writing_into_its_input_is_stopped_and_the_store_recovers() {
    let p = Project::new();
    p.file("q.csv", &crate::util::two_label_csv(6));
    // Writes through the hard link, as a root command (or one that chmods first) can.
    let write = "chmod u+w $PIPE_FROM/labels.json && echo '[\"x\"]' > $PIPE_FROM/labels.json && cp $PIPE_FROM/labels.json used.txt";
    p.file("p.yaml", &ingest_then(write));
    let out = p.pipe(&["run", "p.yaml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("changed its input") && err.contains(".pipe/out/p/ingest/labels.json"),
        "{err}"
    );
    assert_eq!(damaged(&p), vec!["[\"x\"]\n".to_string()]);
    // The next run makes ingest's outputs again, then the command reads them intact.
    p.file("p.yaml", &ingest_then("cp $PIPE_FROM/labels.json used.txt"));
    let report = p.run_json("p.yaml", 0);
    assert_eq!(status_of(&report, "ingest"), "ran");
    let labels = p.read(".pipe/out/p/ingest/labels.json");
    assert!(
        labels.contains("\"a\"") && labels.contains("\"b\""),
        "{labels}"
    );
    assert_eq!(p.read("used.txt"), labels);
}

#[test]
fn an_object_replaced_by_hand_with_bytes_of_its_size_is_set_aside_not_restored() {
    let p = Project::new();
    p.file("q.csv", &crate::util::two_label_csv(6));
    p.file("p.yaml", &ingest_then("cp $PIPE_FROM/labels.json used.txt"));
    p.run_json("p.yaml", 0);
    let labels = p.read(".pipe/out/p/ingest/labels.json");
    let object = object_of(&p, ".pipe/out/p/ingest/labels.json");
    // A new file put in its place: same size, other bytes, another inode.
    let forged = labels.replace('a', "z");
    assert_eq!(forged.len(), labels.len());
    let beside = object.with_extension("new");
    std::fs::write(&beside, &forged).unwrap();
    std::fs::rename(&beside, &object).unwrap();
    std::fs::remove_file(p.path("used.txt")).unwrap();
    let out = p.command(&["run", "p.yaml", "--json"]).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("no longer holds what its name says") && err.contains(".pipe/damaged/"),
        "{err}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status_of(&report, "ingest"), "ran");
    assert_eq!(p.read(".pipe/out/p/ingest/labels.json"), labels);
    assert_eq!(p.read("used.txt"), labels);
    assert_eq!(damaged(&p), vec![forged]);
}

#[test]
fn force_replaces_a_damaged_object_with_the_same_hash() {
    let p = Project::new();
    p.file("q.csv", &crate::util::two_label_csv(6));
    p.file("p.yaml", &ingest_then("cp $PIPE_FROM/labels.json used.txt"));
    p.run_json("p.yaml", 0);
    let labels = p.read(".pipe/out/p/ingest/labels.json");
    let object = object_of(&p, ".pipe/out/p/ingest/labels.json");
    // Changed in place, same size: the old check ("an object with that hash exists") kept it.
    let forged = labels.replace('b', "y");
    std::fs::write(&object, &forged).unwrap();
    let out = p.pipe(&["run", "p.yaml", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&object).unwrap(), labels);
    assert_eq!(p.read(".pipe/out/p/ingest/labels.json"), labels);
    assert_eq!(p.read("used.txt"), labels);
    assert_eq!(damaged(&p), vec![forged]);
}

#[test]
fn gc_verify_hashes_the_store_and_sets_damaged_objects_aside() {
    let p = Project::new();
    p.file("q.csv", &crate::util::two_label_csv(6));
    p.file("p.yaml", &ingest_then("cp $PIPE_FROM/labels.json used.txt"));
    p.run_json("p.yaml", 0);
    let labels = p.read(".pipe/out/p/ingest/labels.json");
    let object = object_of(&p, ".pipe/out/p/ingest/labels.json");
    // Same size, and its time put back: only hashing finds it.
    let time = std::fs::metadata(&object).unwrap().modified().unwrap();
    let forged = labels.replace('a', "q");
    std::fs::write(&object, &forged).unwrap();
    std::fs::File::open(&object)
        .unwrap()
        .set_modified(time)
        .unwrap();
    let out = p.pipe(&["gc", "p.yaml", "--verify", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let found = json["verify"]["damaged"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{json}");
    let named = object.strip_prefix(p.root()).unwrap();
    assert!(
        found[0]["object"]
            .as_str()
            .unwrap()
            .ends_with(named.to_str().unwrap())
    );
    assert!(json["verify"]["checked"].as_u64().unwrap() >= 3, "{json}");
    assert!(!object.exists());
    assert_eq!(damaged(&p), vec![forged]);
    // The next run makes it again; the user's out is rewritten from good bytes.
    let report = p.run_json("p.yaml", 0);
    assert_eq!(status_of(&report, "ingest"), "ran");
    assert_eq!(p.read(".pipe/out/p/ingest/labels.json"), labels);
    let out = p.pipe(&["gc", "p.yaml", "--verify"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("0 damaged"), "{text}");
}

/// A project copied with `cp -a` brings its store, whose name claim names the original
/// manifest: the copy's store is another one, so the copy takes the claim over and runs.
#[test]
fn a_project_copied_with_cp_a_runs_in_its_copy() {
    let p = Project::new();
    p.file("p.yaml", ONE_FILE);
    p.run_json("p.yaml", 0);
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("copy");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(p.root())
        .arg(&copy)
        .status()
        .unwrap();
    assert!(copied.success());
    let out = p
        .command(&["run", "p.yaml", "--json"])
        .current_dir(&copy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status_of(&report, "s"), "cached");
    let claim = std::fs::read_to_string(copy.join(".pipe/names/p")).unwrap();
    assert!(
        claim.starts_with(copy.canonicalize().unwrap().to_str().unwrap()),
        "{claim}"
    );
    // The original still runs too: its claim is in its own store.
    assert_eq!(p.pipe(&["run", "p.yaml"]).status.code(), Some(0));
}
