//! Push and fetch through a `file://` remote (object_store's local backend):
//! the same code path as S3 without a server.
#![allow(clippy::disallowed_methods)] // tests arrange files with std::fs directly

use std::collections::BTreeMap;
use std::path::Path;

use indicatif::ProgressBar;
use pipe_engine::Digest;
use pipe_engine::hash::{EntryKind, hash_path};
use pipe_engine::key::KeyRecord;
use pipe_engine::remote_cache::RemoteCache;
use pipe_engine::store::{Import, OutputEntry, Placing, StageRecord, Store};
use pipe_remote::Remote;

/// A store holding one stage record whose output is a folder with a small
/// file and a 9 MB file (larger than one transfer chunk).
fn store_with_a_record(dir: &Path) -> (Store, StageRecord) {
    let store = Store::open(&dir.join("store")).unwrap();
    let folder = dir.join("model");
    std::fs::create_dir_all(folder.join("deep")).unwrap();
    std::fs::write(folder.join("config.json"), "{\"layers\": 2}").unwrap();
    let big: Vec<u8> = (0..9_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(folder.join("deep/weights.bin"), big).unwrap();
    let hashed = hash_path(&folder).unwrap();
    store.import(&folder, &hashed, Import::Copy).unwrap();
    let key_record = KeyRecord {
        kind: "command".into(),
        kind_version: 1,
        params: serde_json::json!({}),
        run: Some("make model".into()),
        outs: vec![],
        inputs: BTreeMap::new(),
    };
    let record = StageRecord {
        key: key_record.key(),
        pipeline: "p".into(),
        stage: "train".into(),
        record: key_record,
        outputs: BTreeMap::from([(
            "model".into(),
            OutputEntry {
                path: "model".into(),
                kind: EntryKind::Dir,
                hash: hashed.digest(),
                size: hashed.size(),
                workspace: false,
                folder_modes: BTreeMap::new(),
            },
        )]),
        metrics: Default::default(),
        headline: None,
        seconds: 1.0,
        finished_at: 0,
        pipe_version: "test".into(),
    };
    store.write_record(&record).unwrap();
    (store, record)
}

fn remote_at(dir: &Path) -> Remote {
    std::fs::create_dir_all(dir).unwrap();
    Remote::open(&format!("file://{}", dir.display())).unwrap()
}

#[test]
fn a_pushed_record_is_fetched_whole_into_another_store_and_pushed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (local, record) = store_with_a_record(&tmp.path().join("a"));
    let remote = remote_at(&tmp.path().join("remote"));
    let keys = [("train".to_string(), record.key)];
    let hidden = ProgressBar::hidden();

    let first = remote.push(&local, &keys, &hidden).unwrap();
    // Two trees (model/, deep/) and two files.
    assert_eq!((first.stages, first.present, first.objects), (1, 0, 4));
    assert!(first.bytes > 9_000_000);
    let second = remote.push(&local, &keys, &hidden).unwrap();
    assert_eq!((second.stages, second.present, second.objects), (0, 1, 0));

    let other = Store::open(&tmp.path().join("b")).unwrap();
    assert!(remote.record(&record.key).unwrap().is_some());
    assert!(
        other.record(&record.key).is_none(),
        "record() downloads nothing"
    );
    let fetched = remote
        .fetch(&other, &record.key)
        .unwrap()
        .expect("the remote has it");
    assert_eq!(fetched.outputs, record.outputs);
    let model = &record.outputs["model"];
    assert!(other.output_complete(EntryKind::Dir, &model.hash));
    let restored = tmp.path().join("restored");
    let place = Placing {
        copy: true,
        temp: ".p-test",
    };
    other
        .materialize(EntryKind::Dir, &model.hash, &restored, place)
        .unwrap();
    assert_eq!(hash_path(&restored).unwrap().digest(), model.hash);
    assert!(other.record(&record.key).is_some());

    let unknown = Digest::of(b"never ran");
    assert!(remote.fetch(&other, &unknown).unwrap().is_none());
}

#[test]
fn a_corrupt_remote_object_never_enters_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (local, record) = store_with_a_record(&tmp.path().join("a"));
    let remote_dir = tmp.path().join("remote");
    let remote = remote_at(&remote_dir);
    remote
        .push(
            &local,
            &[("train".into(), record.key)],
            &ProgressBar::hidden(),
        )
        .unwrap();
    // Flip one byte of the 9 MB object in the remote.
    let big = walk(&remote_dir.join("objects"))
        .into_iter()
        .find(|p| std::fs::metadata(p).unwrap().len() == 9_000_000)
        .expect("the large object is in the remote");
    let mut bytes = std::fs::read(&big).unwrap();
    bytes[4_500_000] ^= 1;
    std::fs::write(&big, bytes).unwrap();

    let other = Store::open(&tmp.path().join("b")).unwrap();
    let error = remote.fetch(&other, &record.key).unwrap_err();
    assert!(format!("{error:#}").contains("is corrupt"), "{error:#}");
    assert!(
        other.record(&record.key).is_none(),
        "no record without its objects"
    );
    assert!(!other.output_complete(EntryKind::Dir, &record.outputs["model"].hash));
}

#[test]
fn a_record_that_writes_outside_its_folder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (local, mut record) = store_with_a_record(&tmp.path().join("a"));
    let remote_dir = tmp.path().join("remote");
    let remote = remote_at(&remote_dir);
    remote
        .push(
            &local,
            &[("train".into(), record.key)],
            &ProgressBar::hidden(),
        )
        .unwrap();
    // Someone else's (or a tampered) record on the remote: the local store refuses to hold
    // such a record, so it is written into the remote's folder directly.
    let output = record.outputs.get_mut("model").unwrap();
    output.path = "../../escape".into();
    let on_remote = remote_dir
        .join("stages")
        .join(format!("{}.json", record.key));
    assert!(on_remote.is_file(), "{}", on_remote.display());
    std::fs::write(&on_remote, serde_json::to_vec(&record).unwrap()).unwrap();
    let error = remote.record(&record.key).unwrap_err();
    assert!(
        format!("{error:#}").contains("unsafe output path"),
        "{error:#}"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.path().is_dir() {
            found.extend(walk(&entry.path()));
        } else {
            found.push(entry.path());
        }
    }
    found
}

/// A push killed midway leaves the multipart staging file `<object>#1` in a folder remote:
/// the next push of that object removes it once no upload has written to it for ten
/// minutes; a fresh one (an upload running now) and other files stay.
#[test]
fn a_push_removes_what_a_killed_push_left_staged() {
    let tmp = tempfile::tempdir().unwrap();
    let (local, record) = store_with_a_record(&tmp.path().join("a"));
    let remote_dir = tmp.path().join("remote");
    let remote = remote_at(&remote_dir);
    let big = Digest::of(
        &(0..9_000_000u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<_>>(),
    );
    let hex = big.to_string();
    let shard = remote_dir.join("objects").join(&hex[..2]);
    std::fs::create_dir_all(&shard).unwrap();
    let killed = shard.join(format!("{}#1", &hex[2..]));
    let running = shard.join(format!("{}#2", &hex[2..]));
    let mine = shard.join(format!("{}#notes", &hex[2..]));
    for path in [&killed, &running, &mine] {
        std::fs::write(path, "half an upload").unwrap();
    }
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for path in [&killed, &mine] {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let keys = [("train".to_string(), record.key)];
    remote.push(&local, &keys, &ProgressBar::hidden()).unwrap();
    assert!(!killed.exists(), "the killed push's staging file is gone");
    assert!(running.exists() && mine.exists());
    assert!(shard.join(&hex[2..]).is_file());
}
