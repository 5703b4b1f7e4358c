//! Unit tests of [`Store`](super::Store) against real temp directories: import, the re-import
//! fast path, tag moves, delete semantics, reopening, rollback of failed imports and the sweep
//! of leftover temp files.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use super::gguf::writer::{gguf, string, tiny_model};
use super::*;

const MTIME: u64 = 1_700_000_000;

/// The manifest and config cap loads get (`[registry] max_manifest_bytes`' default).
const CAP: u64 = 4 << 20;

mod integrity;

/// Writes a GGUF model file with a fixed mtime; `extra` pads it past the header.
fn model_file(dir: &Path, name: &str, arch: &str, extra: usize, mtime: u64) -> PathBuf {
    let mut bytes = if arch == "llama" {
        tiny_model()
    } else {
        gguf(
            3,
            &[("general.architecture", 8, string(arch))],
            &[("w", &[4, 4], 1)],
        )
    };
    bytes.resize(bytes.len() + extra, 0x5a);
    let path = dir.join(name);
    fs::write(&path, bytes).expect("write model");
    let file = File::options().write(true).open(&path).expect("open model");
    file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
        .expect("set mtime");
    path
}

/// Every file and directory under `root` with its content, to compare whole trees.
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let rel = path
                .strip_prefix(root)
                .expect("prefix")
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                stack.push(path);
            } else {
                out.insert(rel, fs::read(&path).expect("read"));
            }
        }
    }
    out
}

fn blob_count(store: &Store) -> usize {
    fs::read_dir(store.blob_dir()).expect("blobs").count()
}

fn import(store: &Store, src: &Path, tag: &str) -> Result<Model, StoreError> {
    store.import_gguf(src, tag, &mut |_| {})
}

struct Fixture {
    _dir: tempfile::TempDir,
    src: PathBuf,
    root: PathBuf,
    store: Store,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    fs::create_dir(&src).expect("mkdir");
    let root = dir.path().join("models");
    let store = Store::open(&root).expect("open");
    Fixture {
        _dir: dir,
        src,
        root,
        store,
    }
}

#[test]
fn imports_a_gguf_in_dmr_layout() {
    let f = fixture();
    let src = model_file(&f.src, "tiny.gguf", "llama", 0, MTIME);
    let mut events = Vec::new();
    let model = f
        .store
        .import_gguf(&src, "SmolLM2", &mut |p| events.push(p))
        .expect("import");
    assert_eq!(model.tags, ["ai/smollm2:latest"]);
    assert_eq!(model.created, MTIME as i64);
    assert_eq!(
        fs::read(&model.weights).expect("weights"),
        fs::read(&src).expect("src")
    );
    assert!(model.weights.is_absolute());
    let c = &model.config;
    assert_eq!(
        (c.format.as_str(), c.quantization.as_str()),
        ("gguf", "Q4_K_M")
    );
    assert_eq!(
        (c.architecture.as_str(), c.parameters.as_str()),
        ("llama", "12.80K")
    );
    assert_eq!(
        (c.context_size, c.gguf["general.name"].as_str()),
        (Some(8192), "Tiny")
    );
    let size = fs::metadata(&src).expect("stat").len();
    assert_eq!(c.size, gguf::format_size(size));
    let weights = model.files[0].clone();
    assert_eq!(
        events.last(),
        Some(&ImportProgress {
            digest: Some(weights.clone()),
            total: size,
            current: size
        })
    );

    let root = f.store.root();
    assert_eq!(
        fs::read_to_string(root.join("layout.json")).expect("layout"),
        r#"{"version":"1.0.0"}"#
    );
    let manifest = fs::read(root.join("manifests/sha256").join(&model.id[7..])).expect("manifest");
    assert_eq!(sha256_digest(&manifest), model.id);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).expect("json");
    assert_eq!(manifest["config"]["mediaType"], artifact::CONFIG_MEDIA_TYPE);
    assert_eq!(manifest["layers"][0]["digest"], weights.as_str());
    let config_digest = manifest["config"]["digest"].as_str().expect("digest");
    let config = fs::read(root.join("blobs/sha256").join(&config_digest[7..])).expect("config");
    let config: serde_json::Value = serde_json::from_slice(&config).expect("json");
    assert_eq!(config["descriptor"]["created"], "2023-11-14T22:13:20Z");
    assert_eq!(config["rootfs"]["diff_ids"][0], weights.as_str());
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join("models.json")).expect("index")).expect("json");
    let entry = &index["models"][0];
    assert_eq!(entry["id"], model.id.as_str());
    assert_eq!(entry["files"], serde_json::json!([weights, config_digest]));
    assert_eq!(
        entry["source"]["path"],
        src.canonicalize().expect("canon").to_str().expect("utf-8")
    );

    for reference in [
        "smollm2",
        "ai/smollm2:latest",
        &model.id,
        &model.id[7..19],
        &model.id[7..],
    ] {
        assert_eq!(f.store.get(reference).expect(reference), model);
    }
    assert_eq!(f.store.list().expect("list"), [model]);
    assert!(matches!(f.store.get("other"), Err(StoreError::NotFound(_))));
    assert!(matches!(f.store.get("../x"), Err(StoreError::BadName(_))));
}

