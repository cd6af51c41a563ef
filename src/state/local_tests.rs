//! The local store against a real directory: round trips, every kind of damaged file
//! rejected with the file named, crash leftovers, permissions, and write failures.

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::sync::Arc;

use super::*;
use crate::quota::{
    Costs, Demand, Engine, LimitSpec, ManualClock, ProviderSpec, Unit, WindowKind, SECOND,
};
use crate::state::codec::{encode, FORMAT};
use crate::state::error::Corruption;
use crate::state::pools::PoolExport;
use crate::state::snapshot::VERSION;
use crate::state::MemoryStore;
use crate::stats::{Bucket, StatsData};

const T0: u64 = 1_780_000_000 * SECOND;

fn sample() -> Snapshot {
    let spec = ProviderSpec::new(
        "p",
        vec![LimitSpec::new(
            "rpm",
            Unit::Requests,
            10.0,
            WindowKind::Rolling { len: 60 * SECOND },
        )],
    );
    let engine = Engine::new(vec![spec], Arc::new(ManualClock::new(T0)));
    let mut permit = engine
        .try_admit("p", &Demand::new("c", Costs::default()))
        .unwrap();
    permit.mark_sent();
    drop(permit);
    let pool = crate::keys::Pool::new(
        [("k1".to_string(), None)],
        crate::config::Strategy::RoundRobin,
        SECOND,
    );
    let stats = StatsData {
        totals: Bucket {
            requests: 3,
            usd: 0.25,
            ..Bucket::default()
        },
        hours: [(T0 - T0 % (3600 * SECOND), Bucket::default())].into(),
    };
    Snapshot {
        version: VERSION,
        saved_at: T0,
        engine: engine.export(T0),
        pools: BTreeMap::from([("p".to_string(), PoolExport::capture(&pool, T0))]),
        stats: BTreeMap::from([("p".to_string(), stats)]),
    }
}

fn corruption(store: &LocalStore) -> (Corruption, String) {
    match store.load() {
        Err(e @ StateError::Corrupt { .. }) => {
            let text = e.to_string();
            let StateError::Corrupt { problem, .. } = e else {
                unreachable!()
            };
            (problem, text)
        }
        other => panic!("expected a corrupt-file error, got {other:?}"),
    }
}

#[test]
fn save_then_load_round_trips_and_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    assert!(store.load().unwrap().is_none(), "no file yet");
    let snap = sample();
    assert_eq!(snap.engine.providers["p"].limits.len(), 1);
    store.save(&snap).unwrap();
    assert_eq!(store.load().unwrap(), Some(snap.clone()));
    let mut newer = snap;
    newer.saved_at += SECOND;
    store.save(&newer).unwrap();
    assert_eq!(store.load().unwrap(), Some(newer));
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, [STATE_FILE], "no temp file left");
    let mode = fs::metadata(store.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn damaged_files_are_errors_that_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let good = encode(&sample()).unwrap();
    let text = String::from_utf8(good.clone()).unwrap();
    let payload_at = text.find(r#""payload":"#).unwrap() + 10;
    let mut flipped = good.clone();
    let digit = text[payload_at..].find("1780").unwrap() + payload_at;
    flipped[digit] = b'2';
    let wrong_sum = {
        let at = text.find("sha256:").unwrap() + 7;
        let other = if &text[at..=at] == "0" { "1" } else { "0" };
        format!("{}{other}{}", &text[..at], &text[at + 1..])
    };
    let bad_payload = {
        let snap = serde_json::json!({"version": VERSION, "saved_at": 1});
        let payload = serde_json::to_vec(&snap).unwrap();
        let hash = ring::digest::digest(&ring::digest::SHA256, &payload);
        let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let mut out = format!(
            r#"{{"format":"{FORMAT}","version":{VERSION},"checksum":"sha256:{hex}","payload":"#
        )
        .into_bytes();
        out.extend_from_slice(&payload);
        out.push(b'}');
        out
    };
    let pretty =
        serde_json::to_vec_pretty(&serde_json::from_slice::<serde_json::Value>(&good).unwrap())
            .unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "empty"),
        (b"  \n".to_vec(), "empty"),
        (good[..good.len() / 2].to_vec(), "ends after"),
        (good[..good.len() - 3].to_vec(), "ends after"),
        (vec![0xde, 0xad, 0xbe, 0xef, 0x00], "not valid JSON"),
        (b"[1, 2, 3]".to_vec(), "not a JSON object"),
        (b"{\"format\":\"other\"}".to_vec(), "\"format\""),
        (
            text.replacen("\"version\":1", "\"version\":2", 1)
                .into_bytes(),
            "format version 2",
        ),
        (flipped, "checksum mismatch"),
        (wrong_sum.clone().into_bytes(), "checksum mismatch"),
        (bad_payload, "payload is not a valid snapshot"),
        (pretty, "laid out"),
    ];
    for (bytes, want) in cases {
        fs::write(store.path(), &bytes).unwrap();
        let (_, message) = corruption(&store);
        assert!(message.contains(want), "{message:?} lacks {want:?}");
        assert!(
            message.contains(&store.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("move it aside"), "{message}");
        assert_eq!(fs::read(store.path()).unwrap(), bytes, "left untouched");
    }
}

