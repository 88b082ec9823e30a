//! Compiles `dwarfstar/v1/*.proto` into prost messages and tonic client/server code in OUT_DIR,
//! with the `protoc` binary shipped by the `protoc-bin-vendored` crate (no system protoc needed).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let protos = [
        root.join("dwarfstar/v1/mesh.proto"),
        root.join("dwarfstar/v1/control.proto"),
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    // prost-build reads PROTOC; the build script is its own single-threaded process, so this
    // only affects this crate's code generation.
    std::env::set_var("PROTOC", &protoc);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&protos, &[root, include])?;
    Ok(())
}