#[test]
fn reimport_is_deterministic_and_takes_the_fast_path() {
    let f = fixture();
    let src = model_file(&f.src, "m.gguf", "llama", 3 << 20, MTIME);
    let mut events = 0;
    let first = f
        .store
        .import_gguf(&src, "m", &mut |_| events += 1)
        .expect("import");
    assert_eq!(events, 4); // 1, 2 and 3 MiB, then the end
    let mut fast = Vec::new();
    let again = f
        .store
        .import_gguf(&src, "ai/m:latest", &mut |p| fast.push(p))
        .expect("again");
    assert_eq!(again, first);
    assert_eq!(fast.len(), 1, "the fast path does not re-hash");
    assert_eq!(fast[0].digest.as_ref(), first.files.first());
    let other_tag = import(&f.store, &src, "m:v2").expect("second tag");
    assert_eq!(other_tag.id, first.id);
    assert_eq!(other_tag.tags, ["ai/m:latest", "ai/m:v2"]);

    // Same bytes elsewhere, same mtime: same id, no new blobs.
    let copy = model_file(&f.src, "copy.gguf", "llama", 3 << 20, MTIME);
    assert_eq!(import(&f.store, &copy, "m:v3").expect("copy").id, first.id);
    assert_eq!(blob_count(&f.store), 2);
    // A touched file is re-hashed: new created time, new id, shared weights blob.
    let touched = model_file(&f.src, "m.gguf", "llama", 3 << 20, MTIME + 60);
    let newer = import(&f.store, &touched, "m").expect("touched");
    assert_ne!(newer.id, first.id);
    assert_eq!(newer.files[0], first.files[0]);
    assert_eq!(blob_count(&f.store), 3);
}

#[test]
fn a_tag_moves_and_an_untagged_model_is_deleted() {
    let f = fixture();
    let a = import(&f.store, &model_file(&f.src, "a", "llama", 0, MTIME), "x").expect("a");
    import(&f.store, &model_file(&f.src, "a", "llama", 0, MTIME), "y").expect("a again");
    let b = import(&f.store, &model_file(&f.src, "b", "qwen2", 0, MTIME), "x").expect("b");
    let tags: Vec<_> = f
        .store
        .list()
        .expect("list")
        .into_iter()
        .map(|m| m.tags)
        .collect();
    assert_eq!(tags, [vec!["ai/y:latest"], vec!["ai/x:latest"]]);
    let c = import(&f.store, &model_file(&f.src, "c", "gemma", 0, MTIME), "y").expect("c");
    let ids: Vec<_> = f
        .store
        .list()
        .expect("list")
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, [b.id.clone(), c.id.clone()]);
    assert!(!f.root.join("manifests/sha256").join(&a.id[7..]).exists());
    assert!(!a.weights.exists());
    assert_eq!(blob_count(&f.store), 4);
}

