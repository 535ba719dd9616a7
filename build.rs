//! Compiles proto/ into Rust (tonic + prost). Needs a `protoc`: scripts/setup.sh installs Debian's
//! protobuf-compiler; set PROTOC to use another.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("baton_descriptor.bin"))
        .compile_protos(&["proto/baton.proto", "proto/raft.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
