//! Builds the eBPF programs in `ebpf/` (nightly, `-Z build-std=core`, bpf-linker) so that a
//! plain `cargo build` at the workspace root produces them, and leaves the object in
//! `OUT_DIR` for `include_bytes_aligned!`.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};
use cargo_metadata::MetadataCommand;

fn main() -> anyhow::Result<()> {
    let metadata = MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata failed")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "twill-ebpf")
        .ok_or_else(|| anyhow!("package twill-ebpf not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("twill-ebpf manifest has no parent directory"))?;
    // The programs include the ABI crate; rebuild them when it changes.
    if let Some(workspace) = root_dir.parent() {
        println!("cargo:rerun-if-changed={}", workspace.join("abi").as_str());
    }
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; scripts/setup installs what they need \
         (nightly rust-src, bpf-linker)",
    )
}