#[test]
fn delete_by_tag_and_by_id() {
    let f = fixture();
    let src = model_file(&f.src, "m", "llama", 0, MTIME);
    let empty = snapshot(&f.root);
    let m = import(&f.store, &src, "t1").expect("t1");
    import(&f.store, &src, "t2").expect("t2");
    let conflict = f.store.delete(&m.id, false).expect_err("two tags");
    assert!(matches!(conflict, StoreError::Conflict(_)), "{conflict}");
    assert_eq!(
        f.store.delete("t1", false).expect("untag"),
        [Removed::Untagged("ai/t1:latest".into())]
    );
    assert!(m.weights.exists());
    let removed = f.store.delete(&m.id[7..19], false).expect("by prefix");
    assert_eq!(
        removed,
        [
            Removed::Untagged("ai/t2:latest".into()),
            Removed::Deleted(m.id.clone())
        ]
    );
    assert_eq!(snapshot(&f.root), empty);

    import(&f.store, &src, "t1").expect("t1");
    import(&f.store, &src, "t2").expect("t2");
    let removed = f.store.delete(&m.id, true).expect("force");
    assert_eq!(removed.len(), 3);
    assert_eq!(snapshot(&f.root), empty);
    assert_eq!(removed[2], Removed::Deleted(m.id.clone()));

    import(&f.store, &src, "last").expect("last");
    let removed = f.store.delete("last", false).expect("last tag");
    assert_eq!(
        removed,
        [
            Removed::Untagged("ai/last:latest".into()),
            Removed::Deleted(m.id.clone())
        ]
    );
    assert_eq!(snapshot(&f.root), empty);
    assert!(matches!(
        f.store.delete("last", false),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn shared_weights_survive_until_the_last_user_goes() {
    let f = fixture();
    let one = import(&f.store, &model_file(&f.src, "m", "llama", 0, MTIME), "one").expect("one");
    let two = import(
        &f.store,
        &model_file(&f.src, "m", "llama", 0, MTIME + 1),
        "two",
    )
    .expect("two");
    assert_eq!(one.weights, two.weights);
    f.store.delete("one", false).expect("delete one");
    assert!(two.weights.exists());
    assert_eq!(f.store.get("two").expect("two survives"), two);
    f.store.delete("two", false).expect("delete two");
    assert_eq!(blob_count(&f.store), 0);
}

#[test]
fn a_projector_is_an_mmproj_layer_found_again_after_a_restart_and_must_be_gguf() {
    let f = fixture();
    let weights = model_file(&f.src, "w", "llama", 0, MTIME);
    let projector = model_file(&f.src, "p", "clip", 1, MTIME);
    let extras = GgufExtras {
        mmproj: Some(&projector),
        ..Default::default()
    };
    let m = f
        .store
        .package_gguf(&weights, "ai/v", extras, &mut |_| {})
        .expect("package");
    let blob = m.mmproj.clone().expect("the projector's blob");
    assert_eq!(fs::read(&blob).unwrap(), fs::read(&projector).unwrap());
    assert!(m.vision() && m.chat_template.is_none());
    let plain = import(&f.store, &weights, "ai/plain").expect("plain");
    assert!(!plain.vision() && plain.mmproj.is_none());
    drop(f.store);
    let reopened = Store::open(&f.root).expect("reopen");
    assert_eq!(reopened.get("ai/v").expect("get").mmproj, Some(blob));
    let before = snapshot(&f.root);
    let junk = f.src.join("junk.mmproj");
    fs::write(&junk, b"not a gguf").unwrap();
    let bad = GgufExtras {
        mmproj: Some(&junk),
        ..Default::default()
    };
    let err = reopened
        .package_gguf(&weights, "ai/bad", bad, &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, StoreError::Gguf { .. }), "{err:?}");
    assert_eq!(
        snapshot(&f.root),
        before,
        "a refused projector changes nothing"
    );
}

#[test]
fn survives_a_restart() {
    let f = fixture();
    import(&f.store, &model_file(&f.src, "a", "llama", 0, MTIME), "a").expect("a");
    import(
        &f.store,
        &model_file(&f.src, "b", "qwen2", 0, MTIME),
        "hf.co/Org/B:Q4",
    )
    .expect("b");
    let before = f.store.list().expect("list");
    drop(f.store);
    let reopened = Store::open(&f.root).expect("reopen");
    assert_eq!(reopened.list().expect("list"), before);
    assert_eq!(
        reopened.get("huggingface.co/org/b:Q4").expect("get").tags,
        ["huggingface.co/org/b:Q4"]
    );
}

#[test]
fn failed_imports_change_nothing() {
    let f = fixture();
    import(&f.store, &model_file(&f.src, "a", "llama", 0, MTIME), "a").expect("a");
    let before = snapshot(&f.root);
    let text = f.src.join("notes.txt");
    fs::write(&text, "not a model").expect("write");
    let err = import(&f.store, &text, "bad").expect_err("not GGUF");
    assert!(matches!(err, StoreError::Gguf { .. }), "{err}");
    let err = import(&f.store, &f.src, "bad").expect_err("a directory");
    assert!(matches!(err, StoreError::NotAFile { .. }), "{err}");
    let err = import(&f.store, &f.src.join("missing"), "bad").expect_err("missing");
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
    let err = import(&f.store, &text, "a/../b").expect_err("bad tag");
    assert!(matches!(err, StoreError::BadName(_)), "{err}");
    assert_eq!(snapshot(&f.root), before);

    // A failure at the last step (the index, corrupted here while the weights are copied)
    // rolls back the blobs and manifest already written.
    let new_model = model_file(&f.src, "b", "qwen2", 2 << 20, MTIME);
    let index_path = f.root.join("models.json");
    let corrupt_index = |_: ImportProgress| fs::write(&index_path, "{not json").expect("corrupt");
    let err = f
        .store
        .import_gguf(&new_model, "b", &mut { corrupt_index })
        .expect_err("corrupt index");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    let mut expected = before;
    expected.insert("models.json".into(), b"{not json".to_vec());
    assert_eq!(snapshot(&f.root), expected);
    let before = expected;
    let err = Store::open(&f.root).expect_err("corrupt index on open");
    assert!(err.to_string().contains("models.json"), "{err}");
    assert_eq!(
        snapshot(&f.root),
        before,
        "open does not reset a corrupt index"
    );
}

#[test]
fn open_sweeps_temps_and_checks_the_layout() {
    let f = fixture();
    for leftover in [
        "blobs/sha256/.tmp-1-2-3",
        "manifests/sha256/.tmp-x",
        ".tmp-models",
    ] {
        fs::write(f.root.join(leftover), b"partial").expect("write");
    }
    let clean = {
        drop(Store::open(&f.root).expect("reopen"));
        snapshot(&f.root)
    };
    assert!(
        clean.keys().all(|k| !k.contains(".tmp-")),
        "{:?}",
        clean.keys()
    );
    fs::write(f.root.join("layout.json"), r#"{"version":"9.0.0"}"#).expect("write");
    let err = Store::open(&f.root).expect_err("unknown layout");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

/// A tiny safetensors model directory (config, weights in a subdirectory too, tokenizer).
fn safetensors_dir(root: &Path) -> PathBuf {
    let dir = root.join("qwen");
    fs::create_dir_all(dir.join("sub")).expect("mkdir");
    fs::write(
        dir.join("config.json"),
        r#"{"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","max_position_embeddings":4096}"#,
    )
    .expect("config");
    let header = r#"{"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,64]}}"#;
    let mut weights = (header.len() as u64).to_le_bytes().to_vec();
    weights.extend_from_slice(header.as_bytes());
    weights.extend_from_slice(&[1u8; 64]);
    fs::write(dir.join("model.safetensors"), &weights).expect("weights");
    fs::write(dir.join("sub/extra.safetensors"), &weights).expect("weights");
    fs::write(dir.join("tokenizer.json"), "{}").expect("tokenizer");
    dir
}

#[test]
fn a_safetensors_directory_is_imported_one_layer_per_file_with_a_bundle() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&tmp.path().join("store")).expect("open");
    let src = safetensors_dir(tmp.path());
    let mut reports = 0;
    let model = store
        .import(&src, "ai/qwen", &mut |_| reports += 1)
        .expect("import");
    assert!(reports >= 4, "one report per file at least: {reports}");
    assert_eq!(model.format, ModelFormat::Safetensors);
    assert_eq!(model.config.format, "safetensors");
    assert_eq!(model.config.architecture, "Qwen2ForCausalLM");
    assert_eq!(model.config.context_size, Some(4096));
    assert_eq!(model.config.parameters, "32");
    // The engine gets a directory laid out like the source, its files hard links to the blobs.
    assert!(
        model.weights.ends_with("model"),
        "{}",
        model.weights.display()
    );
    for rel in [
        "config.json",
        "model.safetensors",
        "sub/extra.safetensors",
        "tokenizer.json",
    ] {
        assert_eq!(
            fs::read(model.weights.join(rel)).expect("bundle file"),
            fs::read(src.join(rel)).expect("source file"),
            "{rel}"
        );
    }
    // Identical files share one blob; 3 distinct files + the config blob.
    assert_eq!(blob_count(&store), 4);
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(store.manifest_path(model.id.strip_prefix("sha256:").unwrap())).unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.docker.ai.model.config.v0.2+json"
    );
    assert_eq!(
        manifest["layers"][1]["mediaType"],
        "application/vnd.docker.ai.safetensors"
    );
    assert_eq!(
        manifest["layers"][2]["annotations"]["org.cncf.model.filepath"],
        "sub/extra.safetensors"
    );

    // Importing again is the fast path: same id, nothing rewritten.
    let again = store.import(&src, "ai/qwen", &mut |_| {}).expect("again");
    assert_eq!(again.id, model.id);
    // A lost bundle is rebuilt from the blobs.
    fs::remove_dir_all(model.weights.parent().unwrap()).unwrap();
    let reopened = Store::open(&tmp.path().join("store")).expect("reopen");
    assert!(reopened
        .get("ai/qwen")
        .expect("get")
        .weights
        .join("model.safetensors")
        .is_file());
    // Deleting the last tag removes blobs, manifest and bundle.
    reopened.delete("ai/qwen", false).expect("delete");
    assert_eq!(blob_count(&reopened), 0);
    assert!(fs::read_dir(reopened.bundle_dir())
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn a_dduf_file_is_a_diffusers_model_and_junk_directories_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&tmp.path().join("store")).expect("open");
    let dduf = tmp.path().join("sd.dduf");
    fs::write(
        &dduf,
        b"PK\x03\x04 not really a zip, the store does not care",
    )
    .unwrap();
    let model = store.import(&dduf, "ai/sd", &mut |_| {}).expect("import");
    assert_eq!(model.format, ModelFormat::Dduf);
    assert!(model.weights.ends_with("model/sd.dduf"));
    assert_eq!(fs::read(&model.weights).unwrap(), fs::read(&dduf).unwrap());

    let junk = tmp.path().join("junk");
    fs::create_dir(&junk).unwrap();
    fs::write(junk.join("notes.txt"), "x").unwrap();
    let before = snapshot(&tmp.path().join("store"));
    let err = store.import(&junk, "ai/junk", &mut |_| {}).unwrap_err();
    assert!(matches!(err, StoreError::NotAModel { .. }), "{err}");
    assert_eq!(snapshot(&tmp.path().join("store")), before);
}

/// An exported model as a tar in memory.
fn exported(store: &Store, reference: &str) -> Vec<u8> {
    let mut tar = Vec::new();
    archive::write_archive(&store.artifact(reference).expect("artifact"), &mut tar)
        .expect("export");
    tar
}

/// The names in a tar, in order.
fn tar_names(bytes: &[u8]) -> Vec<String> {
    let mut archive = ::tar::Archive::new(bytes);
    let entries = archive.entries().expect("entries");
    entries
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string()
        })
        .collect()
}

