//! Unit tests of the store's integrity checks against hostile input: a manifest whose sizes disagree with its
//! blobs (pull commit, load, export), caps on a loaded manifest and config, blobs a loaded manifest does not name,
//! unsafe layer paths refused before any download, and the orphan-blob collector with its in-flight protection.

use super::*;
use crate::store::artifact::sha256_hex;
use crate::store::pulled::{check_config, check_manifest};

/// The entries of a tar, in order, as (name, bytes); directories are left out.
fn entries(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = ::tar::Archive::new(tar);
    let mut out = Vec::new();
    for e in archive.entries().expect("entries") {
        let mut e = e.expect("entry");
        if !e.header().entry_type().is_file() {
            continue;
        }
        let name = e.path().expect("path").display().to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut bytes).expect("read");
        out.push((name, bytes));
    }
    out
}

/// A tar of `entries`, in order.
fn tar_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut b = ::tar::Builder::new(&mut out);
        for (name, bytes) in entries {
            let mut h = ::tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, &bytes[..]).expect("append");
        }
        b.finish().expect("finish");
    }
    out
}

/// `manifest.json` of `entries`, changed by `edit`.
fn with_manifest(
    entries: &[(String, Vec<u8>)],
    edit: impl Fn(&mut serde_json::Value),
) -> Vec<(String, Vec<u8>)> {
    entries
        .iter()
        .map(|(name, bytes)| {
            if name != "manifest.json" {
                return (name.clone(), bytes.clone());
            }
            let mut m: serde_json::Value = serde_json::from_slice(bytes).expect("manifest");
            edit(&mut m);
            (name.clone(), serde_json::to_vec(&m).expect("json"))
        })
        .collect()
}

/// A source store holding one imported tiny model, and its exported archive's entries.
fn exported_tiny() -> (Fixture, Model, Vec<(String, Vec<u8>)>) {
    let f = fixture();
    let src = model_file(&f.src, "tiny.gguf", "llama", 4096, MTIME);
    let m = import(&f.store, &src, "ai/tiny").expect("import");
    let tar = exported(&f.store, "ai/tiny");
    (f, m, entries(&tar))
}

fn blob_names(store: &Store) -> std::collections::BTreeSet<String> {
    fs::read_dir(store.blob_dir())
        .expect("blobs")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_loaded_manifest_that_lies_about_a_layer_size_is_refused_wherever_it_comes() {
    let (_f, m, good) = exported_tiny();
    let weights = m.files[0].clone();
    let lying = with_manifest(&good, |v| {
        let size = v["layers"][0]["size"].as_u64().unwrap();
        v["layers"][0]["size"] = (size + 1000).into();
    });
    let real = fs::metadata(&m.weights).unwrap().len();
    // The manifest last (as exports write it), and first (checked as each blob arrives).
    let mut first = lying.clone();
    let at = first
        .iter()
        .position(|(n, _)| n == "manifest.json")
        .unwrap();
    let manifest = first.remove(at);
    first.insert(0, manifest);
    for order in [lying, first] {
        let g = fixture();
        let before = snapshot(&g.root);
        let e = g
            .store
            .load_archive(&tar_of(&order)[..], Some("x/y"), CAP, &mut |_| {})
            .unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, StoreError::BadArchive(_)), "{text}");
        assert!(
            text.contains(&weights)
                && text.contains(&format!("{} bytes", real + 1000))
                && text.contains(&format!("holds {real} bytes")),
            "{text}"
        );
        assert_eq!(snapshot(&g.root), before);
    }
}

#[test]
fn a_blob_the_loaded_manifest_does_not_name_is_not_kept() {
    let (_f, m, good) = exported_tiny();
    let extra = b"not named by any manifest".to_vec();
    let extra_hex = sha256_hex(&extra);
    let mut last = good.clone();
    last.insert(0, (format!("blobs/sha256/{extra_hex}"), extra.clone()));
    let mut first = last.clone();
    let at = first
        .iter()
        .position(|(n, _)| n == "manifest.json")
        .unwrap();
    let manifest = first.remove(at);
    first.insert(0, manifest);
    for order in [last, first] {
        let g = fixture();
        let model = g
            .store
            .load_archive(&tar_of(&order)[..], Some("x/y"), CAP, &mut |_| {})
            .expect("load");
        assert_eq!(model.id, m.id);
        let names = blob_names(&g.store);
        assert!(!names.contains(&extra_hex), "{names:?}");
        let wanted: std::collections::BTreeSet<String> = m
            .files
            .iter()
            .map(|d| digest_hex(d).unwrap().to_string())
            .collect();
        assert_eq!(names, wanted);
    }
}

