//! `ferrite bench` without `--io-path`: the probe guest per cache mode,
//! a table row each, the same as JSON. No timing is asserted.

use std::process::Command;

#[test]
fn probe_stream_table_and_json() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIP: no /dev/kvm");
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args([
            "bench",
            "--count",
            "12",
            "--depth",
            "4",
            "--modes",
            "writethrough,unsafe",
        ])
        .arg("--dir")
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run ferrite");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |mode: &str| -> Vec<String> {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(mode))
            .unwrap_or_else(|| panic!("no {mode} row: {stdout}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    // mode WCE acks IOPS MB/s syncs/write durable verdict
    let wt = row("writethrough");
    assert_eq!(
        (
            wt[1].as_str(),
            wt[2].as_str(),
            wt[6].as_str(),
            wt[7].as_str()
        ),
        ("0", "12", "yes", "pass"),
        "{stdout}"
    );
    // Every write is an O_DSYNC write; the exit flush finds nothing new.
    let syncs: f64 = wt[5].parse().expect("syncs/write");
    assert!((1.0..1.2).contains(&syncs), "{stdout}");
    let un = row("unsafe");
    assert_eq!(
        (un[1].as_str(), un[6].as_str(), un[5].as_str()),
        ("1", "no", "0.000"),
        "{stdout}"
    );
    if std::fs::read_to_string("/proc/cpuinfo")
        .is_ok_and(|c| !c.contains(" vmx") && !c.contains(" svm"))
    {
        assert!(stdout.contains("KVM here is emulated"), "{stdout}");
    }
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("parse");
    let rows = doc["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["mode"], "writethrough");
    assert_eq!(rows[0]["durable_at_completion"], true);
    assert_eq!(rows[1]["durable_at_completion"], false);
    assert!(rows[0]["iops"].as_f64().is_some_and(|v| v > 0.0));
    // Nothing is left in the scratch directory but the JSON.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from("bench.json")]);
}

#[test]
fn overhead_reports_memory_beyond_guest_and_start_time() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIP: no /dev/kvm");
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["bench", "--overhead", "--repeats", "2"])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("run ferrite");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value = |prefix: &str, key: &str| -> f64 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix}: {stdout}"));
        let v = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}: {line}"));
        v.trim_end_matches("MiB")
            .parse()
            .unwrap_or_else(|e| panic!("{key}: {e}: {line}"))
    };
    // Something is resident besides guest RAM (at least the binary's text),
    // and it is far less than the 128 MiB guest.
    let rss = value("memory: guest=", "rss_beyond_guest");
    assert!(rss > 0.1 && rss < 128.0, "{stdout}");
    assert!(
        value("memory: guest=", "pss_beyond_guest") > 0.0,
        "{stdout}"
    );
    let ms = value("start:", "median");
    assert!(ms > 0.0 && ms < 10_000.0, "{stdout}");
    assert!(
        stdout.contains("runs=5"),
        "at least five start-time runs: {stdout}"
    );
    assert!(
        std::fs::read_dir(dir.path()).expect("dir").next().is_none(),
        "scratch left behind"
    );
}

#[test]
fn an_existing_image_is_refused() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let image = dir.path().join("precious.img");
    std::fs::write(&image, b"data").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["bench", "--count", "4", "--modes", "unsafe", "--image"])
        .arg(&image)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("run ferrite");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("exists") && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert_eq!(std::fs::read(&image).expect("read"), b"data");
}