#[test]
fn an_exported_model_loads_into_another_store_with_the_same_id() {
    let f = fixture();
    let src = model_file(&f.src, "tiny.gguf", "llama", 3 << 20, MTIME);
    let m = import(&f.store, &src, "ai/tiny").expect("import");
    let tar = exported(&f.store, "ai/tiny");
    assert_eq!(
        tar,
        exported(&f.store, "ai/tiny"),
        "export is deterministic"
    );
    let hex = |d: &str| digest_hex(d).unwrap().to_string();
    let names = tar_names(&tar);
    assert_eq!(names[..2], ["blobs", "blobs/sha256"]);
    assert_eq!(names.last().unwrap(), "manifest.json");
    assert!(
        names.contains(&format!("blobs/sha256/{}", hex(&m.files[0]))),
        "{names:?}"
    );

    let g = fixture();
    let mut seen = Vec::new();
    let loaded = g
        .store
        .load_archive(&tar[..], Some("loaded/tiny:v1"), CAP, &mut |p| seen.push(p))
        .expect("load");
    assert_eq!(loaded.id, m.id);
    assert_eq!(loaded.tags, ["loaded/tiny:v1"]);
    assert_eq!(fs::read(&loaded.weights).unwrap(), fs::read(&src).unwrap());
    let last = seen.last().unwrap();
    assert!(
        seen.len() >= 4,
        "progress at each MiB of the weights: {seen:?}"
    );
    assert!(last.done > 3 << 20 && last.current == last.size, "{last:?}");

    // Loading again (untagged) adds nothing; a tag-less load of a new model is known by its id only.
    let before = snapshot(&g.root);
    g.store
        .load_archive(&tar[..], None, CAP, &mut |_| {})
        .expect("reload");
    assert_eq!(snapshot(&g.root), before);
    let h = fixture();
    let untagged = h
        .store
        .load_archive(&tar[..], None, CAP, &mut |_| {})
        .expect("untagged");
    assert!(untagged.tags.is_empty());
    assert_eq!(h.store.get(&m.id).unwrap().id, m.id);
    assert_eq!(h.store.list().unwrap().len(), 1);
}