#[test]
fn a_loaded_manifest_or_config_over_the_cap_is_refused() {
    let (_f, _m, good) = exported_tiny();
    let manifest_len = good
        .iter()
        .find(|(n, _)| n == "manifest.json")
        .unwrap()
        .1
        .len() as u64;
    let g = fixture();
    let before = snapshot(&g.root);
    let e = g
        .store
        .load_archive(&tar_of(&good)[..], None, manifest_len - 1, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!(
            "manifest.json is {manifest_len} bytes (at most {},",
            manifest_len - 1
        )),
        "{e}"
    );
    assert_eq!(snapshot(&g.root), before);

    // A config padded past a cap that the manifest fits under.
    let manifest = &good.iter().find(|(n, _)| n == "manifest.json").unwrap().1;
    let config_hex = check_manifest(manifest).unwrap().config_digest[7..].to_string();
    let (config_name, config) = good
        .iter()
        .find(|(n, _)| n.ends_with(&config_hex))
        .cloned()
        .unwrap();
    let mut padded: serde_json::Value = serde_json::from_slice(&config).unwrap();
    padded["padding"] = "x".repeat(8192).into();
    let padded = serde_json::to_vec(&padded).unwrap();
    let padded_digest = format!("sha256:{}", sha256_hex(&padded));
    let mut big = with_manifest(&good, |v| {
        v["config"]["digest"] = padded_digest.clone().into();
        v["config"]["size"] = padded.len().into();
    });
    for (name, bytes) in big.iter_mut() {
        if *name == config_name {
            *name = format!("blobs/sha256/{}", sha256_hex(&padded));
            *bytes = padded.clone();
        }
    }
    let e = g
        .store
        .load_archive(&tar_of(&big)[..], None, 4096, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&padded_digest) && e.contains("at most 4096"),
        "{e}"
    );
    assert_eq!(snapshot(&g.root), before);
    // Under a larger cap the same archive loads: only the cap refused it.
    g.store
        .load_archive(&tar_of(&big)[..], None, CAP, &mut |_| {})
        .expect("load under the default cap");
}

#[test]
fn a_pulled_manifest_that_lies_about_a_cached_blob_is_not_committed() {
    let f = fixture();
    let src = model_file(&f.src, "tiny.gguf", "llama", 0, MTIME);
    let m = import(&f.store, &src, "ai/tiny").expect("import");
    let size = fs::metadata(&m.weights).unwrap().len();
    let art = f.store.artifact("ai/tiny").expect("artifact");
    let manifest = artifact::manifest_bytes(
        (&art.config_digest, art.config_bytes.len() as u64),
        (&m.files[0], size + 1),
    );
    assert!(matches!(
        f.store.has_blob_sized(&m.files[0], size + 1),
        Err(StoreError::SizeMismatch { declared, actual, .. }) if declared == size + 1 && actual == size
    ));
    assert!(f.store.has_blob_sized(&m.files[0], size).unwrap());
    assert!(!f
        .store
        .has_blob_sized(&format!("sha256:{}", "0".repeat(64)), 1)
        .unwrap());
    let before = snapshot(&f.root);
    let e = f
        .store
        .commit_pulled("x/lie", &manifest, &art.config_bytes)
        .unwrap_err();
    assert!(matches!(e, StoreError::SizeMismatch { .. }), "{e}");
    assert_eq!(snapshot(&f.root), before);
}

#[test]
fn an_export_writes_real_sizes_and_refuses_a_manifest_that_disagrees() {
    let f = fixture();
    let src = model_file(&f.src, "tiny.gguf", "llama", 4096, MTIME);
    import(&f.store, &src, "ai/tiny").expect("import");
    let mut art = f.store.artifact("ai/tiny").expect("artifact");
    art.layers[0].1 += 512;
    let mut out = Vec::new();
    let e = archive::write_archive(&art, &mut out).unwrap_err();
    assert!(matches!(e, StoreError::SizeMismatch { .. }), "{e}");
    // Every entry of a good export is a blob of the manifest or the manifest itself, at its real size.
    let tar = exported(&f.store, "ai/tiny");
    let names = tar_names(&tar);
    assert!(names.iter().all(|n| !n.contains("..")), "{names:?}");
    for (name, bytes) in entries(&tar) {
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            assert_eq!(sha256_hex(&bytes), hex);
        } else {
            assert_eq!(name, "manifest.json");
        }
    }
}

