//! Rebuild the eBPF object when bpf-linker changes, so a reinstalled linker is picked up.
use which::which;

fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => panic!("bpf-linker not found on PATH ({err}); run scripts/setup to install it"),
    }
}