#[test]
fn a_bad_archive_leaves_the_store_as_it_was() {
    let f = fixture();
    let src = model_file(&f.src, "tiny.gguf", "llama", 4096, MTIME);
    let m = import(&f.store, &src, "ai/tiny").expect("import");
    let tar = exported(&f.store, "ai/tiny");
    let g = fixture();
    let before = snapshot(&g.root);
    let load = |bytes: &[u8]| g.store.load_archive(bytes, Some("x/y"), CAP, &mut |_| {});

    // One flipped byte in the weights: its digest no longer matches its name.
    let weights_hex = digest_hex(&m.files[0]).unwrap().to_string();
    let mut flipped = tar.clone();
    let at = flipped
        .windows(4)
        .position(|w| w == b"GGUF")
        .expect("weights in the tar");
    flipped[at + 100] ^= 1;
    let e = load(&flipped).unwrap_err();
    assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
    assert_eq!(snapshot(&g.root), before);

    // Cut anywhere before the end of the manifest (the last 1 KiB is the end-of-archive blocks): some blobs
    // came, the model did not, and the blobs go again.
    for cut in (0..tar.len() - 1024).step_by(211) {
        let e = load(&tar[..cut]).unwrap_err().to_string();
        assert!(
            e.starts_with("not a usable model archive"),
            "cut at {cut}: {e}"
        );
        assert_eq!(snapshot(&g.root), before, "cut at {cut}");
    }

    // Not a tar at all.
    let e = load(b"{\"not\": \"a tar\"}").unwrap_err().to_string();
    assert!(
        e.contains("not a usable model archive") && e.contains("tar"),
        "{e}"
    );
    assert_eq!(snapshot(&g.root), before);

    // A manifest whose weights are not in the archive (nor the store).
    let mut only_manifest = Vec::new();
    {
        let mut b = ::tar::Builder::new(&mut only_manifest);
        let manifest = fs::read(f.store.manifest_path(digest_hex(&m.id).unwrap())).unwrap();
        let mut h = ::tar::Header::new_gnu();
        h.set_size(manifest.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "manifest.json", &manifest[..])
            .unwrap();
        b.finish().unwrap();
    }
    let e = load(&only_manifest).unwrap_err().to_string();
    assert!(
        e.contains(&format!("sha256:{weights_hex}")) || e.contains("config"),
        "{e}"
    );
    assert_eq!(snapshot(&g.root), before);
    assert!(g.store.list().unwrap().is_empty());
}

#[test]
fn errors_shown_to_callers_name_the_store_not_its_place_on_the_server() {
    let f = fixture();
    let root = f.store.root().display().to_string();
    let err = StoreError::NotAModel {
        path: f.store.root().join("hf-staging/x/model.gguf"),
        detail: "not a GGUF file".into(),
    };
    let shown = f.store.redact(&err.to_string());
    assert_eq!(
        shown,
        "<store>/hf-staging/x/model.gguf is not a model: not a GGUF file"
    );
    assert!(!shown.contains(&root), "{shown}");
    assert_eq!(f.store.redact("/srv/other/file"), "/srv/other/file");
}