fn manifest_with_paths(paths: &[Option<&str>]) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut l = serde_json::json!({
                "mediaType": if i == 0 { artifact::SAFETENSORS_MEDIA_TYPE } else { artifact::FILE_MEDIA_TYPE },
                "size": 9,
                "digest": format!("sha256:{}", format!("{i:x}").repeat(64).get(..64).unwrap()),
            });
            if let Some(p) = p {
                l["annotations"] = serde_json::json!({ artifact::FILEPATH_ANNOTATION: p });
            }
            l
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": artifact::CONFIG_V2_MEDIA_TYPE, "size": 2, "digest": format!("sha256:{}", "a".repeat(64))},
        "layers": layers,
    }))
    .unwrap()
}

#[test]
fn unsafe_or_colliding_layer_paths_are_refused_before_any_download() {
    assert!(check_manifest(&manifest_with_paths(&[
        Some("model.safetensors"),
        Some("config.json"),
        Some("tokenizer/vocab.json"),
    ]))
    .is_ok());
    assert!(check_manifest(&manifest_with_paths(&[None, None])).is_ok());
    for (paths, why) in [
        (vec![Some("../../etc/x")], "no safe file path"),
        (vec![Some("/etc/passwd")], "no safe file path"),
        (vec![Some("a/../../b")], "no safe file path"),
        (vec![Some("")], "no safe file path"),
        (vec![Some("model.safetensors"), None], "no safe file path"),
        (vec![Some("a.json"), Some("a.json")], "collides"),
        (vec![Some("tok"), Some("tok/vocab.json")], "collides"),
        (vec![Some("tok/vocab.json"), Some("tok")], "collides"),
    ] {
        let e = check_manifest(&manifest_with_paths(&paths)).unwrap_err();
        assert!(e.contains(why), "{paths:?}: {e}");
    }
}

#[test]
fn a_config_is_checked_against_its_manifest() {
    let (_f, _m, good) = exported_tiny();
    let manifest = &good.iter().find(|(n, _)| n == "manifest.json").unwrap().1;
    let info = check_manifest(manifest).unwrap();
    let hex = digest_hex(&info.config_digest).unwrap();
    let config = &good.iter().find(|(n, _)| n.ends_with(hex)).unwrap().1;
    check_config(&info, config).expect("good config");
    let e = check_config(&info, b"{}").unwrap_err();
    assert!(e.contains("has digest"), "{e}");
    let mut wrong_size = info.clone();
    wrong_size.config_size += 1;
    let e = check_config(&wrong_size, config).unwrap_err();
    assert!(e.contains(&format!("{} bytes", config.len())), "{e}");
    let mut odd: serde_json::Value = serde_json::from_slice(config).unwrap();
    odd["config"]["format"] = "exe".into();
    let odd = serde_json::to_vec(&odd).unwrap();
    let mut odd_info = info.clone();
    odd_info.config_digest = format!("sha256:{}", sha256_hex(&odd));
    odd_info.config_size = odd.len() as u64;
    let e = check_config(&odd_info, &odd).unwrap_err();
    assert!(e.contains("unknown model format"), "{e}");
    // A format the layers cannot serve: what `load_model` would refuse after the commit, refused before.
    let as_format = |format: &str, info: &crate::store::pulled::ManifestInfo| {
        let mut v: serde_json::Value = serde_json::from_slice(config).unwrap();
        v["config"]["format"] = format.into();
        let bytes = serde_json::to_vec(&v).unwrap();
        let mut info = info.clone();
        info.config_digest = format!("sha256:{}", sha256_hex(&bytes));
        info.config_size = bytes.len() as u64;
        check_config(&info, &bytes)
    };
    let e = as_format("safetensors", &info).unwrap_err();
    assert!(e.contains("needs a file path"), "{e}");
    let mut no_gguf = info.clone();
    no_gguf.layers[0].media_type = artifact::SAFETENSORS_MEDIA_TYPE.into();
    let e = as_format("gguf", &no_gguf).unwrap_err();
    assert!(e.contains("no GGUF layer"), "{e}");
    let mut pathed = info.clone();
    for l in &mut pathed.layers {
        l.path = Some("model.bin".into());
    }
    assert!(as_format("safetensors", &pathed).is_ok());
    let e = as_format("dduf", &pathed).unwrap_err();
    assert!(e.contains(".dduf"), "{e}");
}

