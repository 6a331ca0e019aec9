//! The checker's rules on small manifests; the golden corpus in
//! tests/e2e/pods covers the wording of every finding.

use super::*;

const PIPELINE: &str = "[pre-stop]\ndeadline = \"20s\"\nreserve = \"5s\"\n\n[[pre-stop.steps]]\nname = \"wait\"\nsleep = \"1s\"\n";

/// A Deployment whose one container runs the pre-stop, with `grace`
/// (if any) as its terminationGracePeriodSeconds.
fn deployment(grace: Option<u32>) -> String {
    let grace = grace.map_or(String::new(), |g| {
        format!("      terminationGracePeriodSeconds: {g}\n")
    });
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{ name: web }}\nspec:\n  template:\n    spec:\n{grace}      containers:\n        - name: web\n          image: web\n          lifecycle:\n            preStop:\n              exec:\n                command: [/lifehook/lifehook, run, -f, /etc/lifehook/lifehook.toml]\n"
    )
}

fn checked(manifest: &str) -> PodCheck {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("pod.yaml");
    std::fs::write(&path, manifest).expect("write manifest");
    let pipeline = lifehook_manifest::parse(
        PIPELINE,
        Path::new("/etc/lifehook/lifehook.toml"),
        &|_| None,
        None,
    )
    .expect("valid pipeline");
    check(&path, &pipeline).expect("readable manifest")
}

#[test]
fn a_hook_that_fits_its_grace_period_is_ok() {
    let found = checked(&deployment(Some(30)));
    assert!(found.problems.is_empty(), "{:?}", found.problems);
    assert_eq!(found.ok.len(), 1, "{:?}", found.ok);
    assert!(found.ok[0].contains("Deployment web"), "{:?}", found.ok);
}

#[test]
fn the_deadline_and_reserve_must_fit_the_grace_period_default_included() {
    // 20 s + 5 s do not fit in 24 s.
    let short = checked(&deployment(Some(24)));
    assert_eq!(short.problems.len(), 1, "{:?}", short.ok);
    assert!(
        short.problems[0]
            .message
            .contains("do not fit in terminationGracePeriodSeconds: 24"),
        "{}",
        short.problems[0].message
    );
    // Unset: Kubernetes' 30 s, in which they fit.
    assert!(checked(&deployment(None)).problems.is_empty());
}

#[test]
fn a_manifest_without_lifehook_hooks_says_so() {
    let found = checked(
        "apiVersion: v1\nkind: Pod\nmetadata: { name: p }\nspec:\n  containers:\n    - name: c\n      image: c\n",
    );
    assert_eq!(found.problems.len(), 1);
    assert!(found.problems[0].message.contains("no container"));
}

#[test]
fn offsets_count_characters_not_bytes() {
    let source = "a: 1\nnamé: x\n";
    // Line 2, column 6 is the `x` after a two-byte `é`.
    assert_eq!(&source[offset(source, 2, 7)..offset(source, 2, 8)], "x");
    // Past the end: the end.
    assert_eq!(offset(source, 9, 1), source.len());
}

#[test]
fn several_carried_pipelines_need_dash_f() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("pod.yaml");
    let map = |name: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: {name} }}\ndata:\n  lifehook.toml: |\n    [pre-stop]\n"
        )
    };
    std::fs::write(&path, format!("{}---\n{}", map("one"), map("two"))).expect("write");
    let error = carried_pipeline(&path).err().expect("ambiguous");
    let text = error.to_string();
    assert!(
        text.contains("ConfigMap one, key lifehook.toml")
            && text.contains("ConfigMap two, key lifehook.toml")
            && text.contains("-f FILE"),
        "{text}"
    );
    std::fs::write(&path, map("one")).expect("write");
    let carried = carried_pipeline(&path)
        .expect("readable")
        .expect("one pipeline");
    assert_eq!(carried.origin, "ConfigMap one, key lifehook.toml");
    assert_eq!(carried.source, "[pre-stop]\n");
}