#[test]
fn every_truncation_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    let good = encode(&sample()).unwrap();
    // Cutting the final newline leaves a complete file; any shorter cut must fail.
    for len in 0..good.len() - 1 {
        fs::write(store.path(), &good[..len]).unwrap();
        assert!(
            store.load().is_err(),
            "a file cut at {len} bytes was accepted"
        );
    }
}

#[test]
fn crash_leftovers_are_ignored_and_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let snap = sample();
    store.save(&snap).unwrap();
    // A crash between writing the temp file and renaming it.
    let torn = dir.path().join("state.json.tmp.4242");
    fs::write(&torn, b"{\"format\":\"quota-proxy-st").unwrap();
    assert_eq!(
        store.load().unwrap(),
        Some(snap.clone()),
        "the temp file is not read"
    );
    let reopened = LocalStore::open(dir.path()).unwrap();
    assert!(!torn.exists(), "open removes it");
    assert_eq!(reopened.load().unwrap(), Some(snap));
    // A crash before the first rename: only a temp file, no state yet.
    let fresh = tempfile::tempdir().unwrap();
    fs::write(fresh.path().join("state.json.tmp.7"), b"{}").unwrap();
    assert_eq!(
        LocalStore::open(fresh.path()).unwrap().load().unwrap(),
        None
    );
}

#[test]
fn the_directory_is_created_0700() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a/b/state");
    let store = LocalStore::open(&dir).unwrap();
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // Removed while running: the next save creates it again.
    fs::remove_dir_all(root.path().join("a")).unwrap();
    store.save(&sample()).unwrap();
    assert!(store.load().unwrap().is_some());
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn a_read_only_directory_is_an_error_not_a_panic() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalStore::open(root.path()).unwrap();
    store.save(&sample()).unwrap();
    let before = fs::read(store.path()).unwrap();
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o500)).unwrap();
    let enforced = fs::write(root.path().join("probe"), b"").is_err();
    let result = store.save(&sample());
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o700)).unwrap();
    if enforced {
        let err = result.unwrap_err();
        assert!(matches!(err, StateError::Io { .. }), "{err}");
        assert!(err.to_string().contains("state.json.tmp."), "{err}");
        assert_eq!(fs::read(store.path()).unwrap(), before, "old state kept");
    }
    // Also as root: a directory that cannot exist (its parent is a file) ...
    let file = root.path().join("plain-file");
    fs::write(&file, b"").unwrap();
    let err = LocalStore::new(file.join("state"))
        .save(&sample())
        .unwrap_err();
    assert!(err.to_string().contains("plain-file"), "{err}");
    assert!(LocalStore::open(file.join("state")).is_err());
    assert!(
        LocalStore::open(&file).is_err(),
        "a file is not a directory"
    );
    // ... and a state file that cannot be replaced.
    let blocked = tempfile::tempdir().unwrap();
    fs::create_dir_all(blocked.path().join(STATE_FILE).join("x")).unwrap();
    let store = LocalStore::open(blocked.path()).unwrap();
    let err = store.save(&sample()).unwrap_err();
    assert!(err.to_string().contains("cannot replace"), "{err}");
    assert_eq!(
        fs::read_dir(blocked.path()).unwrap().count(),
        1,
        "temp file removed"
    );
}

#[test]
fn a_full_disk_is_an_error_and_keeps_the_old_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let old = sample();
    store.save(&old).unwrap();
    // Writes to /dev/full fail with ENOSPC, as on a full disk.
    let tmp = dir
        .path()
        .join(format!("state.json.tmp.{}", std::process::id()));
    symlink("/dev/full", &tmp).unwrap();
    let mut newer = old.clone();
    newer.saved_at += SECOND;
    let err = store.save(&newer).unwrap_err();
    assert!(err.to_string().contains("cannot write"), "{err}");
    assert_eq!(store.load().unwrap(), Some(old));
    assert!(fs::symlink_metadata(&tmp).is_err(), "temp file removed");
    store.save(&newer).unwrap();
    assert_eq!(store.load().unwrap(), Some(newer));
}

#[test]
fn memory_keeps_nothing_and_open_picks_the_backend() {
    let m = MemoryStore;
    m.save(&sample()).unwrap();
    assert!(m.load().unwrap().is_none());
    assert!(m.describe().starts_with("memory"));
    let dir = tempfile::tempdir().unwrap();
    let local = LocalStore::new(dir.path());
    assert!(local.describe().contains("state.json"));
}