#[test]
fn the_collector_removes_only_unnamed_unprotected_blobs() {
    let f = fixture();
    let src = model_file(&f.src, "tiny.gguf", "llama", 0, MTIME);
    import(&f.store, &src, "ai/tiny").expect("import");
    let named = blob_names(&f.store);
    let orphan = |content: &str| {
        let hex = sha256_hex(content.as_bytes());
        fs::write(f.store.blob_path(&hex), content).unwrap();
        hex
    };
    let (a, b) = (orphan("orphan a"), orphan("orphan bb"));
    let incomplete = format!("{}.incomplete", "c".repeat(64));
    fs::write(f.store.blob_dir().join(&incomplete), "partial").unwrap();
    let temp = format!("{}in-flight", fsutil::TEMP_PREFIX);
    fs::write(f.store.blob_dir().join(&temp), "copying").unwrap();

    // `b` is protected twice (two operations in flight): it stays until both are done.
    let first = f.store.protect([format!("sha256:{b}").as_str()]);
    let second = f.store.protect([format!("sha256:{b}").as_str()]);
    let c = f.store.remove_orphan_blobs().unwrap();
    assert_eq!(
        c,
        Collected {
            blobs: 1,
            bytes: "orphan a".len() as u64
        }
    );
    let names = blob_names(&f.store);
    assert!(!names.contains(&a) && names.contains(&b), "{names:?}");
    assert!(
        names.contains(&incomplete) && names.contains(&temp),
        "{names:?}"
    );
    assert!(named.is_subset(&names));
    drop(first);
    assert!(f.store.is_protected(&format!("sha256:{b}")));
    assert_eq!(f.store.remove_orphan_blobs().unwrap(), Collected::default());
    drop(second);
    assert!(!f.store.is_protected(&format!("sha256:{b}")));
    assert_eq!(f.store.remove_orphan_blobs().unwrap().blobs, 1);
    let mut expected = named.clone();
    expected.extend([incomplete, temp]);
    assert_eq!(blob_names(&f.store), expected);
    // The model still works.
    assert!(f.store.get("ai/tiny").is_ok());
}

#[test]
fn the_collector_keeps_what_any_manifest_names_and_stops_at_one_it_cannot_read() {
    let f = fixture();
    // A manifest file no index entry points at still protects its blobs.
    let layer = "a layer";
    let hex = sha256_hex(layer.as_bytes());
    fs::write(f.store.blob_path(&hex), layer).unwrap();
    let manifest = artifact::manifest_bytes(
        (&format!("sha256:{}", "e".repeat(64)), 2),
        (&format!("sha256:{hex}"), layer.len() as u64),
    );
    fs::write(f.store.manifest_path(&sha256_hex(&manifest)), &manifest).unwrap();
    assert_eq!(f.store.remove_orphan_blobs().unwrap(), Collected::default());
    assert!(blob_names(&f.store).contains(&hex));
    fs::write(f.store.manifest_path(&"f".repeat(64)), "{not json").unwrap();
    let orphan = sha256_hex(b"orphan");
    fs::write(f.store.blob_path(&orphan), "orphan").unwrap();
    assert!(matches!(
        f.store.remove_orphan_blobs(),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(blob_names(&f.store).contains(&orphan));
}

#[test]
fn a_load_in_flight_protects_its_blobs_from_the_collector() {
    let (_f, m, good) = exported_tiny();
    let g = fixture();
    let mut collected = Vec::new();
    // Progress comes while a blob is copied; by the second blob the first is in place, named by no model yet.
    let model = g
        .store
        .load_archive(&tar_of(&good)[..], Some("x/y"), CAP, &mut |_| {
            collected.push(g.store.remove_orphan_blobs().expect("collect"));
        })
        .expect("load");
    assert_eq!(model.id, m.id);
    assert!(collected.len() >= 2, "{collected:?}");
    assert!(collected.iter().all(|c| c.blobs == 0), "{collected:?}");
    // Once the load is over its blobs are named by the model: still nothing to collect.
    assert_eq!(g.store.remove_orphan_blobs().unwrap(), Collected::default());
    assert!(g.store.get("x/y").is_ok());
}
