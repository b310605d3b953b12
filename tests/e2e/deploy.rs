//! deploy/: every kustomize overlay renders (`kubectl kustomize`) and validates offline
//! (`validate_manifests.py`: the Kubernetes schemas through kubernetes-validate, the
//! InferencePool, HTTPRoute and ServiceMonitor against their API versions' fields, and the
//! pieces against each other); a broken manifest is caught.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::serve::python;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The validator's verdict on `yaml`: its output, and whether it passed.
fn validate(yaml: &str) -> (String, bool) {
    let mut child = Command::new(python())
        .arg(root().join("tests/e2e/validate_manifests.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr), out.status.success())
}

#[test]
fn every_overlay_renders_and_validates_offline() {
    for overlay in ["cpu", "nvidia"] {
        let rendered = Command::new("kubectl")
            .arg("kustomize")
            .arg(root().join("deploy/overlays").join(overlay))
            .output()
            .expect("running kubectl (scripts/setup.sh installs Debian's kubernetes-client)");
        assert!(rendered.status.success(), "{overlay}: {}", String::from_utf8_lossy(&rendered.stderr));
        let yaml = String::from_utf8(rendered.stdout).unwrap();
        let (report, ok) = validate(&yaml);
        assert!(ok && report.trim_end().ends_with("ok"), "{overlay}: {report}");
        eprintln!("{overlay}: {}", report.lines().next().unwrap_or_default());
        // The validator is not a rubber stamp: an old field name and a grace period shorter
        // than the drain are refused.
        let (report, ok) = validate(&yaml.replace("targetPorts:", "targetPortNumber:"));
        assert!(!ok && report.contains("targetPortNumber: not a field of this API version"), "{report}");
        let (report, ok) = validate(&yaml.replace("terminationGracePeriodSeconds: 75", "terminationGracePeriodSeconds: 30"));
        assert!(!ok && report.contains("does not cover preStop + drain"), "{report}");
        if overlay == "nvidia" {
            assert!(yaml.contains("nvidia.com/gpu: 1"), "{yaml}");
        }
    }
}

/// The registry-free image build takes the runtime's packages and the image's settings from
/// the Containerfile, so the two images cannot drift apart.
#[test]
fn the_offline_image_build_reads_the_containerfile() {
    let plan = Command::new("bash").arg(root().join("deploy/build-offline.sh")).arg("--plan").output().unwrap();
    assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));
    let plan = String::from_utf8(plan.stdout).unwrap();
    let containerfile = std::fs::read_to_string(root().join("deploy/Containerfile")).unwrap();
    assert!(containerfile.contains("apt-get install -y --no-install-recommends ${RUNTIME_PACKAGES}"), "{containerfile}");
    assert!(plan.starts_with("packages: libvulkan1 mesa-vulkan-drivers ca-certificates curl\n"), "{plan}");
    let settings: Vec<&str> = containerfile.lines().filter(|l| ["ENV ", "USER ", "EXPOSE ", "ENTRYPOINT ", "CMD "].iter().any(|k| l.starts_with(k))).collect();
    assert_eq!(settings.len(), 5, "{containerfile}");
    assert_eq!(plan.lines().skip(1).collect::<Vec<_>>(), settings);
}
